"""Annotators see and change only their own work: another annotator's token neither reads nor overwrites it, the
export needs an admin token, and every API route refuses a missing or unknown token with 401."""

import json

import pytest
from fastapi.testclient import TestClient

from laffi.server.app import create_app
from laffi.server.store import Store


@pytest.fixture()
def site(tmp_path, excerpt_questions):
    db = tmp_path / "fb.sqlite"
    store = Store(db)
    qs = excerpt_questions[:3]
    store.add_items(qs, {q.id: "Normandy" for q in qs})
    tokens = {name: store.add_annotator(name) for name in ("alice", "bob")}
    tokens["boss"] = store.add_annotator("boss", admin=True)
    client = TestClient(create_app(db))

    def call(method: str, path: str, who: str | None, headers: dict | None = None, **kw):
        headers = {"Authorization": f"Bearer {tokens[who]}"} if who else (headers or {})
        return client.request(method, path, headers=headers, **kw)

    return {"call": call, "qs": qs, "store": store}


def test_a_token_cannot_read_or_overwrite_another_annotators_work(site):
    call, qs, store = site["call"], site["qs"], site["store"]
    item = qs[1].id
    assert call("PUT", f"/api/annotations/{item}", "alice", json={"verdict": "incorrect",
                                                                  "feedback": "alice's secret note"}).status_code == 200
    # Bob sees the item but not Alice's annotation, nor her progress.
    seen = call("GET", "/api/items/1", "bob").json()
    assert seen["id"] == item and seen["annotation"] is None and seen["progress"] == {"done": 0, "total": 3}
    assert "alice's secret note" not in json.dumps(seen)
    bob = call("GET", "/api/me", "bob").json()
    assert (bob["name"], bob["admin"], bob["done"], bob["total"]) == ("bob", False, 0, 3)
    # Bob writing the same item writes his own annotation; Alice's is unchanged.
    assert call("PUT", f"/api/annotations/{item}", "bob", json={"verdict": "correct",
                                                                "feedback": "bob's note"}).status_code == 200
    assert call("GET", "/api/items/1", "alice").json()["annotation"]["feedback"] == "alice's secret note"
    assert call("GET", "/api/items/1", "bob").json()["annotation"]["feedback"] == "bob's note"
    # The body cannot name another annotator (unknown fields are refused, nothing is written).
    r = call("PUT", f"/api/annotations/{item}", "bob", json={"verdict": "correct", "feedback": "as alice",
                                                             "annotator": "alice"})
    assert r.status_code == 422 and "annotator: Extra inputs are not permitted" in r.json()["detail"]
    # Even the admin's item view shows only the admin's own annotation; the export has both, attributed.
    assert call("GET", "/api/items/1", "boss").json()["annotation"] is None
    lines = [json.loads(line) for line in call("GET", "/api/export", "boss").text.splitlines()]
    assert sorted((d["annotator"], d["verdict"], d["feedback"]) for d in lines) == [
        ("human:alice", "incorrect", "alice's secret note"), ("human:bob", "correct", "bob's note")]
    assert [(r.annotator, r.feedback) for r in store.export("alice")] == [("human:alice", "alice's secret note")]


def test_export_refuses_annotator_tokens(site):
    call = site["call"]
    for who in ("alice", "bob"):
        r = call("GET", "/api/export", who)
        assert r.status_code == 403 and r.json() == {"detail": "export needs an admin token"}
    assert call("GET", "/api/export", "boss").status_code == 200


@pytest.mark.parametrize("header", [None, "", "Bearer ", "Bearer nope", "nope", "Basic YWxpY2U6eA==",
                                    "Bearer " + "x" * 5000])
@pytest.mark.parametrize("method,path", [("GET", "/api/me"), ("GET", "/api/items/0"), ("GET", "/api/export"),
                                         ("PUT", "/api/annotations/ID")])
def test_missing_or_unknown_token_is_401(site, header, method, path):
    call, qs = site["call"], site["qs"]
    headers = {} if header is None else {"Authorization": header}
    body = {"json": {"verdict": "correct", "feedback": "x"}} if method == "PUT" else {}
    r = call(method, path.replace("ID", qs[0].id), None, headers=headers, **body)
    assert r.status_code == 401 and r.json() == {"detail": "unknown token"}
    assert r.headers["www-authenticate"] == "Bearer"
    assert site["store"].export() == []


def test_a_token_is_bound_to_its_annotator(site):
    """Tokens are stored hashed: the database holds no token, and a token's hash is not itself a token."""
    store = site["store"]
    rows = store.db.execute("SELECT name, token_sha256 FROM annotators").fetchall()
    assert len(rows) == 3
    call = site["call"]
    for _name, sha in rows:
        r = call("GET", "/api/me", None, headers={"Authorization": f"Bearer {sha}"})
        assert r.status_code == 401
