"""AI drafts in the page: what accepting one records, and what its banner says (a real chromium against the app)."""

from __future__ import annotations

from browser_harness import annotations, needs_chromium
from playwright.sync_api import expect

from .page_site import RAW_DRAFT

pytestmark = needs_chromium


def test_a_real_llm_draft_accepted_unchanged_is_recorded_as_accepted(page_at, site):
    page, name = page_at()
    page.keyboard.press("n")
    expect(page.locator("#draft-banner")).to_be_visible()
    expect(page.locator("#feedback")).to_have_value(RAW_DRAFT)  # the draft has no closing sentence
    expect(page.locator("#right-answer")).to_have_value("The duke")
    page.keyboard.press("Control+Enter")
    expect(page.locator("#item-index")).to_have_text("3")
    (row,) = annotations(site["db"], name)
    assert row["feedback"] == RAW_DRAFT + ' The right answer is "The duke".'
    assert (row["draft_shown"], row["draft_accepted"], row["draft_distance"]) == (1, 1, 0)
