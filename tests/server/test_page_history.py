"""Browser history: Back and Forward into the app resume at the annotator's item, never at one the browser cached
(a real chromium against the app)."""

from __future__ import annotations

from browser_harness import needs_chromium
from playwright.sync_api import expect

pytestmark = needs_chromium


def test_back_into_the_app_resumes_at_the_current_item(page_at, site):
    page, _ = page_at()
    for _ in range(3):
        page.keyboard.press("n")
    expect(page.locator("#item-index")).to_have_text("4")
    page.goto(site["url"] + "favicon.ico")  # another page of the site
    page.go_back()
    expect(page.locator("#item-view")).to_be_visible()
    expect(page.locator("#item-index")).to_have_text("4")
    page.keyboard.press("p")
    expect(page.locator("#item-index")).to_have_text("3")
    page.goto("about:blank")
    page.go_back()
    expect(page.locator("#item-index")).to_have_text("3")
