"""The annotation API (FastAPI TestClient): tokens, own work only, admin export, highlighted passage."""

import json

from fastapi.testclient import TestClient

from laffi.server.app import create_app, highlight
from laffi.server.store import Store


def test_highlight_marks_gold_and_predicted_spans():
    ctx = "Rollo swore fealty in 911. Rollo died."
    segs = highlight(ctx, ["911"], [ctx.index("911")], "rollo")
    assert segs == [{"text": "Rollo", "mark": "pred"}, {"text": " swore fealty in ", "mark": ""},
                    {"text": "911", "mark": "gold"}, {"text": ". ", "mark": ""}, {"text": "Rollo", "mark": "pred"},
                    {"text": " died.", "mark": ""}]  # fmt: skip
    assert "".join(s["text"] for s in segs) == ctx
    assert [s["mark"] for s in highlight(ctx, ["911"], [ctx.index("911")], "911")] == ["", "both", ""]


def test_api(tmp_path, excerpt_questions):
    db = tmp_path / "fb.sqlite"
    store = Store(db)
    qs = excerpt_questions[:3]
    store.add_items(qs, {q.id: "" for q in qs})
    ann, admin = store.add_annotator("ann"), store.add_annotator("boss", admin=True)
    client = TestClient(create_app(db))
    h = {"Authorization": f"Bearer {ann}"}
    assert client.get("/api/me").status_code == 401
    assert client.get("/api/me", headers={"Authorization": "Bearer wrong"}).status_code == 401
    me = client.get("/api/me", headers=h).json()
    assert {k: me[k] for k in ("name", "admin", "done", "total", "position")} == {"name": "ann", "admin": False,
                                                                                 "done": 0, "total": 3, "position": 0}
    item = client.get("/api/items/1", headers=h).json()
    assert item["id"] == qs[1].id and item["annotation"] is None and item["question"] == qs[1].question
    assert client.get("/api/items/3", headers=h).status_code == 404
    body = {"verdict": "correct", "feedback": "ok", "seconds": 4}
    r = client.put(f"/api/annotations/{qs[1].id}", headers=h, json=body)
    assert r.status_code == 200 and r.json()["progress"] == {"done": 1, "total": 3}
    bad = client.put(f"/api/annotations/{qs[1].id}", headers=h, json={"verdict": "meh", "feedback": "ok"})
    assert bad.status_code == 422 and "verdict must be" in bad.json()["detail"]
    assert client.get("/api/items/1", headers={"Authorization": f"Bearer {admin}"}).json()["annotation"] is None
    assert client.get("/api/export", headers=h).status_code == 403
    lines = client.get("/api/export", headers={"Authorization": f"Bearer {admin}"}).text.splitlines()
    assert [(d["id"], d["annotator"], d["verdict"]) for d in map(json.loads, lines)] == [(qs[1].id, "human:ann",
                                                                                          "correct")]  # fmt: skip
    assert "<title>laffi annotation</title>" in client.get("/").text


def test_a_save_based_on_a_stale_version_is_refused_with_409(tmp_path, excerpt_questions):
    db = tmp_path / "fb.sqlite"
    store = Store(db)
    qs = excerpt_questions[:2]
    store.add_items(qs, {q.id: "Rollo" for q in qs})
    h = {"Authorization": f"Bearer {store.add_annotator('ann')}"}
    client = TestClient(create_app(db))
    url = f"/api/annotations/{qs[0].id}"
    body = {"verdict": "correct", "feedback": "first tab", "version": None}  # both tabs loaded it unannotated
    assert client.put(url, headers=h, json=body).status_code == 200
    stale = client.put(url, headers=h, json={**body, "feedback": "second tab"})
    assert stale.status_code == 409 and "another tab or window saved it" in stale.json()["detail"]
    assert "\n" not in stale.json()["detail"]
    version = client.get("/api/items/0", headers=h).json()["annotation"]["version"]
    assert client.put(url, headers=h, json={**body, "feedback": "edit", "version": version}).status_code == 200
    assert client.put(url, headers=h, json={**body, "feedback": "stale", "version": version}).status_code == 409
    assert client.get("/api/items/0", headers=h).json()["annotation"]["feedback"] == "edit"
    # A client that sends no version replaces what is stored (the API's earlier contract).
    assert client.put(url, headers=h, json={"verdict": "correct", "feedback": "any"}).status_code == 200


def test_every_api_answer_says_no_store(tmp_path, excerpt_questions):
    db = tmp_path / "fb.sqlite"
    store = Store(db)
    qs = excerpt_questions[:2]
    store.add_items(qs, {q.id: "" for q in qs})
    h = {"Authorization": f"Bearer {store.add_annotator('ann')}"}
    client = TestClient(create_app(db))
    answers = [client.get("/api/me", headers=h), client.get("/api/me"), client.get("/api/items/9", headers=h),
               client.get("/api/items/0", headers=h), client.get("/api/export", headers=h),
               client.put(f"/api/annotations/{qs[0].id}", headers=h, json={"verdict": "x"}),
               client.put(f"/api/annotations/{qs[0].id}", headers=h, content=b"x" * 100_000)]  # fmt: skip
    assert [r.status_code for r in answers] == [200, 401, 404, 200, 403, 422, 413]
    assert all(r.headers["cache-control"] == "no-store" for r in answers)


def test_favicon_and_the_conflict_message_for_an_abstention(tmp_path, excerpt_questions):
    db = tmp_path / "fb.sqlite"
    store = Store(db)
    qs = excerpt_questions[:1]
    store.add_items(qs, {qs[0].id: ""})
    h = {"Authorization": f"Bearer {store.add_annotator('ann')}"}
    client = TestClient(create_app(db))
    icon = client.get("/favicon.ico")
    assert icon.status_code == 200 and icon.headers["content-type"].startswith("image/svg+xml")
    r = client.put(f"/api/annotations/{qs[0].id}", headers=h, json={"verdict": "correct", "feedback": "ok",
                                                                    "predicted": "Rollo"})  # fmt: skip
    assert r.status_code == 409
    assert "its answer is now '' (an abstention: no answer), not 'Rollo'" in r.json()["detail"]


def test_me_resumes_at_the_next_item_to_do(tmp_path, excerpt_questions):
    db = tmp_path / "fb.sqlite"
    store = Store(db)
    qs = excerpt_questions[:3]
    store.add_items(qs, {q.id: "" for q in qs})
    h = {"Authorization": f"Bearer {store.add_annotator('ann')}"}
    client = TestClient(create_app(db))
    assert client.get("/api/me", headers=h).json()["resume"] == 0
    client.put(f"/api/annotations/{qs[0].id}", headers=h, json={"verdict": "correct", "feedback": "ok"})
    client.get("/api/items/0", headers=h)  # looking at the saved item again
    me = client.get("/api/me", headers=h).json()
    assert (me["position"], me["resume"]) == (0, 1)


def test_guideline_links_open_in_a_new_tab_and_tables_render():
    from laffi.server.app import render_guidelines

    out = render_guidelines("[paper](https://x.org) [below](#keys)\n\n| a | b |\n|---|---|\n| 1 | 2 |\n")
    assert '<a target="_blank" rel="noopener noreferrer" href="https://x.org">' in out
    assert '<a href="#keys">' in out and "<table>" in out and "<td>2</td>" in out
