"""Disagreements, adjudication, item history, time per item and the right answer in the export: the store, the API
(FastAPI TestClient) and `laffi annotate export`."""

import json
import sqlite3

import pytest
from fastapi.testclient import TestClient

from laffi.cli import main
from laffi.errors import LaffiError
from laffi.server.app import create_app
from laffi.server.store import Store

RIGHT = ' The right answer is "Rollo".'


@pytest.fixture()
def store(tmp_path, excerpt_questions):
    s = Store(tmp_path / "fb.sqlite")
    qs = excerpt_questions[:3]
    s.add_items(qs, {q.id: "Rollo" for q in qs})
    for name in ("amy", "ben", "cat"):
        s.add_annotator(name)
    s.add_annotator("boss", admin=True)
    yield s
    s.close()


def judge(store, qs, verdicts: dict[str, list[str]]) -> None:
    """Each annotator's verdicts on the items, in order ('' leaves an item unannotated)."""
    for name, vs in verdicts.items():
        for q, v in zip(qs, vs, strict=False):
            if v:
                store.save(name, q.id, v, f"{name} says {v}." + RIGHT, 7.0)


def test_disagreements_list_the_answers_judged_with_different_verdicts_side_by_side(store, excerpt_questions):
    qs = excerpt_questions[:3]
    judge(store, qs, {"amy": ["correct", "correct", "correct"], "ben": ["incorrect", "correct", ""]})
    store.save("cat", qs[0].id, "", "", 2.0, status="skipped", note="passage garbled")
    (d,) = store.disagreements()  # q1: both correct, q2: one annotator
    assert (d["id"], d["predicted"], d["question"], d["current_answer"], d["disagree"]) == (
        qs[0].id, "Rollo", qs[0].question, True, True)  # fmt: skip
    assert [(a["annotator"], a["verdict"], a["status"]) for a in d["annotations"]] == [
        ("amy", "correct", "annotated"), ("ben", "incorrect", "annotated"), ("cat", "", "skipped")]  # fmt: skip
    assert d["annotations"][0]["feedback"] == "amy says correct." + RIGHT and d["adjudication"] is None
    # An unsure verdict counts; annotations of an item's earlier content do not.
    store.save("ben", qs[2].id, "incorrect", "Not sure." + RIGHT, 1.0, status="unsure")
    assert [d["id"] for d in store.disagreements()] == [qs[0].id, qs[2].id]


def test_an_adjudicated_record_replaces_the_disagreeing_annotations_in_the_export(store, excerpt_questions):
    qs = excerpt_questions[:3]
    judge(store, qs, {"amy": ["correct", "correct"], "ben": ["incorrect", "correct"]})
    before = store.export()
    assert [(r.id, r.annotator) for r in before] == [(qs[0].id, "human:amy"), (qs[0].id, "human:ben"),
                                                     (qs[1].id, "human:amy"), (qs[1].id, "human:ben")]  # fmt: skip
    store.adjudicate("boss", qs[0].id, "Rollo", "incorrect", "ben is right: the passage names another." + RIGHT)
    after = store.export()
    assert [(r.id, r.annotator, r.verdict) for r in after] == [
        (qs[0].id, "human:boss", "incorrect"), (qs[1].id, "human:amy", "correct"),
        (qs[1].id, "human:ben", "correct")]  # fmt: skip
    final = after[0]
    assert final.feedback == "ben is right: the passage names another." + RIGHT
    assert final.predicted_answer == "Rollo" and final.question == qs[0].question
    assert final.meta["provenance"] == "adjudicated by boss"
    assert final.meta["adjudication"] == {"by": "boss", "annotations": [
        {"annotator": "human:amy", "verdict": "correct", "status": "annotated"},
        {"annotator": "human:ben", "verdict": "incorrect", "status": "annotated"}]}  # fmt: skip
    assert final.meta["seconds"] == 14.0 and final.meta["right_answer"] == "Rollo"
    assert after[1:] == before[2:]  # the items without adjudication export as before
    assert [r.annotator for r in store.export("ben")] == ["human:ben", "human:ben"]  # one annotator's own work
    # Adjudicating again replaces the final record; it stays one record.
    store.adjudicate("boss", qs[0].id, "Rollo", "correct", "amy is right." + RIGHT)
    assert [(r.annotator, r.verdict) for r in store.export() if r.id == qs[0].id] == [("human:boss", "correct")]
    (d,) = store.disagreements()
    assert d["adjudication"]["verdict"] == "correct" and d["adjudication"]["admin"] == "boss"


