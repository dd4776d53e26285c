"""The page never loses typed work: reload, browser Back and guideline links, and a changed verdict or Unsure box
all ask before leaving (a real chromium against the app)."""

from __future__ import annotations

from browser_harness import needs_chromium
from playwright.sync_api import expect

pytestmark = needs_chromium


def dialogs(page, answer: str = "dismiss") -> list[str]:
    """Answer every dialog of the page with `answer`; returns the types of the dialogs seen, in order."""
    seen: list[str] = []

    def on_dialog(dialog):
        seen.append(dialog.type)
        dialog.accept() if answer == "accept" else dialog.dismiss()

    page.on("dialog", on_dialog)
    return seen


def wait_for_dialogs(page, seen: list[str], n: int) -> None:
    for _ in range(50):
        if len(seen) >= n:
            return
        page.wait_for_timeout(100)


def test_a_reload_or_back_with_typed_feedback_asks_first(page_at, site):
    page, _ = page_at()
    page.goto(site["url"] + "#elsewhere")  # a history entry to go back to, on the same page
    page.goto(site["url"])
    expect(page.locator("#item-index")).to_have_text("1")
    seen = dialogs(page)
    page.click("#feedback")
    page.keyboard.type("Half a thought")
    page.evaluate("setTimeout(() => location.reload(), 0)")
    wait_for_dialogs(page, seen, 1)
    assert seen == ["beforeunload"]
    expect(page.locator("#feedback")).to_have_value("Half a thought")  # dismissed: the page and its text stay
    page.evaluate("setTimeout(() => history.go(-2), 0)")
    wait_for_dialogs(page, seen, 2)
    assert seen == ["beforeunload", "beforeunload"]
    expect(page.locator("#feedback")).to_have_value("Half a thought")


def test_nothing_typed_reloads_without_a_question(page_at):
    page, _ = page_at()
    seen = dialogs(page)
    page.click("#feedback")
    page.reload()
    expect(page.locator("#item-index")).to_have_text("1")
    assert seen == []


def test_a_guideline_link_opens_a_new_tab_and_keeps_the_typed_feedback(page_at):
    page, _ = page_at()
    page.fill("#feedback", "Half a thought")
    page.click("#guidelines-btn")
    link = page.locator("#guidelines a", has_text="the SQuAD paper")
    expect(link).to_have_attribute("target", "_blank")
    expect(link).to_have_attribute("rel", "noopener noreferrer")
    expect(page.locator("#guidelines a", has_text="section below")).not_to_have_attribute("target", "_blank")
    page.context.route("https://example.org/**", lambda route: route.fulfill(body="elsewhere"))
    with page.context.expect_page() as opened:
        link.click()
    opened.value.close()
    expect(page.locator("#feedback")).to_have_value("Half a thought")
    assert page.url.endswith("/")


def test_a_changed_verdict_or_unsure_box_of_a_saved_item_asks_before_leaving(page_at):
    page, _ = page_at()
    seen = dialogs(page)
    page.keyboard.press("c")
    page.fill("#feedback", "It is the gold answer.")
    page.keyboard.press("Control+Enter")
    expect(page.locator("#item-index")).to_have_text("2")
    page.keyboard.press("p")
    expect(page.locator("#saved-mark")).to_have_text("saved")
    page.keyboard.press("i")  # the verdict changes, the feedback does not
    expect(page.locator("#btn-incorrect")).to_have_class("on")
    page.keyboard.press("n")
    wait_for_dialogs(page, seen, 1)
    assert seen == ["confirm"]
    expect(page.locator("#item-index")).to_have_text("1")  # dismissed: stays
    expect(page.locator("#btn-incorrect")).to_have_class("on")
    page.keyboard.press("c")  # back to what was saved: leaves without a question
    page.keyboard.press("n")
    expect(page.locator("#item-index")).to_have_text("2")
    page.keyboard.press("p")
    expect(page.locator("#saved-mark")).to_have_text("saved")
    page.check("#unsure")
    page.evaluate("document.activeElement.blur()")
    page.keyboard.press("n")
    wait_for_dialogs(page, seen, 2)
    assert seen == ["confirm", "confirm"]
    expect(page.locator("#item-index")).to_have_text("1")
