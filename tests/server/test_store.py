"""The annotation store: WAL mode, hashed tokens, per-annotator work, time accumulated, export and import."""

import sqlite3

import pytest

from laffi.errors import LaffiError
from laffi.server.store import Store


@pytest.fixture()
def store(tmp_path, excerpt_questions):
    s = Store(tmp_path / "fb.sqlite")
    qs = excerpt_questions[:4]
    s.add_items(qs, {q.id: ("Rollo" if i % 2 else "") for i, q in enumerate(qs)})
    return s


def test_wal_and_hashed_tokens(store, tmp_path):
    assert store.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    token = store.add_annotator("ann")
    assert store.who(token) == {"name": "ann", "admin": False} and store.who("nope") is None
    raw = (tmp_path / "fb.sqlite").read_bytes() + (tmp_path / "fb.sqlite-wal").read_bytes()
    assert token.encode() not in raw  # only the hash is stored
    with pytest.raises(LaffiError, match="already exists"):
        store.add_annotator("ann")
    with pytest.raises(LaffiError, match="annotator name"):
        store.add_annotator("a b")


def test_annotations_are_per_annotator_and_time_adds_up(store, excerpt_questions):
    store.add_annotator("ann")
    store.add_annotator("bob")
    q0, q1 = excerpt_questions[0], excerpt_questions[1]
    store.save("ann", q0.id, "correct", "fine", 10.0)
    store.save("ann", q0.id, "incorrect", " edited ", 5.5)  # an edit: the text changes, the time adds up
    store.save("bob", q1.id, "incorrect", "no", 3.0)
    got = store.annotation("ann", q0.id)
    assert got.pop("version") > 0
    assert got == {"verdict": "incorrect", "feedback": "edited", "seconds": 15.5, "status": "annotated", "note": ""}
    assert store.annotation("bob", q0.id) is None and store.progress("ann") == {"done": 1, "total": 4}
    ann = store.export("ann")
    assert [(r.id, r.annotator, r.verdict, r.feedback, r.meta["seconds"]) for r in ann] == [
        (q0.id, "human:ann", "incorrect", "edited", 15.5)]
    assert ann[0].predicted_answer == "" and ann[0].gold_answers == q0.answers and ann[0].context == q0.context
    assert [r.annotator for r in store.export()] == ["human:ann", "human:bob"]
    for verdict, feedback, msg in [("maybe", "x", "verdict must be"), ("correct", "  ", "feedback is empty")]:
        with pytest.raises(LaffiError, match=msg):
            store.save("ann", q0.id, verdict, feedback, 1.0)
    with pytest.raises(LaffiError, match="unknown item"):
        store.save("ann", "no-such-id", "correct", "x", 1.0)


def test_import_csv_and_jsonl(store, excerpt_questions, tmp_path):
    q0, q1 = excerpt_questions[0], excerpt_questions[1]
    csv_file = tmp_path / "fb.csv"
    csv_file.write_text(f'id,verdict,feedback,annotator,seconds\n{q0.id},correct,"Right, as the passage says.",'
                        f"carol,42\n{q1.id},incorrect,Wrong.,human:dave,\n")  # fmt: skip
    assert store.import_file(csv_file) == 2
    got = {(r.id, r.annotator, r.feedback, r.meta["seconds"]) for r in store.export()}
    assert got == {(q0.id, "human:carol", "Right, as the passage says.", 42.0), (q1.id, "human:dave", "Wrong.", 0.0)}
    from laffi.files import write_jsonl

    jsonl = tmp_path / "fb.jsonl"
    write_jsonl(jsonl, store.export("carol"))
    assert store.import_file(jsonl, annotator="erin") == 1 and store.export("erin")[0].feedback.startswith("Right")
    bad = tmp_path / "bad.csv"
    bad.write_text("id,verdict,feedback\nno-such-id,correct,x\n")
    with pytest.raises(LaffiError, match=r"bad.csv: row 1 \('no-such-id'\): question id is not an item"):
        store.import_file(bad, annotator="x")
    bad.write_text("id,verdict\nq,correct\n")
    with pytest.raises(LaffiError, match="missing column 'feedback'"):
        store.import_file(bad)


def test_not_a_database(tmp_path):
    junk = tmp_path / "junk.sqlite"
    junk.write_text("this is not sqlite" * 100)
    with pytest.raises(LaffiError, match="junk.sqlite: not a laffi annotation database"):
        Store(junk)
    assert sqlite3.sqlite_version
