"""`site` for the tests/integration/test_app_*.py browser tests: the real server on the data set of app_site.py, with
its drafts and the default guidelines, one per test module. `browser` and `page_at` are in tests/conftest.py."""

from __future__ import annotations

import pytest
from app_site import build, serve


@pytest.fixture(scope="module", name="site")
def site_fixture(tmp_path_factory):
    """The server with drafts and the default guidelines; yields the URL and the file paths."""
    paths = build(tmp_path_factory.mktemp("app"))
    with serve(paths, "--drafts", paths["drafts"]) as url:
        yield {"url": url, **paths}
