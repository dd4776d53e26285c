"""Hostile text in the annotation app, in a real browser (headless Debian chromium driven by Playwright, the server
started as `laffi annotate-server`): HTML and script in a passage, title, question, gold answer, model answer and in
feedback an annotator saved are shown as literal text, and none of it runs (a flag each payload would set stays
unset, no dialog opens, no element is created from it)."""

from __future__ import annotations

import json

from browser_harness import login, needs_chromium, new_annotator
from server_helper import annotation_server

from laffi.data import write_squad
from laffi.records import Question
from laffi.server.store import Store

pytestmark = needs_chromium

# Each payload, if parsed as HTML, runs script that sets window.__pwned (and the last two open a dialog).
IMG = "<img src=x onerror=\"window.__pwned='img'\">"
SCRIPT = "<script>window.__pwned='script'</script>"
SVG = '"><svg onload="window.__pwned=\'svg\';alert(1)">'
BOLD = "<b onmouseover=\"window.__pwned='b'\">Rollo</b>"
IFRAME = "<iframe srcdoc=\"<script>parent.__pwned='iframe';alert(2)</script>\"></iframe>"


def hostile_question() -> Question:
    context = f"The Normans {SCRIPT} were led by {BOLD} in 911. {SVG} Later {IFRAME} they spread."
    return Question(id="hostile-1", title=f"Normans_{SCRIPT}", context=context, question=f"Who led them? {IMG}",
                    answers=[BOLD], answer_starts=[context.index(BOLD)])  # fmt: skip


def test_html_and_script_are_inert_in_the_page(tmp_path, browser):
    from playwright.sync_api import expect

    q = hostile_question()
    data, preds, db = tmp_path / "hostile.json", tmp_path / "preds.json", tmp_path / "fb.sqlite"
    write_squad([q], data)
    preds.write_text(json.dumps({q.id: SVG}))  # the model "answered" with markup that also occurs in the passage
    _, token = new_annotator(db, name="ann")
    feedback = f"Wrong. {IMG} {SCRIPT} {IFRAME}"
    with annotation_server(data, preds, db, tmp_path / "server.log") as (url, _):
        page = browser.new_page()
        dialogs: list[str] = []
        page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
        login(page, url, token)
        expect(page.locator("#question")).to_have_text(q.question)
        expect(page.locator("#title")).to_have_text(q.title.replace("_", " "))
        expect(page.locator("#predicted")).to_have_text(SVG)
        expect(page.locator("#gold")).to_have_text(BOLD)
        expect(page.locator("#passage")).to_have_text(q.context)
        assert page.locator("#passage").text_content() == q.context  # exactly, not only up to whitespace
        # The gold span and the model's answer are highlighted as text, not as the markup they contain.
        expect(page.locator("#passage mark.gold")).to_have_text(BOLD)
        expect(page.locator("#passage mark.pred")).to_have_text(SVG)

        # The annotator saves feedback full of markup, comes back to it: shown literally in the text box.
        page.click("#btn-incorrect")
        page.fill("#feedback", feedback)
        page.click("#save")
        expect(page.locator("#done-view")).to_be_visible()
        page.click("#restart")
        expect(page.locator("#feedback")).to_have_value(feedback)
        page.hover("#passage")  # would fire the <b onmouseover> had it been parsed
        page.wait_for_timeout(500)  # time for an injected image's onerror or iframe to have run

        assert page.evaluate("window.__pwned") is None
        assert dialogs == []
        created = page.locator("#item-view :is(img, svg, iframe, script), #passage b, #gold b")
        expect(created).to_have_count(0)

        # The detector works: the same text, parsed as HTML on purpose, does set the flag.
        page.evaluate("h => { const d = document.createElement('div'); d.innerHTML = h; document.body.append(d); }",
                      IMG)  # fmt: skip
        page.wait_for_function("window.__pwned === 'img'", timeout=5000)
        page.close()
    # The page closes the feedback with the right answer (the gold one, prefilled; its '"' made "'" to stay parseable).
    closing = f'The right answer is "{BOLD.replace(chr(34), chr(39))}".'
    assert [(r.feedback, r.question) for r in Store(db).export()] == [(f"{feedback} {closing}", q.question)]
