"""Defects of the annotation page found by using it all day, each pinned by a test in a real browser (the real server,
headless chromium): every one of these failed against the page before its fix."""

from __future__ import annotations

import time

from app_site import LONG_WORD
from browser_harness import DESKTOP, PHONE, annotations, needs_chromium, screenshot_dir
from playwright.sync_api import expect

pytestmark = needs_chromium


def to_item(page, n: int) -> None:
    """From item 1, skip to item n+1 with the `n` key."""
    for _ in range(n):
        page.keyboard.press("n")
    expect(page.locator("#item-index")).to_have_text(str(n + 1))


def in_viewport(page, selector: str, viewport: dict) -> bool:
    box = page.locator(selector).bounding_box()
    return box is not None and box["y"] >= 0 and box["y"] + box["height"] <= viewport["height"]


def test_ctrl_enter_twice_during_a_slow_save_saves_once(page_at, site):
    page, name = page_at()
    held = []
    page.route("**/api/annotations/**", lambda route: held.append(route))  # the save waits until released
    page.keyboard.press("i")
    page.fill("#feedback", "Only the word 'the'.")
    page.keyboard.press("Control+Enter")
    page.keyboard.press("Control+Enter")
    page.wait_for_timeout(500)
    assert len(held) == 1  # the second press sent nothing while the first save was in flight
    for route in held:
        route.continue_()
    expect(page.locator("#item-index")).to_have_text("2")  # the next item, not the one after it
    page.wait_for_timeout(500)
    expect(page.locator("#item-index")).to_have_text("2")
    rows = annotations(site["db"], name)
    assert [r["item_id"] for r in rows] == ["q-words"] and rows[0]["seconds"] < 30


def test_the_action_bar_is_on_screen_at_1366x768_and_each_item_starts_at_its_top(page_at):
    page, _ = page_at(DESKTOP)
    to_item(page, 1)  # the long passage
    assert page.evaluate("document.documentElement.scrollHeight") > DESKTOP["height"]
    assert in_viewport(page, "#save", DESKTOP) and in_viewport(page, "#skip", DESKTOP)
    page.evaluate("window.scrollTo(0, 1500)")
    assert in_viewport(page, "#save", DESKTOP)
    page.keyboard.press("p")
    expect(page.locator("#item-index")).to_have_text("1")
    page.keyboard.press("n")
    expect(page.locator("#item-index")).to_have_text("2")
    page.evaluate("window.scrollTo(0, 1500)")
    page.keyboard.press("n")
    expect(page.locator("#item-index")).to_have_text("3")
    assert page.evaluate("window.scrollY") == 0


def test_a_save_error_shows_beside_the_buttons(page_at):
    page, _ = page_at(DESKTOP)
    to_item(page, 1)
    page.keyboard.press("i")
    page.fill("#feedback", "y" * 6000)  # over the server's 5,000-character limit
    page.evaluate("document.activeElement.blur(); window.scrollTo(0, 0)")
    page.keyboard.press("Control+Enter")
    expect(page.locator("#status")).to_contain_text("5000")
    assert in_viewport(page, "#status", DESKTOP)
    expect(page.locator("#item-index")).to_have_text("2")  # not saved: still on the item


def test_the_models_answer_is_highlighted_only_as_a_whole_word(page_at):
    page, _ = page_at()
    marks = page.locator("#passage mark.pred")
    expect(marks.first).to_be_visible()
    # "the" is marked in "crossed the river" and "The duke" (a gold span too: "both"), never inside "Their"/"them".
    expect(page.locator("#passage mark.pred, #passage mark.both")).to_have_text(["the", "the"], ignore_case=True)
    assert page.evaluate("""() => [...document.querySelectorAll('#passage mark.pred, #passage mark.both')]
        .every(m => !/^\\w/.test(m.nextSibling?.textContent || '')
                    && !/\\w$/.test(m.previousSibling?.textContent || ''))""")


def test_a_10000_character_word_does_not_widen_the_page(page_at):
    for viewport in (DESKTOP, PHONE):
        page, _ = page_at(viewport)
        to_item(page, 2)
        expect(page.locator("#passage")).to_contain_text(LONG_WORD)
        width = page.evaluate("document.documentElement.scrollWidth")
        assert width <= viewport["width"], width


def test_after_skipping_to_the_end_the_page_offers_the_first_unannotated_item(page_at):
    page, _ = page_at()
    page.keyboard.press("c")
    page.fill("#feedback", "Fine.")
    page.keyboard.press("Control+Enter")
    expect(page.locator("#item-index")).to_have_text("2")
    for _ in range(7):
        page.keyboard.press("n")
    expect(page.locator("#done-view")).to_be_visible()
    expect(page.locator("#done-view")).to_contain_text("7 still to do")
    page.locator("#done-view button", has_text="first unannotated").click(timeout=5000)
    expect(page.locator("#item-index")).to_have_text("2")


def test_a_failed_login_is_an_inline_message(browser, site):
    page = browser.new_page()
    dialogs: list[str] = []
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    page.goto(site["url"])
    page.fill("#token", "not-a-token")
    page.click("#login")
    expect(page.get_by_text("Login failed")).to_be_visible()
    page.wait_for_timeout(300)
    assert dialogs == []
    page.close()


def test_gold_answers_are_listed_once(page_at):
    page, _ = page_at()
    expect(page.locator("#gold")).to_have_text("The duke")  # SQuAD lists it three times


def test_buttons_are_at_least_44_px_tall_on_a_phone(page_at):
    page, _ = page_at(PHONE)
    heights = page.evaluate("""() => [...document.querySelectorAll('#item-view button, #topbar button')]
        .filter(b => b.offsetParent !== null).map(b => [b.id || b.textContent, b.getBoundingClientRect().height])""")
    assert heights and all(h >= 44 for _, h in heights), heights
    assert in_viewport(page, "#save", PHONE)


def test_time_does_not_count_while_the_tab_is_hidden(page_at, site):
    page, name = page_at()
    page.keyboard.press("c")
    page.fill("#feedback", "Fine.")
    page.evaluate("""() => { for (const [k, v] of [['hidden', true], ['visibilityState', 'hidden']])
        Object.defineProperty(document, k, {value: v, configurable: true});
        document.dispatchEvent(new Event('visibilitychange')); }""")
    time.sleep(3)  # the annotator is in another tab
    page.evaluate("""() => { for (const [k, v] of [['hidden', false], ['visibilityState', 'visible']])
        Object.defineProperty(document, k, {value: v, configurable: true});
        document.dispatchEvent(new Event('visibilitychange')); }""")
    page.keyboard.press("Control+Enter")
    expect(page.locator("#item-index")).to_have_text("2")
    (row,) = annotations(site["db"], name)
    assert 0 < row["seconds"] < 2.5, row["seconds"]


def test_screenshots_of_the_item_page(page_at, tmp_path):
    """The item page (an item with an AI draft) at 1366x768 and 390x844, saved under $LAFFI_SCREENSHOTS."""
    folder = screenshot_dir(tmp_path)
    for viewport, name in ((DESKTOP, "item-1366x768.png"), (PHONE, "item-390x844.png")):
        page, _ = page_at(viewport)
        to_item(page, 3)
        expect(page.locator("#draft-banner")).to_be_visible()
        page.screenshot(path=str(folder / name))
        assert (folder / name).stat().st_size > 10_000
