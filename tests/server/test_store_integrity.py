"""The annotation database keeps what was judged, whole: an annotation stays bound to the answer it judged, imports
are all-or-nothing and idempotent, times are finite and bounded, the .sqlite file alone holds everything once the
server has stopped, and every bad --db / --file / --annotator / --port is one line on stderr and exit code 2 with
nothing created or changed."""

from __future__ import annotations

import contextlib
import json
import shutil
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from integration.server_helper import annotation_server  # tests/ is on sys.path (tests/server is a package)

from laffi.data import write_squad
from laffi.errors import LaffiError
from laffi.server.app import create_app
from laffi.server.imports import MAX_SECONDS
from laffi.server.store import Store, StoreUnavailable


def laffi(*args: object) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "laffi", *map(str, args)], capture_output=True, text=True,
                          timeout=120)  # fmt: skip


def one_line_error(r: subprocess.CompletedProcess, *expected: str) -> str:
    """The command failed the laffi way: exit code 2, one line `laffi: error: ...` holding each expected part."""
    assert r.returncode == 2, (r.returncode, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("laffi: error: "), r.stderr
    for part in expected:
        assert part in lines[0], lines[0]
    return lines[0]


@pytest.fixture()
def qs(excerpt_questions):
    return excerpt_questions[:4]


@pytest.fixture()
def db(tmp_path, qs) -> Path:
    """A database with four items (answer 'France') and one annotator, alice."""
    path = tmp_path / "fb.sqlite"
    store = Store(path)
    store.add_items(qs, {q.id: "France" for q in qs})
    store.add_annotator("alice")
    store.close()
    return path


def exported(path: Path, annotator: str | None = None) -> list:
    store = Store(path, create=False)
    try:
        return store.export(annotator)
    finally:
        store.close()


# ---------------------------------------------------------------------------------------- 1: bound to the answer


def test_a_verdict_stays_bound_to_the_answer_it_judged(db, qs):
    store = Store(db)
    store.save("alice", qs[0].id, "correct", "Yes, France.", 5)
    store.add_items(qs, {q.id: "Germany" for q in qs})  # the server restarted with other predictions
    [old] = store.export()
    assert (old.predicted_answer, old.verdict, old.feedback) == ("France", "correct", "Yes, France.")
    # The new answer is a new thing to judge: not shown as annotated, not counted as done.
    assert store.annotation("alice", qs[0].id) is None and store.progress("alice")["done"] == 0
    store.save("alice", qs[0].id, "incorrect", "Not Germany.", 3)
    assert [(r.predicted_answer, r.verdict) for r in store.export()] == [("France", "correct"),
                                                                         ("Germany", "incorrect")]  # fmt: skip
    assert store.annotation("alice", qs[0].id)["verdict"] == "incorrect"
    # A save naming the answer the page showed is refused once the answer has changed.
    with pytest.raises(LaffiError, match="its answer is now 'Germany', not 'France'"):
        store.save("alice", qs[1].id, "correct", "Yes.", 1, predicted="France")
    store.close()


def test_the_page_cannot_save_a_verdict_on_an_answer_it_did_not_show(db, qs):
    store = Store(db)
    token = store.add_annotator("bob")
    client = TestClient(create_app(db))
    h = {"Authorization": f"Bearer {token}"}
    shown = client.get("/api/items/0", headers=h).json()
    assert shown["predicted"] == "France"
    store.add_items(qs, {q.id: "Germany" for q in qs})
    body = {"verdict": "correct", "feedback": "Right.", "predicted": shown["predicted"]}
    r = client.put(f"/api/annotations/{shown['id']}", headers=h, json=body)
    assert r.status_code == 409 and "its answer is now 'Germany'" in r.json()["detail"]
    assert store.export() == []
    r = client.put(f"/api/annotations/{shown['id']}", headers=h, json={**body, "predicted": "Germany"})
    assert r.status_code == 200 and [a.predicted_answer for a in store.export()] == ["Germany"]
    page = (Path(__file__).parents[2] / "laffi" / "server" / "static" / "index.html").read_text()
    assert "predicted: item.predicted" in page  # the page sends the answer it showed


def test_restarting_the_server_with_other_predictions_keeps_verdicts_on_their_answers(tmp_path, qs):
    data, db = tmp_path / "squad.json", tmp_path / "fb.sqlite"
    write_squad(qs, data)
    preds = tmp_path / "p1.json"
    preds.write_text(json.dumps({q.id: "France" for q in qs}))
    token = laffi("annotators", "add", "alice", "--db", db).stdout.strip()
    with annotation_server(data, preds, db, tmp_path / "log1.txt") as (url, _pid):
        put(url, qs[0].id, token, {"verdict": "correct", "feedback": "Yes, France."})
    preds.write_text(json.dumps({q.id: "Germany" for q in qs}))
    with annotation_server(data, preds, db, tmp_path / "log2.txt") as (url, _pid):
        item = json.load(urllib.request.urlopen(auth(url + "api/items/0", token)))
        assert item["predicted"] == "Germany" and item["annotation"] is None
    out = tmp_path / "human.jsonl"
    assert laffi("annotate", "export", "--db", db, "--out", out).returncode == 0
    [record] = [json.loads(line) for line in out.read_text().splitlines()]
    assert (record["predicted_answer"], record["verdict"]) == ("France", "correct")


def test_a_database_from_before_answers_were_stored_keeps_its_annotations(tmp_path, qs):
    path = tmp_path / "v1.sqlite"
    con = sqlite3.connect(path)
    con.executescript("""
        CREATE TABLE items (id TEXT PRIMARY KEY, position INTEGER NOT NULL, title TEXT NOT NULL, context TEXT NOT NULL,
            question TEXT NOT NULL, predicted TEXT NOT NULL, gold TEXT NOT NULL, answer_starts TEXT NOT NULL);
        CREATE TABLE annotators (name TEXT PRIMARY KEY, token_sha256 TEXT UNIQUE, is_admin INTEGER NOT NULL DEFAULT 0,
            created REAL NOT NULL);
        CREATE TABLE annotations (annotator TEXT NOT NULL REFERENCES annotators(name), item_id TEXT NOT NULL
            REFERENCES items(id), verdict TEXT NOT NULL, feedback TEXT NOT NULL, seconds REAL NOT NULL DEFAULT 0,
            created REAL NOT NULL, updated REAL NOT NULL, PRIMARY KEY (annotator, item_id));
        INSERT INTO items VALUES ('q1', 0, 'T', 'France is big.', 'Where?', 'France', '["France"]', '[0]');
        INSERT INTO annotators VALUES ('alice', NULL, 0, 0);
        INSERT INTO annotations VALUES ('alice', 'q1', 'correct', 'Yes.', 4, 0, 0);
    """)
    con.commit()
    con.close()
    [r] = exported(path)
    assert (r.id, r.predicted_answer, r.verdict, r.meta["seconds"]) == ("q1", "France", "correct", 4)


# ---------------------------------------------------------------------------------------- 2-4: import


def test_importing_the_same_csv_twice_is_the_same_as_once(db, qs, tmp_path):
    csv_file = tmp_path / "fb.csv"
    csv_file.write_text(f"id,verdict,feedback,annotator,seconds\n{qs[0].id},correct,Yes.,carol,42\n")
    for _ in range(2):
        r = laffi("annotate", "import", "--db", db, "--file", csv_file)
        assert r.returncode == 0, r.stderr
    assert [(a.annotator, a.meta["seconds"]) for a in exported(db)] == [("human:carol", 42.0)]


@pytest.mark.parametrize("kind", ["csv", "jsonl"])
def test_a_bad_row_3_imports_nothing(db, qs, tmp_path, kind):
    rows = [(q.id, "correct", "Fine.", "carol", s) for q, s in zip(qs[:3], [1, 2, "abc"], strict=True)]
    if kind == "csv":
        path = tmp_path / "fb.csv"
        path.write_text("id,verdict,feedback,annotator,seconds\n" + "".join(",".join(map(str, r)) + "\n" for r in rows))
        field = "seconds"
    else:
        path = tmp_path / "fb.jsonl"
        path.write_text("".join(json.dumps({"id": i, "question": "q", "context": "c", "predicted_answer": "France",
                                            "gold_answers": [], "verdict": v, "feedback": f, "annotator": a,
                                            "template_version": "t", "meta": {"seconds": s}}) + "\n"
                                for i, v, f, a, s in rows))  # fmt: skip
        field = "meta.seconds"
    line = one_line_error(laffi("annotate", "import", "--db", db, "--file", path), str(path), field, "abc")
    assert f"{path}: row 3 ('{qs[2].id}')" in line or f"{path}:3:" in line, line  # JSONL: read_jsonl may say it
    assert exported(db) == []


def test_an_import_that_fails_while_writing_leaves_nothing_written(db, qs, tmp_path, monkeypatch):
    """Rows are written in one transaction: a failure at the second row undoes the first."""
    path = tmp_path / "fb.csv"
    path.write_text("id,verdict,feedback,annotator\n" + "".join(f"{q.id},correct,Yes.,carol\n" for q in qs[:3]))
    store = Store(db)
    calls = []

    def fail_second(name: str) -> None:
        calls.append(name)
        if len(calls) == 2:
            raise sqlite3.OperationalError("disk I/O error")
        store.db.execute("INSERT OR IGNORE INTO annotators (name, created) VALUES (?,0)", (name,))

    monkeypatch.setattr(store, "_ensure_annotator", fail_second)
    with pytest.raises(StoreUnavailable, match="fb.sqlite: cannot write .disk I/O error"):
        store.import_file(path)
    assert store.export() == [] and "carol" not in store.annotator_names()


@pytest.mark.parametrize("seconds", ["inf", "nan", "-inf", "1e308", str(MAX_SECONDS + 1), "-1"])
def test_import_refuses_non_finite_or_absurd_seconds(db, qs, tmp_path, seconds):
    path = tmp_path / "fb.csv"
    path.write_text(f"id,verdict,feedback,annotator,seconds\n{qs[0].id},correct,Yes.,carol,{seconds}\n")
    r = laffi("annotate", "import", "--db", db, "--file", path)
    one_line_error(r, f"{path}: row 1 ('{qs[0].id}'): seconds: {seconds} is not between 0 and 86400 seconds")
    assert exported(db) == []


@pytest.mark.parametrize("seconds", [float("inf"), float("nan"), 1e308, MAX_SECONDS + 1])
def test_the_store_refuses_non_finite_or_absurd_seconds(db, qs, seconds):
    store = Store(db)
    with pytest.raises(LaffiError, match="seconds: .* is not between 0 and 86400"):
        store.save("alice", qs[0].id, "correct", "Yes.", seconds)
    assert store.export() == []


def test_time_summed_over_visits_stays_bounded(db, qs):
    store = Store(db)
    for _ in range(3):
        store.save("alice", qs[0].id, "correct", "Yes.", MAX_SECONDS)
    [r] = store.export()
    assert r.meta["seconds"] == MAX_SECONDS


def test_the_api_refuses_an_absurd_time_and_the_export_stays_json(db, qs):
    store = Store(db)
    token = store.add_annotator("bob", admin=True)
    client = TestClient(create_app(db))
    h = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    for raw in ("1e308", "1e400", "Infinity", str(MAX_SECONDS + 1)):
        body = '{"verdict": "correct", "feedback": "ok", "seconds": ' + raw + "}"
        r = client.put(f"/api/annotations/{qs[0].id}", headers=h, content=body)
        assert r.status_code == 422 and r.json()["detail"].startswith("seconds: "), (raw, r.text)
    for _ in range(2):  # at the limit twice: the total is capped, not summed past it
        body = {"verdict": "correct", "feedback": "ok", "seconds": MAX_SECONDS}
        assert client.put(f"/api/annotations/{qs[0].id}", headers=h, json=body).status_code == 200
    text = client.get("/api/export", headers=h).text
    assert json.loads(text, parse_constant=lambda c: pytest.fail(f"not JSON: {c}"))["meta"]["seconds"] == MAX_SECONDS


# ---------------------------------------------------------------------------------------- 5: checkpoints


def put(url: str, item_id: str, token: str, body: dict) -> dict:
    from urllib.parse import quote

    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    req = urllib.request.Request(f"{url}api/annotations/{quote(item_id, safe='')}", method="PUT",
                                 data=json.dumps(body).encode(), headers=headers)  # fmt: skip
    return json.load(urllib.request.urlopen(req, timeout=10))


def auth(url: str, token: str) -> urllib.request.Request:
    return urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})


