"""AI drafts, the right-answer field and the guidelines, in a real browser against the real server started with
`--drafts` (and, for the guidelines, `--guidelines`)."""

from __future__ import annotations

import json

from app_site import DRAFT_FEEDBACK, build, serve
from browser_harness import annotations, login, needs_chromium, new_annotator
from playwright.sync_api import expect

from laffi.prompts import parse_feedback
from laffi.server.feedback_text import levenshtein

pytestmark = needs_chromium


def to_item(page, n: int) -> None:
    for _ in range(n):
        page.keyboard.press("n")
    expect(page.locator("#item-index")).to_have_text(str(n + 1))


def export(page, url: str, admin_token: str, query: str = "") -> list[dict]:
    text = page.request.get(url + "api/export" + query, headers={"Authorization": f"Bearer {admin_token}"}).text()
    return [json.loads(line) for line in text.splitlines()]


def test_a_draft_prefills_the_item_and_accepting_it_unchanged_is_recorded(page_at, site):
    page, name = page_at()
    to_item(page, 3)
    expect(page.locator("#draft-banner")).to_contain_text("llm:test-model")
    expect(page.locator("#btn-incorrect")).to_have_class("on")
    expect(page.locator("#feedback")).to_have_value("The passage says the duke led them, not the river.")
    expect(page.locator("#right-answer")).to_have_value("The duke")
    page.keyboard.press("Control+Enter")  # accept
    expect(page.locator("#item-index")).to_have_text("5")
    (row,) = annotations(site["db"], name)
    assert (row["draft_shown"], row["draft_accepted"], row["draft_distance"]) == (1, 1, 0)
    assert row["feedback"] == DRAFT_FEEDBACK and row["seconds"] > 0
    _, admin = new_annotator(site["db"], admin=True)
    (record,) = [r for r in export(page, site["url"], admin) if r["annotator"] == f"human:{name}"]
    assert record["meta"]["draft"] == {"shown": True, "accepted": True, "edit_distance": 0}


def test_an_edited_draft_keeps_its_edit_distance(page_at, site):
    page, name = page_at()
    to_item(page, 3)
    expect(page.locator("#draft-banner")).to_be_visible()
    page.fill("#feedback", "The duke led them; the river is where they went.")
    page.keyboard.press("Control+Enter")
    expect(page.locator("#item-index")).to_have_text("5")
    (row,) = annotations(site["db"], name)
    final = 'The duke led them; the river is where they went. The right answer is "The duke".'
    assert row["feedback"] == final
    assert (row["draft_shown"], row["draft_accepted"]) == (1, 0)
    assert row["draft_distance"] == levenshtein(DRAFT_FEEDBACK, final) > 0


def test_a_draft_for_another_answer_is_not_shown(page_at, site):
    page, name = page_at()
    to_item(page, 4)  # its draft judged "William"; the item's answer is "Rollo"
    expect(page.locator("#draft-banner")).to_be_hidden()
    expect(page.locator("#feedback")).to_have_value("")
    page.keyboard.press("c")
    page.fill("#feedback", "Rollo founded it.")
    page.keyboard.press("Control+Enter")
    expect(page.locator("#item-index")).to_have_text("6")
    (row,) = annotations(site["db"], name)
    assert (row["draft_shown"], row["draft_accepted"], row["draft_distance"]) == (0, 0, None)


def test_the_right_answer_field_closes_every_feedback_so_it_parses(page_at, site):
    page, name = page_at()
    # Item 1: incorrect; the field is prefilled with the gold answer, the annotator types another with quotes.
    page.keyboard.press("i")
    expect(page.locator("#right-answer")).to_have_value("The duke")
    page.fill("#right-answer", 'the "duke"')
    page.fill("#feedback", "Only a word.")
    expect(page.locator("#closing")).to_have_text("The right answer is \"the 'duke'\".")
    page.keyboard.press("Control+Enter")
    expect(page.locator("#item-index")).to_have_text("2")
    # Item 6 (unanswerable, the model abstained): correct; the field says unanswerable.
    for _ in range(4):
        page.keyboard.press("n")
    expect(page.locator("#item-index")).to_have_text("6")
    page.keyboard.press("c")
    expect(page.locator("#unanswerable")).to_be_checked()
    page.fill("#feedback", "Nothing in the passage says who painted them.")
    page.keyboard.press("Control+Enter")
    expect(page.locator("#item-index")).to_have_text("7")
    # Item 7: incorrect with the right answer emptied is refused on the page, with a message beside the buttons.
    page.keyboard.press("i")
    page.fill("#right-answer", "")
    page.fill("#feedback", "Wrong.")
    page.keyboard.press("Control+Enter")
    expect(page.locator("#status")).to_contain_text("right answer")
    _, admin = new_annotator(site["db"], admin=True)
    records = [r for r in export(page, site["url"], admin) if r["annotator"] == f"human:{name}"]
    assert [(r["id"], parse_feedback(r["feedback"])[1]) for r in records] == [("q-words", "the 'duke'"),
                                                                              ("q-none", "")]  # fmt: skip


def test_guidelines_are_shown_and_rendered_safely(browser, tmp_path):
    paths = build(tmp_path)
    guidelines = tmp_path / "guide.md"
    guidelines.write_text(
        "## House rules\n\n**Partial answers** are incorrect.\n\n"
        '<script>window.__g = 1</script> <img src=x onerror="window.__g = 2">\n\n'
        "[a link](javascript:window.__g=3) and [the paper](https://arxiv.org/abs/2401.00907)\n"
    )
    with serve(paths, "--guidelines", guidelines) as url:
        _, token = new_annotator(paths["db"])
        page = browser.new_page()
        login(page, url, token)
        page.click("#guidelines-btn")
        panel = page.locator("#guidelines")
        expect(panel.locator("h2")).to_have_text("House rules")
        expect(panel.locator("strong")).to_have_text("Partial answers")
        expect(panel).to_contain_text("<script>window.__g = 1</script>")  # shown as text
        expect(panel.locator("script, img")).to_have_count(0)
        assert panel.locator("a", has_text="a link").get_attribute("href") == "#"
        assert panel.locator("a", has_text="the paper").get_attribute("href") == "https://arxiv.org/abs/2401.00907"
        page.locator("a", has_text="a link").click()
        page.wait_for_timeout(300)
        assert page.evaluate("window.__g") is None
        page.close()


def test_the_default_guidelines_are_shipped(page_at):
    page, _ = page_at()
    page.click("#guidelines-btn")
    expect(page.locator("#guidelines")).to_contain_text("Partial answers are incorrect")
    expect(page.locator("#guidelines")).to_contain_text("Abstentions")
