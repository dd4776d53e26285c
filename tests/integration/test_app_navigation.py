"""Moving around the annotation app in a real browser (the real server, headless chromium): the item list with each
item's status, jump to item N, next item still to do, resume after a reload or in a second tab, a confirmation
before leaving unsaved feedback, skip with a reason, unsure, and log out."""

from __future__ import annotations

import json

from browser_harness import DESKTOP, annotations, login, needs_chromium, new_annotator
from playwright.sync_api import expect

pytestmark = needs_chromium


def annotate(page, verdict_key: str, text: str, unsure: bool = False) -> None:
    page.keyboard.press(verdict_key)
    page.fill("#feedback", text)
    if unsure:
        page.check("#unsure")
    page.keyboard.press("Control+Enter")


def test_item_list_statuses_jump_and_next_to_do(page_at, site):
    page, name = page_at()
    annotate(page, "c", "Fine.")  # item 1: annotated
    expect(page.locator("#item-index")).to_have_text("2")
    page.keyboard.press("s")  # item 2: skipped with a reason
    page.fill("#skip-reason", "passage is cut off or garbled")
    page.keyboard.press("Enter")
    expect(page.locator("#item-index")).to_have_text("3")
    annotate(page, "i", "Not sure about this one.", unsure=True)  # item 3: unsure
    expect(page.locator("#item-index")).to_have_text("4")
    page.keyboard.press("l")
    items = page.locator("#item-list button")
    expect(items).to_have_count(8)
    assert [items.nth(k).get_attribute("data-status") for k in range(8)] == \
        ["annotated", "skipped", "unsure"] + ["todo"] * 5  # fmt: skip
    expect(page.locator("#items-counts")).to_have_text("1 annotated, 1 unsure, 1 skipped, 5 to do")
    items.nth(1).click()  # back to the skipped item: its reason is shown
    expect(page.locator("#item-index")).to_have_text("2")
    expect(page.locator("#saved-mark")).to_have_text("skipped: passage is cut off or garbled")
    page.click("#items-btn")
    page.fill("#jump", "7")
    page.keyboard.press("Enter")
    expect(page.locator("#item-index")).to_have_text("7")
    annotate(page, "c", "Right.")
    expect(page.locator("#item-index")).to_have_text("8")
    page.keyboard.press("u")  # the next item still to do after item 8, wrapping round: item 4
    expect(page.locator("#item-index")).to_have_text("4")
    page.keyboard.press("u")
    expect(page.locator("#item-index")).to_have_text("5")
    for _ in range(4):
        page.keyboard.press("n")  # to the end and past it
    expect(page.locator("#done-view")).to_contain_text("4 still to do")
    page.click("#first-todo")
    expect(page.locator("#item-index")).to_have_text("4")
    rows = {r["item_id"]: (r["status"], r["note"]) for r in annotations(site["db"], name)}
    assert rows == {"q-words": ("annotated", ""), "q-long": ("skipped", "passage is cut off or garbled"),
                    "q-wide": ("unsure", ""), "q-plain1": ("annotated", "")}  # fmt: skip


def test_unsure_and_skipped_are_left_out_of_the_export_unless_asked(page_at, site):
    page, name = page_at()
    annotate(page, "c", "Fine.")
    expect(page.locator("#item-index")).to_have_text("2")
    page.click("#skip-reason-btn")
    page.fill("#skip-reason", "question is ambiguous")
    page.click("#skip-confirm")
    expect(page.locator("#item-index")).to_have_text("3")
    annotate(page, "i", "Hmm.", unsure=True)
    expect(page.locator("#item-index")).to_have_text("4")
    _, admin = new_annotator(site["db"], admin=True)

    def mine(query: str) -> list[tuple[str, str]]:
        text = page.request.get(site["url"] + "api/export" + query, headers={"Authorization": f"Bearer {admin}"})
        records = [json.loads(line) for line in text.text().splitlines()]
        return [(r["id"], r["meta"]["status"]) for r in records if r["annotator"] == f"human:{name}"]

    assert mine("") == [("q-words", "annotated")]
    assert mine("?unsure=true") == [("q-words", "annotated"), ("q-wide", "unsure")]
    assert mine("?unsure=true&skipped=true") == [("q-words", "annotated"), ("q-long", "skipped"),
                                                 ("q-wide", "unsure")]  # fmt: skip


def test_a_reload_and_a_second_tab_resume_where_the_annotator_was(browser, site):
    name, token = new_annotator(site["db"])
    context = browser.new_context(viewport=DESKTOP)
    page = context.new_page()
    login(page, site["url"], token)
    for _ in range(3):
        page.keyboard.press("n")
    expect(page.locator("#item-index")).to_have_text("4")
    page.reload()
    expect(page.locator("#item-index")).to_have_text("4")
    second = context.new_page()  # the same browser: the token is remembered
    second.goto(site["url"])
    expect(second.locator("#item-index")).to_have_text("4")
    other = browser.new_context().new_page()  # another browser: paste the token, still item 4
    login(other, site["url"], token)
    expect(other.locator("#item-index")).to_have_text("4")
    other.context.close()
    context.close()


def test_a_slow_request_for_an_item_passed_over_does_not_move_the_position_back(browser, site):
    """The server takes the position from the item requested. The request for item 2 is held until item 4 is
    requested: had the page sent its requests side by side, item 2's would land last and a reload resume there."""
    name, token = new_annotator(site["db"])
    context = browser.new_context(viewport=DESKTOP)
    page = context.new_page()
    login(page, site["url"], token)
    expect(page.locator("#item-index")).to_have_text("1")
    held = []

    def hold(route):  # item 2 (index 1): paused until continued
        held.append(route)

    page.route("**/api/items/1", hold)
    for _ in range(3):
        page.keyboard.press("n")
    for _ in range(250):  # the route handler runs as the page's events are processed
        if held:
            break
        page.wait_for_timeout(20)
    assert len(held) == 1
    with page.expect_response("**/api/items/1"):
        held[0].continue_()
    page.unroute("**/api/items/1", hold)
    expect(page.locator("#item-index")).to_have_text("4")
    page.wait_for_load_state("networkidle")
    page.reload()
    expect(page.locator("#item-index")).to_have_text("4")
    context.close()


def test_leaving_unsaved_feedback_asks_first(page_at):
    page, _ = page_at()
    answers = ["dismiss"]
    asked: list[str] = []

    def on_dialog(dialog):
        asked.append(dialog.message)
        dialog.accept() if answers.pop(0) == "accept" else dialog.dismiss()

    page.on("dialog", on_dialog)
    page.keyboard.press("n")  # nothing typed: no question
    expect(page.locator("#item-index")).to_have_text("2")
    page.fill("#feedback", "Half a thought")
    page.evaluate("document.activeElement.blur()")
    page.keyboard.press("n")
    page.wait_for_timeout(300)
    assert len(asked) == 1 and "not saved" in asked[0]
    expect(page.locator("#item-index")).to_have_text("2")  # dismissed: stays, text kept
    expect(page.locator("#feedback")).to_have_value("Half a thought")
    answers.append("accept")
    page.click("#back")
    expect(page.locator("#item-index")).to_have_text("1")  # accepted: leaves
    assert len(asked) == 2


def test_log_out(page_at, site):
    page, _ = page_at()
    page.click("#logout")
    expect(page.locator("#login-view")).to_be_visible()
    expect(page.locator("#login-error")).to_have_text("Logged out.")
    page.reload()
    expect(page.locator("#login-view")).to_be_visible()  # the token is forgotten
    expect(page.locator("#item-view")).to_be_hidden()
