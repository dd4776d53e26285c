"""End to end in a real browser: the annotation server started as `laffi annotate-server`, headless Debian chromium
driven by Playwright. Log in with a token, annotate three items (keyboard shortcuts and buttons), skip one, go back
and edit one, then export with the CLI and with the admin token and compare the records. The right-answer field,
prefilled from the verdict (the gold answer when incorrect, the model's when correct), closes each feedback with the
sentence `prompts.parse_feedback` reads."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from browser_harness import login, needs_chromium
from server_helper import annotation_server

from laffi.data import load_squad

pytestmark = needs_chromium


def closing(answer: str) -> str:
    return f'The right answer is "{answer}".'


def laffi(*args: object) -> subprocess.CompletedProcess:
    r = subprocess.run([sys.executable, "-m", "laffi", *map(str, args)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return r


@pytest.fixture()
def server(tmp_path, small_squad):
    qs = load_squad(small_squad)[:5]
    preds = tmp_path / "preds.json"
    preds.write_text(json.dumps({q.id: ("Normandy" if i % 2 else "") for i, q in enumerate(qs)}))
    db = tmp_path / "fb.sqlite"
    token = laffi("annotators", "add", "ann", "--db", db).stdout.strip()
    admin = laffi("annotators", "add", "boss", "--admin", "--db", db).stdout.strip()
    with annotation_server(small_squad, preds, db, tmp_path / "server.log") as (url, _):
        yield {"url": url, "token": token, "admin": admin, "db": db, "questions": qs,
               "preds": json.loads(preds.read_text())}  # fmt: skip


def test_annotate_in_browser_edit_and_export(server, tmp_path, browser):
    from playwright.sync_api import expect

    qs = server["questions"]
    page = browser.new_page()
    login(page, server["url"], server["token"])
    expect(page.locator("#question")).to_have_text(qs[0].question)
    expect(page.locator("#who")).to_have_text("ann")
    expect(page.locator("#progress")).to_have_text("0 / 5")
    if qs[0].answers:  # the gold span is highlighted in the passage
        expect(page.locator("#passage mark.gold").first).to_have_text(qs[0].answers[0])

    # Item 1 with keyboard shortcuts only: i = incorrect, f = focus feedback, Ctrl+Enter = save and next.
    page.keyboard.press("i")
    page.keyboard.press("f")
    page.keyboard.type("Wrong: first item.")
    page.keyboard.press("Control+Enter")
    expect(page.locator("#question")).to_have_text(qs[1].question)
    expect(page.locator("#progress")).to_have_text("1 / 5")
    expect(page.locator("#predicted")).to_have_text("Normandy")

    # Item 2 with the buttons.
    page.click("#btn-correct")
    page.fill("#feedback", "Right: second item.")
    page.click("#save")
    expect(page.locator("#question")).to_have_text(qs[2].question)

    # Item 3: skip (n); item 4: annotate.
    page.keyboard.press("n")
    expect(page.locator("#question")).to_have_text(qs[3].question)
    page.keyboard.press("c")
    page.fill("#feedback", "Right: fourth item.")
    page.keyboard.press("Control+Enter")
    expect(page.locator("#progress")).to_have_text("3 / 5")

    # Back three times (p) to item 2: the saved annotation is shown; edit it.
    for _ in range(3):
        page.keyboard.press("p")
    expect(page.locator("#question")).to_have_text(qs[1].question)
    expect(page.locator("#feedback")).to_have_value("Right: second item.")
    expect(page.locator("#btn-correct")).to_have_class("on")
    page.click("#btn-incorrect")  # the right answer the annotator confirmed stays when the verdict changes
    expect(page.locator("#right-answer")).to_have_value("Normandy")
    page.fill("#feedback", "Edited: the second answer is wrong after all.")
    page.click("#save")
    expect(page.locator("#question")).to_have_text(qs[2].question)
    expect(page.locator("#progress")).to_have_text("3 / 5")

    # Export over HTTP: only with the admin token.
    denied = page.request.get(server["url"] + "api/export", headers={"Authorization": f"Bearer {server['token']}"})
    assert denied.status == 403
    http_export = page.request.get(server["url"] + "api/export",
                                   headers={"Authorization": f"Bearer {server['admin']}"}).text()  # fmt: skip
    page.close()

    out = tmp_path / "human.jsonl"
    laffi("annotate", "export", "--db", server["db"], "--out", out)
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [json.loads(line) for line in http_export.splitlines()] == records
    expected = [(qs[0].id, "incorrect", "Wrong: first item. " + closing(qs[0].answers[0])),
                (qs[1].id, "incorrect", "Edited: the second answer is wrong after all. " + closing("Normandy")),
                (qs[3].id, "correct", "Right: fourth item. " + closing("Normandy"))]  # fmt: skip
    assert [(r["id"], r["verdict"], r["feedback"]) for r in records] == expected
    from laffi.prompts import parse_feedback

    assert [parse_feedback(r["feedback"])[1] for r in records] == [qs[0].answers[0], "Normandy", "Normandy"]
    for r, q in zip(records, [qs[0], qs[1], qs[3]], strict=True):
        assert r["annotator"] == "human:ann" and r["question"] == q.question and r["context"] == q.context
        assert r["gold_answers"] == q.answers and r["predicted_answer"] == server["preds"][q.id]
        assert r["meta"]["seconds"] > 0
    # The records load as the pipeline's feedback (the type `laffi train --feedback` reads).
    from laffi.records import read_feedback

    assert [r.id for r in read_feedback(out)] == [r["id"] for r in records]
    assert os.path.exists(str(server["db"]) + "-wal")  # WAL mode
