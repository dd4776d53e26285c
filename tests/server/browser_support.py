"""Shared by the tests/server/test_page_*.py browser tests (no tests here): the app on a small data set, served by
uvicorn in a thread of the test process, and headless Debian chromium driven by Playwright.

One server per test module; each test logs in as its own annotator, so tests do not see each other's work."""

from __future__ import annotations

import contextlib
import itertools
import socket
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from laffi.records import FeedbackRecord, Question
from laffi.server.store import Store

CHROMIUM = Path("/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
needs_chromium = pytest.mark.skipif(not CHROMIUM.exists(), reason="no /usr/bin/chromium")
DESKTOP = {"width": 1366, "height": 768}
PHONE = {"width": 390, "height": 844}
# An LLM draft as `laffi annotate --annotator llm` writes it: the prose names the answer, no closing sentence.
RAW_DRAFT = "Incorrect: the passage says the duke led them, not the river."
CLOSED_DRAFT = 'The passage says Rollo founded it. The right answer is "Rollo".'
GUIDELINES = """# Rules

Read [the SQuAD paper](https://example.org/squad) and the [section below](#keys).

| verdict | when |
|---|---|
| correct | it matches a gold answer |

## Keys

`c` correct
"""


def _q(qid: str, context: str, question: str, answer: str | None) -> Question:
    if answer is None:
        return Question(id=qid, title="T_" + qid, context=context, question=question, is_impossible=True)
    return Question(id=qid, title="T_" + qid, context=context, question=question, answers=[answer],
                    answer_starts=[context.index(answer)])  # fmt: skip


QUESTIONS = [
    _q("q0", "Emma married Cnut in 1017.", "Whom did Emma marry?", "Cnut"),
    _q("q1", "The duke led them across the river in 1066.", "Who led them?", "The duke"),
    _q("q2", "Rollo was a Viking leader who founded Normandy.", "Who founded Normandy?", "Rollo"),
    _q("q3", "William crossed the Channel in 1066.", "Who crossed the Channel?", "William"),
    _q("q4", "The Normans built castles in stone.", "Who painted the castles?", None),
    _q("q5", "Harold died at Hastings.", "Where did Harold die?", "Hastings"),
    _q("q6", " ".join(f"Sentence {k}: the Norman dukes ruled from Rouen for many years." for k in range(40)),
       "Where did the dukes rule from?", "Rouen"),
]
PREDICTIONS = {"q0": "Cnut", "q1": "the river", "q2": "William", "q3": "Harold", "q4": "", "q5": "Hastings",
               "q6": "Paris"}  # fmt: skip


def _draft(qid: str, verdict: str, feedback: str) -> FeedbackRecord:
    q = next(q for q in QUESTIONS if q.id == qid)
    return FeedbackRecord(id=qid, question=q.question, context=q.context, predicted_answer=PREDICTIONS[qid],
                          gold_answers=q.answers, verdict=verdict, feedback=feedback, annotator="llm:test-model",
                          template_version="test", title=q.title)  # fmt: skip


DRAFTS = [_draft("q1", "incorrect", RAW_DRAFT), _draft("q2", "incorrect", CLOSED_DRAFT),
          _draft("q6", "incorrect", "Paris is not in the passage; the dukes ruled from Rouen.")]


def prepare(db: Path) -> None:
    store = Store(db)
    store.add_items(QUESTIONS, PREDICTIONS)
    store.set_drafts(DRAFTS, "drafts.jsonl")
    store.close()


@contextlib.contextmanager
def serve(db: Path) -> Iterator[str]:
    """The app on `db` (see `prepare`) on a free port, in a thread; yields its URL."""
    import uvicorn

    from laffi.server.app import create_app

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(db, guidelines=GUIDELINES), log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not server.started:
        if time.time() > deadline or not thread.is_alive():
            pytest.fail("annotation server did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}/"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


_names = itertools.count()


def new_annotator(db: Path, admin: bool = False) -> tuple[str, str]:
    """A fresh annotator in the running server's database: (name, token)."""
    name = f"ann{next(_names)}"
    store = Store(db)
    token = store.add_annotator(name, admin)
    store.close()
    return name, token


def login(page, url: str, token: str) -> None:
    from playwright.sync_api import expect

    page.goto(url)
    page.fill("#token", token)
    page.click("#login")
    expect(page.locator("#item-view")).to_be_visible()


def rows(db: Path, annotator: str) -> list[dict]:
    """The annotator's annotations as the database holds them."""
    with contextlib.closing(sqlite3.connect(db)) as con:
        con.row_factory = sqlite3.Row
        return [dict(r) for r in con.execute("SELECT * FROM annotations WHERE annotator=? ORDER BY item_id",
                                             (annotator,))]  # fmt: skip


@pytest.fixture(scope="module", name="browser")
def browser_fixture():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        yield b
        b.close()


@pytest.fixture(scope="module", name="site")
def site_fixture(tmp_path_factory):
    db = tmp_path_factory.mktemp("app") / "fb.sqlite"
    prepare(db)
    with serve(db) as url:
        yield {"url": url, "db": db}


@pytest.fixture(name="page_at")
def page_at_fixture(browser, site):
    """page_at(viewport) -> (page, annotator name), logged in as a fresh annotator on item 1."""
    contexts = []

    def make(viewport: dict | None = None, admin: bool = False):
        context = browser.new_context(viewport=viewport or DESKTOP, accept_downloads=True)
        contexts.append(context)
        page = context.new_page()
        name, token = new_annotator(site["db"], admin)
        page.token = token
        login(page, site["url"], token)
        return page, name

    yield make
    for c in contexts:
        c.close()
