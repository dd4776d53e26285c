"""The admin view's disagreement list and adjudication, time per item per annotator, an item's history, and the
autosave of typed text (a real chromium against the app). Screenshots of the disagreement list at 1366x768 and
390x844 go to $LAFFI_SCREENSHOTS (else the test's tmp dir)."""

from __future__ import annotations

import contextlib
import re
import sqlite3
import time
from pathlib import Path

from browser_harness import DESKTOP, PHONE, annotations, login, needs_chromium, new_annotator, screenshot_dir
from playwright.sync_api import expect

from laffi.server.store import Store

pytestmark = needs_chromium
RIGHT = ' The right answer is "Rollo".'


def judged(db: Path, verdicts: dict[str, str], qid: str = "q2", seconds: float = 20.0, right: str = RIGHT) -> list[str]:
    """Fresh annotators, each with their feedback (a key of `verdicts`) and verdict on `qid` saved as the page
    would; returns their names."""
    names = []
    for k, (text, verdict) in enumerate(verdicts.items()):
        name, _ = new_annotator(db)
        store = Store(db)
        store.save(name, qid, verdict, text + right, seconds * (k + 1))
        store.close()
        names.append(name)
    return names


def exactly(name: str) -> re.Pattern:
    return re.compile(f"^{re.escape(name)}$")


def card(page, name: str):
    """The disagreement card that holds `name`'s annotation."""
    return page.locator(".dis", has=page.locator(".entry b", has_text=exactly(name)))


def test_the_admin_sees_a_disagreement_side_by_side_and_adjudicates_it(page_at, site):
    a, b = judged(site["db"], {"William founded it, as the passage says.": "correct",
                               "The passage names Rollo, not William.": "incorrect"})  # fmt: skip
    page, boss = page_at(admin=True)
    page.click("#admin-btn")
    dis = card(page, a)
    expect(dis).to_have_count(1)
    expect(dis.locator("h3")).to_have_text("Who founded Normandy? item q2")
    expect(dis.locator(".entry b")).to_have_text([a, b])  # both annotations, side by side
    expect(dis.locator(".entry .badge")).to_have_text(["correct", "incorrect"])
    expect(dis.locator(".entry .text").nth(1)).to_have_text("The passage names Rollo, not William." + RIGHT)
    boxes = dis.locator(".entry").evaluate_all("els => els.map(e => e.getBoundingClientRect().top)")
    assert boxes[0] == boxes[1]  # side by side at 1366 px
    dis.get_by_role("button", name=f"Use {b}'s").click()
    expect(dis.locator(".adjudicate textarea")).to_have_value("The passage names Rollo, not William.")
    expect(dis.get_by_label("right answer")).to_have_value("Rollo")
    expect(dis.get_by_role("button", name="Incorrect")).to_have_attribute("aria-pressed", "true")
    dis.locator(".adjudicate textarea").fill("Rollo founded Normandy; William is wrong.")
    dis.get_by_role("button", name="Save final record").click()
    expect(dis.locator(".result")).to_have_text(f"Final record by {boss}: incorrect. Saving again replaces it.")
    expect(dis).to_have_class("dis done")
    store = Store(site["db"])
    final = [r for r in store.export() if r.id == "q2" and r.annotator in (f"human:{a}", f"human:{b}",
                                                                            f"human:{boss}")]  # fmt: skip
    store.close()
    assert [(r.annotator, r.verdict) for r in final] == [(f"human:{boss}", "incorrect")]
    assert final[0].feedback == "Rollo founded Normandy; William is wrong." + RIGHT
    assert final[0].meta["provenance"] == f"adjudicated by {boss}" and final[0].meta["right_answer"] == "Rollo"
    # Opened again, the card shows the final record in its form.
    page.click("#admin-back")
    page.click("#admin-btn")
    expect(card(page, a).locator(".result")).to_contain_text(f"Final record by {boss}: incorrect")
    expect(card(page, a).locator(".adjudicate textarea")).to_have_value("Rollo founded Normandy; William is wrong.")


def test_the_admin_table_shows_time_per_item_per_annotator(page_at, site):
    (name,) = judged(site["db"], {"Fine.": "correct"}, qid="q3", seconds=60.0)
    store = Store(site["db"])
    store.save(name, "q5", "correct", "Fine." + RIGHT, 30.0)
    store.close()
    page, _ = page_at(admin=True)
    page.click("#admin-btn")
    row = page.locator("#admin-times tbody tr", has=page.locator("td:first-child", has_text=exactly(name)))
    expect(row.locator("td")).to_have_text([name, "2", "1.5 min", "45 s", "45 s"])
    expect(page.locator("#admin-times thead th")).to_have_text(["annotator", "items", "total", "mean", "median"])


def test_an_item_shows_its_history_of_earlier_answers_and_content(page_at, site):
    page, name = page_at()
    with contextlib.closing(sqlite3.connect(site["db"])) as con:  # what the store keeps after new predictions/data
        content = con.execute("SELECT content FROM items WHERE id='q0'").fetchone()[0]
        for predicted, verdict, text, kept, when in (
                ("Emma", "incorrect", "Emma is the bride.", content, time.time() - 100),
                ("Cnut", "correct", "Older wording.", "older-content", time.time() - 5000)):  # fmt: skip
            con.execute("INSERT INTO annotations (annotator, item_id, predicted, verdict, feedback, seconds, created, "
                        "updated, content) VALUES (?,?,?,?,?,?,?,?,?)",
                        (name, "q0", predicted, verdict, text, 12.0, when, when, kept))  # fmt: skip
        con.commit()
    page.reload()
    expect(page.locator("#item-index")).to_have_text("1")
    expect(page.locator("#history-title")).to_have_text("History: 2 other annotations of this item")
    page.click("#history-title")
    entries = page.locator("#history-list .entry")
    expect(entries).to_have_count(2)
    expect(entries.locator(".text")).to_have_text(["Emma is the bride.", "Older wording."], use_inner_text=True)
    expect(entries.nth(0).locator(".head")).to_contain_text('earlier answer "Emma"')
    expect(entries.nth(1).locator(".head")).to_contain_text("earlier question, passage or gold answers")
    page.keyboard.press("n")  # an item without history shows none
    expect(page.locator("#item-index")).to_have_text("2")
    expect(page.locator("#history")).to_be_hidden()


