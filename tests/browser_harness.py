"""The annotation app's browser test harness (no tests here), shared by tests/server/test_page_*.py (the app served in
a thread of the test process) and the browser tests of tests/integration (the real `laffi annotate-server`, started by
tests/integration/server_helper.py): headless Debian chromium driven by Playwright, fresh annotators and their login,
the annotations the database holds, and the folder for screenshots.

The `browser` and `page_at` fixtures (tests/conftest.py) are `chromium` and `pages`; each suite's conftest.py has its
own `site` (its data set and its server, one per test module). Each test logs in as its own annotator, so tests do
not see each other's work."""

from __future__ import annotations

import contextlib
import itertools
import os
import socket
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

CHROMIUM = Path("/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
needs_chromium = pytest.mark.skipif(not CHROMIUM.exists(), reason="no /usr/bin/chromium (make install runs apt-get "
                                    "install -y chromium; it could not be had here)")  # fmt: skip
DESKTOP = {"width": 1366, "height": 768}
PHONE = {"width": 390, "height": 844}


@contextlib.contextmanager
def chromium() -> Iterator:
    """Headless Debian chromium (`CHROMIUM`, with `ARGS`) driven by Playwright; yields the browser."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        yield b
        b.close()


@contextlib.contextmanager
def serve_in_thread(app) -> Iterator[str]:
    """The ASGI `app` served by uvicorn on a free port, in a thread of the test process; yields its URL."""
    import uvicorn

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
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


def new_annotator(db: Path, admin: bool = False, name: str | None = None) -> tuple[str, str]:
    """A fresh annotator (`name`, else ann0, ann1, ...) in the running server's database: (name, token)."""
    from laffi.server.store import Store

    name = name or f"ann{next(_names)}"
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


@contextlib.contextmanager
def pages(browser, site: dict) -> Iterator[Callable[..., tuple]]:
    """Yields make(viewport=DESKTOP, admin=False) -> (page, annotator name): a page in a new browser context, logged
    in to site["url"] on item 1 as a fresh annotator of site["db"] (their token is `page.token`). Closes the
    contexts at the end."""
    contexts = []

    def make(viewport: dict | None = None, admin: bool = False):
        context = browser.new_context(viewport=viewport or DESKTOP, accept_downloads=True)
        contexts.append(context)
        page = context.new_page()
        name, token = new_annotator(site["db"], admin)
        page.token = token
        login(page, site["url"], token)
        return page, name

    try:
        yield make
    finally:
        for c in contexts:
            c.close()


def annotations(db: Path, annotator: str) -> list[dict]:
    """The annotator's rows as the database holds them."""
    with contextlib.closing(sqlite3.connect(db)) as con:
        con.row_factory = sqlite3.Row
        return [dict(r) for r in con.execute("SELECT * FROM annotations WHERE annotator=? ORDER BY item_id",
                                             (annotator,))]  # fmt: skip


def screenshot_dir(tmp_path: Path) -> Path:
    """Where tests save screenshots: $LAFFI_SCREENSHOTS, else the test's own tmp dir."""
    folder = Path(os.environ.get("LAFFI_SCREENSHOTS") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    return folder
