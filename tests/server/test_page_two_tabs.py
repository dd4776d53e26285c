"""The same annotator in two tabs: a save based on what a tab loaded before the other tab saved is refused, never
written over the other tab's work (a real chromium against the app)."""

from __future__ import annotations

from browser_harness import annotations, needs_chromium
from playwright.sync_api import expect

pytestmark = needs_chromium


def test_a_second_tab_does_not_overwrite_the_first_tabs_save(page_at, site):
    first, name = page_at()
    second = first.context.new_page()  # the same browser: the token is remembered, resumes at item 1
    second.goto(site["url"])
    expect(second.locator("#item-index")).to_have_text("1")
    for page, text in ((first, "Saved in the first tab."), (second, "Saved in the second tab.")):
        page.bring_to_front()
        page.keyboard.press("c")
        page.fill("#feedback", text)
    first.bring_to_front()
    first.keyboard.press("Control+Enter")
    expect(first.locator("#item-index")).to_have_text("2")
    second.bring_to_front()
    second.keyboard.press("Control+Enter")
    expect(second.locator("#status")).to_contain_text("another tab or window saved it")
    expect(second.locator("#item-index")).to_have_text("1")  # stays, with its text
    expect(second.locator("#feedback")).to_have_value("Saved in the second tab.")
    (row,) = annotations(site["db"], name)
    assert row["feedback"].startswith("Saved in the first tab.")
    # Opened again, the item shows the saved version, and saving over it works.
    second.on("dialog", lambda dialog: dialog.accept())  # leave the unsaved text
    second.evaluate("document.activeElement.blur()")
    second.keyboard.press("n")
    expect(second.locator("#item-index")).to_have_text("2")
    second.keyboard.press("p")
    expect(second.locator("#feedback")).to_have_value("Saved in the first tab.")
    second.fill("#feedback", "Edited after reloading.")
    second.keyboard.press("Control+Enter")
    expect(second.locator("#item-index")).to_have_text("2")
    (row,) = annotations(site["db"], name)
    assert row["feedback"].startswith("Edited after reloading.")