def test_the_admin_sees_everyones_annotations_of_an_item(page_at, site):
    a, b = judged(site["db"], {"Right.": "correct", "Wrong.": "incorrect"}, qid="q0")
    page, _ = page_at(admin=True)
    expect(page.locator("#history-title")).to_contain_text("History: ")
    page.click("#history-title")
    for name, verdict in ((a, "correct"), (b, "incorrect")):
        entry = page.locator("#history-list .entry", has=page.locator("b", has_text=exactly(name)))
        expect(entry.locator(".badge")).to_have_text(verdict)
        expect(entry.locator(".head")).to_contain_text("this answer")


def test_typed_text_is_restored_after_a_reload_and_forgotten_once_saved(page_at, site):
    page, name = page_at()
    page.on("dialog", lambda dialog: dialog.accept())  # the reload asks first: leave
    page.keyboard.press("i")
    page.fill("#feedback", "Cnut is right but I was interrupted")
    page.fill("#right-answer", "Cnut the Great")
    page.evaluate("document.activeElement.blur()")
    page.reload()
    expect(page.locator("#item-index")).to_have_text("1")
    expect(page.locator("#feedback")).to_have_value("Cnut is right but I was interrupted")
    expect(page.locator("#right-answer")).to_have_value("Cnut the Great")
    expect(page.locator("#btn-incorrect")).to_have_attribute("aria-pressed", "true")
    expect(page.locator("#autosave-note")).to_be_visible()
    page.keyboard.press("Control+Enter")
    expect(page.locator("#item-index")).to_have_text("2")
    (row,) = annotations(site["db"], name)
    assert row["feedback"] == 'Cnut is right but I was interrupted The right answer is "Cnut the Great".'
    page.keyboard.press("p")
    expect(page.locator("#saved-mark")).to_have_text("saved")
    page.reload()  # saved: nothing typed is left to restore (a reload resumes at the next item to do)
    expect(page.locator("#item-index")).to_have_text("2")
    page.keyboard.press("p")
    expect(page.locator("#saved-mark")).to_have_text("saved")
    expect(page.locator("#feedback")).to_have_value("Cnut is right but I was interrupted")
    expect(page.locator("#autosave-note")).to_be_hidden()
    assert page.evaluate("Object.keys(localStorage).filter(k => k.startsWith('laffi-autosave|'))") == []


def test_restored_text_can_be_discarded(page_at):
    page, _ = page_at()
    page.on("dialog", lambda dialog: dialog.accept())
    page.fill("#feedback", "A stray thought")
    page.evaluate("document.activeElement.blur()")
    page.reload()
    expect(page.locator("#feedback")).to_have_value("A stray thought")
    page.click("#autosave-discard")
    expect(page.locator("#feedback")).to_have_value("")
    expect(page.locator("#autosave-note")).to_be_hidden()
    page.reload()
    expect(page.locator("#item-index")).to_have_text("1")
    expect(page.locator("#feedback")).to_have_value("")


def test_screenshots_of_the_disagreement_list(browser, site, tmp_path):
    """The admin view (its top: admin-*.png) and its disagreement list (disagreements-*.png, scrolled to a card with
    three annotations) at 1366x768 and 390x844; the page is never wider than the window."""
    judged(site["db"], {"The river is where they crossed, not who led them.": "incorrect",
                        "The passage says they crossed the river, so the answer fits.": "correct",
                        "The duke led them; the river is a place.": "incorrect"}, qid="q1",
           right=' The right answer is "The duke".')  # fmt: skip
    folder = screenshot_dir(tmp_path)
    _, token = new_annotator(site["db"], admin=True)
    for viewport, name in ((DESKTOP, "disagreements-1366x768.png"), (PHONE, "disagreements-390x844.png")):
        context = browser.new_context(viewport=viewport)
        page = context.new_page()
        login(page, site["url"], token)
        page.click("#admin-btn")
        expect(page.locator("#admin-progress tbody tr").first).to_be_visible()
        page.screenshot(path=str(folder / name.replace("disagreements", "admin")))
        dis = page.locator(".dis", has=page.locator("h3", has_text="Who led them?"))
        expect(dis.locator(".entry")).to_have_count(3)
        dis.get_by_role("button", name="Use").first.click()
        top = page.locator("#admin-view h2", has_text="Disagreements") if viewport == DESKTOP else dis
        top.evaluate("e => window.scrollBy(0, e.getBoundingClientRect().top - 8)")
        overflow = page.evaluate("document.documentElement.scrollWidth - document.documentElement.clientWidth")
        assert overflow <= 0, f"the page is {overflow} px wider than the window at {viewport}"
        page.screenshot(path=str(folder / name))
        assert (folder / name).stat().st_size > 10_000
        context.close()
