"""The HTTP bad-input corpus (tests/bad_inputs/http_cases.yaml) against the annotation app: every bad request gets
its 4xx with a one-line `detail` that says what is wrong, and writes nothing."""

from pathlib import Path

import pytest
import yaml
from fastapi.testclient import TestClient

from laffi.server.app import MAX_BODY_BYTES, MAX_FEEDBACK_CHARS, create_app
from laffi.server.store import Store

MANIFEST = yaml.safe_load((Path(__file__).parents[1] / "bad_inputs" / "http_cases.yaml").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def app(tmp_path_factory, excerpt_questions):
    db = tmp_path_factory.mktemp("http-bad") / "fb.sqlite"
    store = Store(db)
    qs = excerpt_questions[:3]
    store.add_items(qs, {q.id: "" for q in qs})
    tokens = {"ann": store.add_annotator("ann"), "admin": store.add_annotator("boss", admin=True)}
    return {"client": TestClient(create_app(db)), "tokens": tokens, "item": qs[0].id, "store": store}


def test_corpus_covers_the_limits():
    names = {c["name"] for c in MANIFEST["cases"]}
    assert len(names) == len(MANIFEST["cases"]) >= 30
    sizes = [c.get("body_bytes") or c.get("stream_bytes") for c in MANIFEST["cases"]]
    assert max(s or 0 for s in sizes) > MAX_BODY_BYTES  # the size cases do pass the limit the app has now
    assert max(c.get("feedback_chars", 0) for c in MANIFEST["cases"]) == MAX_FEEDBACK_CHARS + 1


def request_args(case: dict, app: dict) -> dict:
    token = case["token"]
    headers = {}
    if token in app["tokens"]:
        headers["Authorization"] = f"Bearer {app['tokens'][token]}"
    elif token != "none":
        headers["Authorization"] = token
    kwargs: dict = {"headers": headers}
    if "body" in case:
        kwargs["json"] = case["body"]
    elif "content" in case:
        kwargs["content"] = case["content"].encode()
        headers["Content-Type"] = case.get("content_type", "application/json")
    elif "body_bytes" in case:
        kwargs["content"] = b"{" + b" " * (case["body_bytes"] - 2) + b"}"
        headers["Content-Type"] = "application/json"
    elif "stream_bytes" in case:
        n = case["stream_bytes"]
        kwargs["content"] = (b" " * 1000 for _ in range(n // 1000))  # a generator: sent chunked, no Content-Length
        headers["Content-Type"] = "application/json"
    elif "feedback_chars" in case:
        kwargs["json"] = {"verdict": "correct", "feedback": "x" * case["feedback_chars"]}
    return kwargs


@pytest.mark.parametrize("case", MANIFEST["cases"], ids=lambda c: c["name"])
def test_bad_request_is_4xx_with_one_line_detail(case, app):
    kwargs = request_args(case, app)
    r = app["client"].request(case["method"], case["path"].format(item=app["item"]), **kwargs)
    assert r.status_code == case["status"], r.text
    detail = r.json()["detail"]
    assert isinstance(detail, str) and "\n" not in detail and len(detail) < 200, detail
    assert case["expect"] in detail, detail
    assert app["store"].export() == []  # nothing was written


def test_a_good_request_still_passes(app):
    """The fixture is not broken in a way that makes every request fail (the cases above would then prove nothing)."""
    h = {"Authorization": f"Bearer {app['tokens']['ann']}"}
    body = {"verdict": "correct", "feedback": "x" * MAX_FEEDBACK_CHARS}
    r = app["client"].put(f"/api/annotations/{app['item']}", headers=h, json=body)
    assert r.status_code == 200, r.text
    assert [(f.id, f.feedback) for f in app["store"].export()] == [(app["item"], "x" * MAX_FEEDBACK_CHARS)]
    with app["store"].db:
        app["store"].db.execute("DELETE FROM annotations")