def test_adjudication_checks_the_answer_and_the_judgement(store, excerpt_questions):
    qs = excerpt_questions[:3]
    judge(store, qs, {"amy": ["correct"], "ben": ["incorrect"]})
    with pytest.raises(LaffiError, match="no annotations of the answer 'Paris'"):
        store.adjudicate("boss", qs[0].id, "Paris", "correct", "x" + RIGHT)
    with pytest.raises(LaffiError, match="unknown item"):
        store.adjudicate("boss", "nope", "Rollo", "correct", "x" + RIGHT)
    with pytest.raises(LaffiError, match="verdict must be"):
        store.adjudicate("boss", qs[0].id, "Rollo", "maybe", "x" + RIGHT)
    with pytest.raises(LaffiError, match="feedback is empty"):
        store.adjudicate("boss", qs[0].id, "Rollo", "correct", "  ")
    assert store.disagreements()[0]["adjudication"] is None


def test_adjudication_of_an_earlier_content_is_not_exported_as_the_new_item(store, excerpt_questions, tmp_path):
    qs = excerpt_questions[:3]
    judge(store, qs, {"amy": ["correct"], "ben": ["incorrect"]})
    store.adjudicate("boss", qs[0].id, "Rollo", "incorrect", "ben is right." + RIGHT)
    changed = [qs[0].__class__(**{**qs[0].__dict__, "question": "Another question?"}), *qs[1:]]
    store.add_items(changed, {q.id: "Rollo" for q in changed})
    assert store.export() == [] and store.disagreements() == []


def test_the_export_gives_the_right_answer_as_its_own_field(store, excerpt_questions):
    qs = excerpt_questions[:3]
    store.save("amy", qs[0].id, "incorrect", 'The passage says so. The right answer is "Rollo the Viking".', 3.0)
    store.save("amy", qs[1].id, "incorrect", "Nothing answers it. The right answer is unanswerable.", 3.0)
    store.save("amy", qs[2].id, "", "", 3.0, status="skipped", note="garbled")
    records = store.export(include_skipped=True)
    assert [r.meta.get("right_answer") for r in records] == ["Rollo the Viking", "", None]
    assert "right_answer" not in records[2].meta


def test_history_shows_earlier_answers_and_content_own_to_an_annotator_and_everyones_to_an_admin(
    store, excerpt_questions
):  # fmt: skip
    qs = excerpt_questions[:3]
    judge(store, qs, {"amy": ["correct"], "ben": ["incorrect"]})
    assert store.history(qs[0].id, "amy") == []  # the current annotation is on the form, not in the history
    store.add_items(qs, {q.id: "Normandy" for q in qs})  # new predictions: a new answer to judge
    store.save("amy", qs[0].id, "incorrect", "Now wrong." + RIGHT, 4.0)
    (h,) = store.history(qs[0].id, "amy")
    assert (h["annotator"], h["predicted"], h["verdict"], h["current_answer"], h["current_content"]) == (
        "amy", "Rollo", "correct", False, True)  # fmt: skip
    changed = [qs[0].__class__(**{**qs[0].__dict__, "question": "Another question?"}), *qs[1:]]
    store.add_items(changed, {q.id: "Normandy" for q in qs})
    assert [(h["predicted"], h["current_content"]) for h in store.history(qs[0].id, "amy")] == [
        ("Normandy", False), ("Rollo", False)]  # fmt: skip
    everyone = store.history(qs[0].id, "boss", everyone=True)
    assert sorted((h["annotator"], h["predicted"]) for h in everyone) == [("amy", "Normandy"), ("amy", "Rollo"),
                                                                          ("ben", "Rollo")]  # fmt: skip


