"""`site` for the tests/server/test_page_*.py browser tests: the app on the data set of page_site.py, served by
uvicorn in a thread of the test process, one per test module. `browser` and `page_at` are in tests/conftest.py."""

from __future__ import annotations

import pytest
from browser_harness import serve_in_thread

from .page_site import GUIDELINES, prepare


@pytest.fixture(scope="module", name="site")
def site_fixture(tmp_path_factory):
    from laffi.server.app import create_app

    db = tmp_path_factory.mktemp("app") / "fb.sqlite"
    prepare(db)
    with serve_in_thread(create_app(db, guidelines=GUIDELINES)) as url:
        yield {"url": url, "db": db}