def test_after_the_server_stops_the_sqlite_file_alone_holds_every_annotation(tmp_path, qs):
    data, db = tmp_path / "squad.json", tmp_path / "fb.sqlite"
    write_squad(qs, data)
    preds = tmp_path / "preds.json"
    preds.write_text(json.dumps({q.id: "France" for q in qs}))
    token = laffi("annotators", "add", "alice", "--db", db).stdout.strip()
    with annotation_server(data, preds, db, tmp_path / "log.txt") as (url, _pid):
        put(url, qs[1].id, token, {"verdict": "incorrect", "feedback": "Not France.", "seconds": 7})
    copy = tmp_path / "copy" / "fb.sqlite"
    copy.parent.mkdir()
    shutil.copyfile(db, copy)  # the .sqlite file only: no -wal, no -shm
    out = tmp_path / "human.jsonl"
    r = laffi("annotate", "export", "--db", copy, "--out", out)
    assert r.returncode == 0, r.stderr
    assert [(d["id"], d["feedback"]) for d in map(json.loads, out.read_text().splitlines())] == [
        (qs[1].id, "Not France.")]


def test_while_the_server_runs_it_checkpoints_every_few_seconds(db, qs, tmp_path):
    token = Store(db).add_annotator("bob")
    with TestClient(create_app(db, checkpoint_every_s=0.1)) as client:  # `with`: runs the app's lifespan
        r = client.put(f"/api/annotations/{qs[0].id}", headers={"Authorization": f"Bearer {token}"},
                       json={"verdict": "correct", "feedback": "Yes."})  # fmt: skip
        assert r.status_code == 200
        copy = tmp_path / "copy.sqlite"
        deadline = time.time() + 10
        while True:
            shutil.copyfile(db, copy)
            if len(exported(copy)) == 1 or time.time() > deadline:
                break
            copy.unlink()
            time.sleep(0.1)
        assert [a.feedback for a in exported(copy)] == ["Yes."]