def test_time_per_item_per_annotator_in_the_admin_summary(store, excerpt_questions):
    qs = excerpt_questions[:3]
    store.save("amy", qs[0].id, "correct", "a" + RIGHT, 10.0)
    store.save("amy", qs[0].id, "correct", "a" + RIGHT, 5.0)  # a second visit adds up
    store.save("amy", qs[1].id, "correct", "b" + RIGHT, 30.0)
    store.save("amy", qs[2].id, "", "", 60.0, status="skipped", note="garbled")
    store.save("ben", qs[0].id, "correct", "c" + RIGHT, 4.0)
    times = {a["name"]: a["time"] for a in store.summary()["annotators"]}
    assert times["amy"] == {"items": 3, "seconds": 105.0, "mean": 35.0, "median": 30.0}
    assert times["ben"] == {"items": 1, "seconds": 4.0, "mean": 4.0, "median": 4.0}
    assert times["cat"] is None


def test_the_api_lists_disagreements_adjudicates_and_shows_history(store, excerpt_questions, tmp_path):
    qs = excerpt_questions[:3]
    judge(store, qs, {"amy": ["correct"], "ben": ["incorrect"]})
    amy, boss = store.reset_token("amy"), store.reset_token("boss")
    client = TestClient(create_app(tmp_path / "fb.sqlite"))
    ha, hb = {"Authorization": f"Bearer {amy}"}, {"Authorization": f"Bearer {boss}"}
    assert client.get("/api/admin/disagreements", headers=ha).status_code == 403
    (d,) = client.get("/api/admin/disagreements", headers=hb).json()["disagreements"]
    assert [a["annotator"] for a in d["annotations"]] == ["amy", "ben"]
    body = {"predicted": "Rollo", "verdict": "incorrect", "feedback": "Final." + RIGHT}
    url = "/api/admin/adjudications/" + qs[0].id
    assert client.put(url, headers=ha, json=body).status_code == 403
    r = client.put(url, headers=hb, json=body)
    assert r.status_code == 200 and r.json() == {"adjudicated": qs[0].id, "by": "boss"}
    bad = client.put(url, headers=hb, json={**body, "predicted": "Paris"})
    assert bad.status_code == 422 and "no annotations of the answer" in bad.json()["detail"]
    assert client.put("/api/admin/adjudications/nope", headers=hb, json=body).status_code == 404
    assert client.put(url, headers=hb, json={**body, "extra": 1}).status_code == 422
    lines = client.get("/api/export", headers=hb).text.splitlines()
    (record,) = map(json.loads, lines)
    assert (record["annotator"], record["verdict"], record["meta"]["right_answer"]) == ("human:boss", "incorrect",
                                                                                        "Rollo")  # fmt: skip
    assert client.get("/api/history/" + qs[0].id, headers=ha).json() == {"history": []}
    seen = client.get("/api/history/" + qs[0].id, headers=hb).json()["history"]
    assert sorted(h["annotator"] for h in seen) == ["amy", "ben"]
    assert client.get("/api/history/nope", headers=ha).status_code == 404
    times = {a["name"]: a["time"] for a in client.get("/api/admin/summary", headers=hb).json()["annotators"]}
    assert times["amy"]["seconds"] == 7.0


def test_laffi_annotate_export_gives_the_adjudicated_record(store, excerpt_questions, tmp_path):
    qs = excerpt_questions[:3]
    judge(store, qs, {"amy": ["correct", "correct"], "ben": ["incorrect"]})
    store.adjudicate("boss", qs[0].id, "Rollo", "incorrect", "Final." + RIGHT)
    store.close()
    out = tmp_path / "out.jsonl"
    main(["annotate", "export", "--db", str(tmp_path / "fb.sqlite"), "--out", str(out)])
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(r["id"], r["annotator"], r["verdict"]) for r in records] == [(qs[0].id, "human:boss", "incorrect"),
                                                                          (qs[1].id, "human:amy", "correct")]
    assert records[0]["meta"]["provenance"] == "adjudicated by boss"
    with sqlite3.connect(tmp_path / "fb.sqlite") as con:  # the annotations themselves are kept
        assert con.execute("SELECT COUNT(*) FROM annotations").fetchone()[0] == 3
