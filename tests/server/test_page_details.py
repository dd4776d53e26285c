"""Smaller behaviours of the page: the draft banner, panels and their keys, jumping, the guidelines, counts, the
admin tables on a phone, login focus, resuming, a skipped item's draft and aria-pressed (a real chromium)."""

from __future__ import annotations

from browser_harness import PHONE, annotations, needs_chromium
from playwright.sync_api import expect

from .page_site import RAW_DRAFT

pytestmark = needs_chromium


def test_the_draft_banner_says_what_saving_does(page_at):
    page, _ = page_at()
    page.keyboard.press("n")
    expect(page.locator("#draft-banner")).to_contain_text("save to accept it")
    page.fill("#feedback", RAW_DRAFT + " More.")
    expect(page.locator("#draft-banner")).to_contain_text("edited; saving keeps your version")
    page.fill("#feedback", RAW_DRAFT)
    expect(page.locator("#draft-banner")).to_contain_text("save to accept it")
    page.click("#draft-clear")
    expect(page.locator("#draft-banner")).to_contain_text("cleared")
    expect(page.locator("#draft-banner")).not_to_contain_text("accept")


def test_an_open_panel_takes_the_focus_and_the_item_keys_wait(page_at, site):
    page, name = page_at()
    page.keyboard.press("c")
    page.fill("#feedback", "Typed before opening the list.")
    page.evaluate("document.activeElement.blur()")
    page.keyboard.press("l")
    expect(page.locator("#items-panel")).to_be_focused()
    expect(page.locator("#item-list button")).to_have_count(7)
    page.keyboard.press("n")
    page.keyboard.press("Control+Enter")
    expect(page.locator("#item-index")).to_have_text("1")  # neither moved nor saved the item behind
    assert annotations(site["db"], name) == []
    page.keyboard.press("Escape")
    expect(page.locator("#items-panel")).to_be_hidden()
    page.click("#guidelines-btn")
    expect(page.locator("#guidelines-panel")).to_be_focused()
    page.keyboard.press("c")
    page.keyboard.press("Escape")
    expect(page.locator("#guidelines-panel")).to_be_hidden()
    page.keyboard.press("Control+Enter")  # the item's keys work again
    expect(page.locator("#item-index")).to_have_text("2")


def test_jumping_past_the_last_item_says_so(page_at):
    page, _ = page_at()
    page.click("#items-btn")
    expect(page.locator("#item-list button")).to_have_count(7)
    page.fill("#jump", "99")
    page.keyboard.press("Enter")
    expect(page.locator("#jump-error")).to_have_text("There is no item 99: give 1 to 7.")
    expect(page.locator("#done-view")).to_be_hidden()
    page.fill("#jump", "7")
    page.keyboard.press("Enter")
    expect(page.locator("#item-index")).to_have_text("7")


def test_guidelines_render_tables_and_list_every_key(page_at):
    page, _ = page_at()
    page.keyboard.press("?")
    expect(page.locator("#guidelines table td", has_text="it matches a gold answer")).to_be_visible()
    keys = page.locator("#keys-list")
    for text in ("s</kbd> skip with a reason", "l</kbd> item list", "?</kbd> these guidelines"):
        expect(keys).to_contain_text(text.replace("</kbd>", ""))


def test_the_top_bar_and_the_item_list_count_unsure_items_alike(page_at):
    page, _ = page_at()
    page.keyboard.press("c")
    page.fill("#feedback", "Not sure.")
    page.check("#unsure")
    page.click("#save")
    expect(page.locator("#item-index")).to_have_text("2")
    expect(page.locator("#topbar")).to_contain_text("1 / 7 judged")  # judged = annotated + unsure
    page.click("#items-btn")
    expect(page.locator("#items-counts")).to_have_text("0 annotated, 1 unsure, 0 skipped, 6 to do")


def test_admin_table_headers_do_not_break_inside_a_word_on_a_phone(page_at):
    page, _ = page_at(PHONE, admin=True)
    page.click("#admin-btn")
    expect(page.locator("#admin-progress tbody tr").first).to_be_visible()
    broken = page.evaluate("""() => {
        const out = [];
        for (const th of document.querySelectorAll("#admin-view th")) {
          const node = th.firstChild;
          for (const m of node.textContent.matchAll(/\\S+/g)) {
            const r = document.createRange();
            r.setStart(node, m.index); r.setEnd(node, m.index + m[0].length);
            if (r.getClientRects().length > 1) out.push(m[0]);
          }
        }
        return out; }""")
    assert broken == []


def test_the_login_field_has_the_focus(browser, site):
    page = browser.new_page()
    page.goto(site["url"])
    expect(page.locator("#token")).to_be_focused()
    page.close()


def test_a_reload_resumes_at_the_next_item_to_do(page_at):
    page, _ = page_at()
    page.keyboard.press("c")
    page.fill("#feedback", "Right.")
    page.keyboard.press("Control+Enter")
    expect(page.locator("#item-index")).to_have_text("2")
    page.keyboard.press("p")  # back to look at the saved item
    expect(page.locator("#saved-mark")).to_have_text("saved")
    page.reload()
    expect(page.locator("#item-index")).to_have_text("2")


def test_a_skipped_item_still_offers_its_draft(page_at):
    page, _ = page_at()
    page.keyboard.press("n")
    expect(page.locator("#draft-banner")).to_be_visible()
    page.keyboard.press("s")
    page.fill("#skip-reason", "question is ambiguous")
    page.keyboard.press("Enter")
    expect(page.locator("#item-index")).to_have_text("3")
    page.keyboard.press("p")
    expect(page.locator("#saved-mark")).to_have_text("skipped: question is ambiguous")
    expect(page.locator("#draft-banner")).to_be_visible()
    expect(page.locator("#feedback")).to_have_value(RAW_DRAFT)
    expect(page.locator("#btn-incorrect")).to_have_class("on")


def test_the_verdict_buttons_say_which_is_pressed(page_at):
    page, _ = page_at()
    expect(page.locator("#btn-correct")).to_have_attribute("aria-pressed", "false")
    page.keyboard.press("c")
    expect(page.locator("#btn-correct")).to_have_attribute("aria-pressed", "true")
    expect(page.locator("#btn-incorrect")).to_have_attribute("aria-pressed", "false")
    page.keyboard.press("i")
    expect(page.locator("#btn-correct")).to_have_attribute("aria-pressed", "false")
    expect(page.locator("#btn-incorrect")).to_have_attribute("aria-pressed", "true")