# ---------------------------------------------------------------------------------------- 6-7: routes


def test_an_item_id_with_a_slash_can_be_saved(tmp_path, qs):
    from dataclasses import replace

    db = tmp_path / "fb.sqlite"
    store = Store(db)
    item = replace(qs[0], id="a/b?c#d")
    store.add_items([item], {item.id: "France"})
    token = store.add_annotator("alice")
    client = TestClient(create_app(db))
    r = client.put("/api/annotations/a%2Fb%3Fc%23d", headers={"Authorization": f"Bearer {token}"},
                   json={"verdict": "correct", "feedback": "Yes."})  # fmt: skip
    assert r.status_code == 200, r.text
    assert [a.id for a in store.export()] == ["a/b?c#d"]
    page = (Path(__file__).parents[2] / "laffi" / "server" / "static" / "index.html").read_text()
    assert '"/api/annotations/" + encodeURIComponent(item.id)' in page


@pytest.mark.parametrize("path", ["/openapi.json", "/docs", "/redoc", "/docs/oauth2-redirect"])
def test_the_app_does_not_describe_its_api(db, path):
    store = Store(db)
    admin = store.add_annotator("boss", admin=True)
    client = TestClient(create_app(db))
    for headers in ({}, {"Authorization": f"Bearer {admin}"}):
        assert client.get(path, headers=headers).status_code == 404


