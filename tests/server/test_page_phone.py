"""The page on a 390x844 phone: what a tap acts on is on screen above the sticky action bar (a real chromium)."""

from __future__ import annotations

from browser_harness import PHONE, annotations, needs_chromium
from playwright.sync_api import expect

pytestmark = needs_chromium


def above_the_bar(page, selector: str) -> bool:
    """The element lies inside the window, above the top of the sticky action bar."""
    return page.evaluate(
        """(sel) => { const r = document.querySelector(sel).getBoundingClientRect();
                      const bar = document.getElementById("actions").getBoundingClientRect().top;
                      return r.top >= 0 && r.bottom <= bar + 1; }""",
        selector,
    )


def to_item(page, n: int) -> None:
    for _ in range(n - 1):
        page.keyboard.press("n")
    expect(page.locator("#item-index")).to_have_text(str(n))


def test_skip_with_reason_opens_above_the_action_bar(page_at):
    page, _ = page_at(PHONE)
    to_item(page, 7)  # a long passage: the skip button is far below the top
    page.locator("#skip-reason-btn").scroll_into_view_if_needed()
    page.click("#skip-reason-btn")
    expect(page.locator("#skip-reason")).to_be_focused()
    assert above_the_bar(page, "#skip-reason") and above_the_bar(page, "#skip-confirm")


def test_save_does_not_accept_a_draft_that_was_never_on_screen(page_at, site):
    page, name = page_at(PHONE)
    to_item(page, 7)  # its AI draft's verdict and feedback are below the passage
    expect(page.locator("#draft-banner")).to_be_visible()
    expect(page.locator("#save")).to_be_in_viewport()
    assert not above_the_bar(page, "#feedback")
    page.click("#save")
    expect(page.locator("#status")).to_contain_text("Read the AI draft")
    expect(page.locator("#item-index")).to_have_text("7")  # not saved
    assert annotations(site["db"], name) == []
    assert above_the_bar(page, "#feedback") and above_the_bar(page, ".verdict")
    page.click("#save")  # seen: the second tap saves (the last item: then no more items)
    expect(page.locator("#done-view")).to_be_visible()
    (row,) = annotations(site["db"], name)
    assert row["item_id"] == "q6" and row["draft_shown"] == 1