# ---------------------------------------------------------------------------------------- 8-12: CLI inputs


def test_a_refused_annotator_name_creates_no_database(tmp_path):
    db = tmp_path / "new.sqlite"
    one_line_error(laffi("annotators", "add", "a b", "--db", db), "annotator name 'a b'")
    assert list(tmp_path.iterdir()) == []


def test_a_busy_port_is_a_one_line_error(tmp_path, qs):
    data, db = tmp_path / "squad.json", tmp_path / "fb.sqlite"
    write_squad(qs, data)
    preds = tmp_path / "preds.json"
    preds.write_text(json.dumps({q.id: "France" for q in qs}))
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        r = laffi("annotate-server", "--data", data, "--predictions", preds, "--db", db, "--port", port)
    assert one_line_error(r) == f"laffi: error: --port: 127.0.0.1:{port} is already in use"
    assert not db.exists()


def test_export_takes_the_human_prefix_and_refuses_an_unknown_annotator(db, qs, tmp_path):
    store = Store(db)
    store.add_annotator("bob")
    store.save("alice", qs[0].id, "correct", "Yes.", 1)
    store.close()
    out = tmp_path / "out.jsonl"
    assert laffi("annotate", "export", "--db", db, "--out", out, "--annotator", "human:alice").returncode == 0
    assert [json.loads(line)["annotator"] for line in out.read_text().splitlines()] == ["human:alice"]
    out.unlink()
    one_line_error(laffi("annotate", "export", "--db", db, "--out", out, "--annotator", "nobody"),
                   "no annotator 'nobody'", "known: alice, bob")  # fmt: skip
    assert not out.exists()


def test_export_and_import_leave_a_sqlite_file_of_another_program_unchanged(tmp_path):
    other = tmp_path / "other.sqlite"
    con = sqlite3.connect(other)
    con.execute("CREATE TABLE notes (text TEXT)")
    con.commit()
    con.close()
    before = other.read_bytes()
    feedback = tmp_path / "fb.csv"
    feedback.write_text("id,verdict,feedback\nq,correct,x\n")
    for args in (["export", "--out", tmp_path / "o.jsonl"], ["import", "--file", feedback, "--annotator", "x"]):
        r = laffi("annotate", args[0], "--db", other, *args[1:])
        one_line_error(r, f"{other}: not a laffi annotation database")
    assert other.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["fb.csv", "other.sqlite"]


@contextlib.contextmanager
def read_only(folder: Path):
    """A folder no one may write, root included (the tests may run as root, whom chmod does not stop)."""
    if subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode != 0:
        pytest.skip("chattr +i is not available here")
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", str(folder)], check=True)


def db_commands(db: Path, tmp_path: Path) -> list[list]:
    feedback = tmp_path / "fb.csv"
    feedback.write_text("id,verdict,feedback\nq,correct,x\n")
    return [["annotators", "add", "alice", "--db", db],
            ["annotate", "export", "--db", db, "--out", tmp_path / "o.jsonl"],
            ["annotate", "import", "--db", db, "--file", feedback, "--annotator", "x"]]  # fmt: skip


def test_a_db_under_a_file_or_a_directory_as_db_is_a_one_line_error(tmp_path):
    a_file = tmp_path / "plain.txt"
    a_file.write_text("x")
    a_dir = tmp_path / "folder"
    a_dir.mkdir()
    for db, expect in [(a_file / "fb.sqlite", "plain.txt is a file, not a directory"),
                       (a_file / "sub" / "fb.sqlite", "plain.txt is a file, not a directory"),
                       (a_dir, "is a directory, expected a SQLite database file")]:  # fmt: skip
        for args in db_commands(db, tmp_path):
            one_line_error(laffi(*args), str(db), expect)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fb.csv", "folder", "plain.txt"]
    assert list(a_dir.iterdir()) == [] and a_file.read_text() == "x"


def test_a_db_in_a_read_only_directory_is_a_one_line_error(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    with read_only(folder):
        for db in (folder / "fb.sqlite", folder / "sub" / "fb.sqlite"):
            one_line_error(laffi("annotators", "add", "alice", "--db", db), str(db), "cannot write to the directory")
        assert list(folder.iterdir()) == []


def test_import_file_that_is_a_directory_or_not_utf8(db, tmp_path):
    for folder in (tmp_path / "dir.csv", tmp_path / "dir.jsonl"):
        folder.mkdir()
        one_line_error(laffi("annotate", "import", "--db", db, "--file", folder, "--annotator", "x"),
                       f"{folder}: is a directory")  # fmt: skip
    latin1 = tmp_path / "latin1.csv"
    latin1.write_bytes("id,verdict,feedback\nq,correct,Très bien\n".encode("latin-1"))
    offset = latin1.read_bytes().index(b"\xe8")
    one_line_error(laffi("annotate", "import", "--db", db, "--file", latin1, "--annotator", "x"),
                   f"{latin1}: not UTF-8 text (byte {offset})")  # fmt: skip
    assert exported(db) == []


def test_export_writes_csv_that_import_reads_back_and_takes_unsure_on_request(db, qs, tmp_path):
    store = Store(db)
    store.add_annotator("bob")
    store.save("alice", qs[0].id, "correct", 'Yes, "France", right.', 1)
    store.save("bob", qs[1].id, "incorrect", "No.", 2, status="unsure")
    store.close()
    csv_out, jsonl = tmp_path / "out.csv", tmp_path / "out.jsonl"
    assert laffi("annotate", "export", "--db", db, "--out", csv_out).returncode == 0
    lines = csv_out.read_text().splitlines()
    assert lines[0] == "id,verdict,feedback,annotator,seconds,predicted_answer,right_answer" and len(lines) == 2
    assert lines[1].startswith(f'{qs[0].id},correct,"Yes, ""France"", right.",human:alice,1')
    assert laffi("annotate", "export", "--db", db, "--out", jsonl, "--unsure").returncode == 0
    assert [json.loads(line)["id"] for line in jsonl.read_text().splitlines()] == [qs[0].id, qs[1].id]
    copy = tmp_path / "copy.sqlite"
    shutil.copy(db, copy)
    assert laffi("annotate", "import", "--db", copy, "--file", csv_out).returncode == 0
    one_line_error(laffi("annotate", "export", "--db", db, "--out", tmp_path / "out.txt"), "--out", ".jsonl")
    assert not (tmp_path / "out.txt").exists()
