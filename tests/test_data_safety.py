"""The files people trust laffi with are never overwritten, re-pointed or left broken (docs/reliability.md, classes
1-5, 10, 12, 13): an output that is an input is refused, a database of another application is not written into, an
annotation stays bound to the question it judged, a blank CSV cell binds nothing, a name given twice is refused,
a read-only, locked or full database and a full disk or stdout are one line naming what failed, and an import file
that is a FIFO or a device is refused without reading it. Each refusal is exit code 2, one line, nothing changed."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from laffi.data import load_squad
from laffi.errors import LaffiError
from laffi.feedback import reference
from laffi.files import JsonlAppender, write_json, write_jsonl
from laffi.server.app import create_app, prepare
from laffi.server.store import APPLICATION_ID, Store

CORPUS = Path(__file__).parent / "bad_inputs"


def laffi(*args: object, stdout: int | None = subprocess.PIPE, timeout: float = 60) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "laffi", *map(str, args)], stdout=stdout, stderr=subprocess.PIPE,
                          text=True, timeout=timeout, env=env)  # fmt: skip


def one_line_error(r: subprocess.CompletedProcess, *expected: str) -> str:
    """Exit code 2 and one line `laffi: error: ...` holding each expected part."""
    assert r.returncode == 2, (r.returncode, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("laffi: error: "), r.stderr
    for part in expected:
        assert part in lines[0], lines[0]
    return lines[0]


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` (symlinks as their target's name) with its bytes: what must not change."""
    out = {}
    for p in sorted(folder.rglob("*")):
        key = str(p.relative_to(folder))
        if p.is_symlink():
            out[key] = f"-> {os.readlink(p)}".encode()
        elif p.is_file():
            out[key] = p.read_bytes()
        else:
            out[key] = b"<dir>"
    return out


@pytest.fixture()
def work(tmp_path: Path) -> Path:
    """good.json (q1 answer France, q2 impossible), its predictions, feedback on them, and a database with both
    items and an annotator."""
    shutil.copy(CORPUS / "good.json", tmp_path / "good.json")
    shutil.copy(CORPUS / "good_predictions.json", tmp_path / "preds.json")
    questions, preds = load_squad(tmp_path / "good.json"), json.loads((tmp_path / "preds.json").read_text())
    write_jsonl(tmp_path / "fb.jsonl", [reference.annotate(q, preds[q.id]) for q in questions])
    store = Store(tmp_path / "db.sqlite")
    store.add_items(questions, preds)
    store.add_annotator("alice")
    store.close()
    return tmp_path


# ---------------------------------------------------------------------------------------- 1: an output is an input

SAME_FILE_CASES = [
    # (arguments, words of the error); {w} is the work folder
    (["annotate", "export", "--db", "{w}/db.sqlite", "--out", "{w}/db.sqlite"], "is the same file as --db"),
    (["annotate", "export", "--db", "{w}/db.sqlite", "--out", "{w}/db-link.sqlite"], "is the same file as --db"),
    (["annotate", "export", "--db", "{w}/db.sqlite", "--out", "{w}/db.sqlite-wal"], "is the same file as --db"),
    (["annotate", "import", "--db", "{w}/fb.jsonl", "--file", "{w}/fb.jsonl"], "is the same file as --file"),
    (["annotators-compare", "--feedback", "a={w}/fb.jsonl", "--out", "{w}/fb.jsonl"],
     "is the same file as --feedback a="),
    (["annotators-compare", "--feedback", "a={w}/fb.jsonl", "--out", "{w}/fb-hardlink.jsonl"],
     "is the same file as --feedback a="),
    (["annotators-compare", "--feedback", "a={w}/fb.jsonl", "--ids-from", "{w}/good.json", "--out", "{w}/good.json"],
     "is the same file as --ids-from"),
    (["feedback-report", "--human", "{w}/fb.jsonl", "--ai", "{w}/fb.jsonl", "--out", "{w}/r.json", "--filtered-out",
      "{w}/r.json"], "is the same file as --out"),
    (["feedback-report", "--human", "{w}/fb.jsonl", "--ai", "{w}/fb.jsonl", "--filtered-out", "{w}/fb.jsonl"],
     "is the same file as --human"),
    (["annotate-server", "--data", "{w}/good.json", "--predictions", "{w}/preds.json", "--db", "{w}/preds.json"],
     "is the same file as --predictions"),
    (["annotate-server", "--data", "{w}/good.json", "--predictions", "{w}/preds.json", "--db", "{w}/db.sqlite",
      "--guidelines", "{w}/db.sqlite"], "is the same file as --guidelines"),
    (["answer", "--data", "{w}/good.json", "--out", "{w}/model.gguf", "--model", "{w}/model.gguf"],
     "is the same file as --model"),
    (["answer", "--data", "{w}/out.na_prob.json", "--out", "{w}/out.json"],
     "writes {w}/out.na_prob.json: is the same file as --data"),
    (["annotate", "--data", "{w}/good.json", "--predictions", "{w}/preds.json", "--out", "{w}/fb2.jsonl", "--examples",
      "{w}/fb2.failures.jsonl"], "writes {w}/fb2.failures.jsonl: is the same file as --examples"),
    (["run", "{w}/cfg/run.yaml", "--set", "out_dir={w}/cfg"], "holds the input the config"),
    (["run", "{w}/run.yaml", "--set", "out_dir={w}", "--set", "data.path={w}/good.json"], "holds the input"),
    (["experiment", "{w}/run.yaml", "--set", "out_dir={w}/data-dir/..", "--set", "data.path={w}/good.json"],
     "holds the input"),
    (["train", "--method", "sft", "--data", "{w}/adapter/good.json", "--out", "{w}/adapter"], "holds the input --data"),
    (["attention", "--data", "{w}/good.json", "--out", "{w}"], "holds the input --data"),
]  # fmt: skip


@pytest.mark.parametrize("args,expect", SAME_FILE_CASES, ids=lambda a: a if isinstance(a, str) else " ".join(a[:2]))
def test_an_output_that_is_an_input_is_refused_and_nothing_changes(work, args, expect):
    (work / "db-link.sqlite").symlink_to(work / "db.sqlite")
    os.link(work / "fb.jsonl", work / "fb-hardlink.jsonl")
    (work / "model.gguf").write_bytes(b"GGUF" + bytes(60))
    (work / "cfg").mkdir()
    (work / "cfg" / "run.yaml").write_text("methods: [base]\n")
    (work / "run.yaml").write_text("methods: [base]\n")
    (work / "data-dir").mkdir()
    (work / "adapter").mkdir()
    (work / "adapter" / "adapter_config.json").write_text("{}")
    shutil.copy(work / "good.json", work / "adapter" / "good.json")
    shutil.copy(work / "good.json", work / "out.na_prob.json")
    shutil.copy(work / "fb.jsonl", work / "fb2.failures.jsonl")
    before = snapshot(work)
    one_line_error(laffi(*(a.format(w=work) for a in args)), expect.format(w=work))
    assert snapshot(work) == before


# ---------------------------------------------------------------------------------------- 2: another application's db


def test_a_database_of_another_application_is_never_written(work, tmp_path):
    other = tmp_path / "other.sqlite"
    con = sqlite3.connect(other)
    con.execute("CREATE TABLE notes (text TEXT)")
    con.execute("INSERT INTO notes VALUES ('mine')")
    con.commit()
    con.close()
    marked = tmp_path / "marked.sqlite"  # another application that marks its files, with no tables yet
    con = sqlite3.connect(marked)
    con.execute("PRAGMA application_id=1234")
    con.close()
    not_sqlite = tmp_path / "notes.txt"
    not_sqlite.write_text("plain text, not a database\n" * 10)
    before = snapshot(tmp_path)
    for db, expect in [(other, "another application's; its tables: notes"), (marked, "application_id 1234"),
                       (not_sqlite, "not a SQLite file")]:  # fmt: skip
        one_line_error(laffi("annotators", "add", "bob", "--db", db), f"{db}: not a laffi annotation database", expect)
        one_line_error(laffi("annotate-server", "--data", work / "good.json", "--predictions", work / "preds.json",
                             "--db", db, "--port", free_port()), str(db), expect)  # fmt: skip
    assert snapshot(tmp_path) == before


def test_a_new_or_empty_file_becomes_a_marked_laffi_database(tmp_path):
    empty = tmp_path / "empty.sqlite"
    empty.touch()
    for db in (empty, tmp_path / "new.sqlite"):
        assert laffi("annotators", "add", "bob", "--db", db).returncode == 0
        con = sqlite3.connect(db)
        assert con.execute("PRAGMA application_id").fetchone()[0] == APPLICATION_ID
        con.close()
        assert laffi("annotators", "add", "carol", "--db", db).returncode == 0  # and it opens again


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------------------------------- 3: bound to the content


def changed(questions: list, **fields: str) -> list:
    from dataclasses import replace

    return [replace(questions[0], **fields), *questions[1:]]


def test_a_changed_question_under_the_same_id_is_a_new_item(tmp_path, excerpt_questions):
    qs = excerpt_questions[:3]
    preds = {q.id: "France" for q in qs}
    store = Store(tmp_path / "fb.sqlite")
    store.add_items(qs, preds)
    store.add_annotator("alice")
    store.save("alice", qs[0].id, "correct", "Yes, France.", 3)
    for new in (changed(qs, question="A different question?"), changed(qs, answers=["Spain"], answer_starts=[0])):
        store.add_items(new, preds)  # the server restarted with an edited data file
        assert store.refreshed["changed"] == 1
        assert store.export() == [], "an annotation of the old question is exported with the new one"
        assert store.annotation("alice", qs[0].id) is None and store.progress("alice")["done"] == 0
        store.save("alice", qs[0].id, "incorrect", "No.", 2)
        [record] = store.export()
        assert (record.question, record.gold_answers, record.verdict) == (new[0].question, new[0].answers, "incorrect")
        store.add_items(qs, preds)  # back to the original text: its own annotation again
        [record] = store.export()
        assert (record.question, record.verdict) == (qs[0].question, "correct")
    # the annotations of the other texts are kept, as history
    assert store.db.execute("SELECT COUNT(*) FROM annotations").fetchone()[0] == 3
    store.close()


def test_items_the_new_predictions_do_not_cover_are_no_longer_served(tmp_path, excerpt_questions):
    qs = excerpt_questions[:4]
    store = Store(tmp_path / "fb.sqlite")
    store.add_items(qs, {q.id: "France" for q in qs})
    store.add_annotator("alice")
    store.save("alice", qs[3].id, "correct", "Yes.", 1)
    store.add_items(qs, {q.id: "France" for q in qs[:2]})
    assert store.refreshed["dropped"] == 2 and store.item_count() == 2
    assert [s["id"] for s in store.statuses("alice")] == [q.id for q in qs[:2]]
    assert store.item(qs[3].id) is None and store.item_at(2) is None
    with pytest.raises(LaffiError, match="unknown item"):
        store.save("alice", qs[3].id, "correct", "Yes.", 1)
    assert [r.id for r in store.export()] == [qs[3].id]  # what was judged still exports
    store.close()
    app = create_app(tmp_path / "fb.sqlite", checkpoint_every_s=60, guidelines="")
    store = app.state.store
    token = store.reset_token("alice")
    with TestClient(app) as client:
        h = {"Authorization": f"Bearer {token}"}
        assert client.get("/api/items/2", headers=h).status_code == 404
        r = client.put(f"/api/annotations/{qs[2].id}", headers=h, json={"verdict": "correct", "feedback": "Yes."})
        assert r.status_code == 404


def test_a_jsonl_import_about_another_question_is_refused(work):
    record = json.loads((work / "fb.jsonl").read_text().splitlines()[0])
    record["question"] = "Some other question?"
    (work / "other.jsonl").write_text(json.dumps(record) + "\n")
    one_line_error(laffi("annotate", "import", "--db", work / "db.sqlite", "--file", work / "other.jsonl"),
                   "other.jsonl: row 1 ('q1')", "question, passage or gold answers differ")  # fmt: skip
    assert laffi("annotate", "import", "--db", work / "db.sqlite", "--file", work / "fb.jsonl").returncode == 0


def test_a_database_from_before_content_binding_keeps_its_annotations(tmp_path, excerpt_questions):
    """A database whose annotations have status columns but no content: each takes its item's content."""
    qs = excerpt_questions[:2]
    path = tmp_path / "v3.sqlite"
    store = Store(path)
    store.add_items(qs, {q.id: "France" for q in qs})
    store.add_annotator("alice")
    store.save("alice", qs[0].id, "correct", "Yes.", 1)
    store.close()
    con = sqlite3.connect(path, isolation_level=None)
    columns = "annotator, item_id, predicted, verdict, feedback, seconds, created, updated, status, note, " \
        "draft_shown, draft_accepted, draft_distance"
    con.executescript(f"""
        CREATE TABLE old AS SELECT {columns} FROM annotations; DROP TABLE annotations;
        CREATE TABLE annotations (annotator TEXT NOT NULL, item_id TEXT NOT NULL, predicted TEXT NOT NULL,
            verdict TEXT NOT NULL, feedback TEXT NOT NULL, seconds REAL NOT NULL DEFAULT 0, created REAL NOT NULL,
            updated REAL NOT NULL, status TEXT NOT NULL DEFAULT 'annotated', note TEXT NOT NULL DEFAULT '',
            draft_shown INTEGER NOT NULL DEFAULT 0, draft_accepted INTEGER NOT NULL DEFAULT 0, draft_distance INTEGER,
            PRIMARY KEY (annotator, item_id, predicted));
        INSERT INTO annotations SELECT * FROM old; DROP TABLE old; UPDATE items SET content = '';
        PRAGMA application_id=0;
    """)  # fmt: skip
    con.close()
    store = Store(path, create=False)
    [r] = store.export()
    assert (r.id, r.verdict) == (qs[0].id, "correct") and store.annotation("alice", qs[0].id)["verdict"] == "correct"
    store.close()


# ---------------------------------------------------------------------------------------- 4, 5


def test_a_blank_predicted_answer_cell_binds_nothing(work):
    db = work / "db.sqlite"
    blank = work / "blank.csv"
    blank.write_text("id,verdict,feedback,predicted_answer\nq2,correct,Rightly abstains.,\nq1,correct,Yes.,\n")
    before = db.read_bytes()
    one_line_error(laffi("annotate", "import", "--db", db, "--file", blank, "--annotator", "bob"),
                   f"{blank}: row 2 ('q1')", "predicted_answer is blank but the item's answer is 'France'")  # fmt: skip
    assert db.read_bytes() == before
    blank.write_text("id,verdict,feedback,predicted_answer\nq2,correct,Rightly abstains.,\nq1,correct,Yes.,France\n")
    assert laffi("annotate", "import", "--db", db, "--file", blank, "--annotator", "bob").returncode == 0
    store = Store(db, create=False)
    assert sorted((r.id, r.predicted_answer) for r in store.export()) == [("q1", "France"), ("q2", "")]
    store.close()


def test_the_same_annotator_name_twice_is_refused(work):
    shutil.copy(work / "fb.jsonl", work / "fb2.jsonl")
    r = laffi("annotators-compare", "--feedback", f"a={work / 'fb.jsonl'}", "--feedback", f"a={work / 'fb2.jsonl'}")
    one_line_error(r, "--feedback: the name 'a' is given twice")


# ---------------------------------------------------------------------------------------- 10: read-only or locked


@contextlib.contextmanager
def immutable(path: Path):
    """A file no one may write, root included (chattr +i; chmod does not stop root)."""
    if shutil.which("chattr") is None or subprocess.run(["chattr", "+i", str(path)], capture_output=True).returncode:
        pytest.skip("chattr +i is not available here")
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", str(path)], check=True)


def db_writers(work: Path) -> list[list]:
    (work / "import.csv").write_text("id,verdict,feedback\nq1,correct,Yes.\n")
    return [["annotators", "add", "bob", "--db", work / "db.sqlite"],
            ["annotate", "import", "--db", work / "db.sqlite", "--file", work / "import.csv", "--annotator", "bob"],
            ["annotate-server", "--data", work / "good.json", "--predictions", work / "preds.json", "--db",
             work / "db.sqlite", "--port", free_port()]]  # fmt: skip


def test_a_read_only_database_is_one_line(work):
    commands = db_writers(work)
    before = (work / "db.sqlite").read_bytes()
    with immutable(work / "db.sqlite"):
        for args in commands:
            one_line_error(laffi(*args), f"{work / 'db.sqlite'}: cannot write", "readonly database")
    assert (work / "db.sqlite").read_bytes() == before


def test_a_database_locked_by_another_program_is_one_line(work):
    commands = db_writers(work)
    con = sqlite3.connect(work / "db.sqlite", isolation_level=None)
    con.execute("BEGIN EXCLUSIVE")  # another program writing (SQLite's busy timeout, 5 s, then gives up)
    try:
        for args in commands:
            one_line_error(laffi(*args), f"{work / 'db.sqlite'}: cannot write (database is locked)")
    finally:
        con.execute("ROLLBACK")
        con.close()
    assert laffi("annotators", "list", "--db", work / "db.sqlite").stdout.split("\t")[0] == "alice"


# ---------------------------------------------------------------------------------------- 12: a full disk


@pytest.fixture()
def full_disk(tmp_path: Path):
    """A 256 KiB tmpfs (root only), and `fill()` to take all its free space."""
    mount = tmp_path / "disk"
    mount.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount)],
                                           capture_output=True).returncode:  # fmt: skip
        pytest.skip("needs root to mount a small tmpfs")

    def fill() -> None:
        fd = os.open(mount / "filler", os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        with contextlib.suppress(OSError):
            while True:
                os.write(fd, b"\0" * 1024)
        os.close(fd)

    try:
        yield mount, fill
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=True)


def test_stdout_on_a_full_device_is_one_line_and_adds_no_annotator(work):
    with open("/dev/full", "w") as full:
        one_line_error(laffi("score", work / "good.json", work / "preds.json", stdout=full), "stdout: cannot write",
                       "no space left")  # fmt: skip
        one_line_error(laffi("annotators", "add", "bob", "--db", work / "db.sqlite", stdout=full),
                       "stdout: cannot write")  # fmt: skip
    assert laffi("annotators", "list", "--db", work / "db.sqlite").stdout.count("\n") == 1  # alice only


def test_an_output_on_a_full_disk_is_one_line_and_leaves_nothing(work, full_disk):
    disk, fill = full_disk
    fill()
    out = disk / "new" / "deeper" / "fb.jsonl"
    one_line_error(laffi("annotate", "--data", work / "good.json", "--predictions", work / "preds.json", "--out", out),
                   str(disk), "no space left")  # fmt: skip
    with pytest.raises(LaffiError, match=f"{disk / 'a' / 'b.json'}: cannot write .no space left"):
        write_json(disk / "a" / "b.json", {"x": "y" * 10000})
    assert sorted(p.name for p in disk.iterdir()) == ["filler"], "a half-made folder or temporary file is left"


@dataclass
class Line:
    id: str
    answer: str


@pytest.mark.parametrize("command", ["answer", "run", "experiment"])
def test_a_command_on_a_full_disk_is_one_line_and_leaves_nothing(work, full_disk, tiny_model_dir, command):
    disk, fill = full_disk
    fill()
    (work / "run.yaml").write_text("methods: [base]\n")
    args = {"answer": ["answer", "--data", work / "good.json", "--out", disk / "sub" / "p.json", "--model",
                       tiny_model_dir, "--dtype", "float32"]}.get(command) or \
        [command, work / "run.yaml", "--set", f"out_dir={disk / 'run'}", "--set", f"model.name={tiny_model_dir}",
         "--set", "model.dtype=float32"]  # fmt: skip
    one_line_error(laffi(*args, "--no-progress", timeout=120), str(disk), "no space left")
    assert sorted(p.name for p in disk.iterdir()) == ["filler"], "a half-made folder or partial file is left"


def test_an_append_on_a_full_disk_keeps_whole_lines_only(full_disk):
    disk, fill = full_disk
    path = disk / "part" / "answers.jsonl"
    appender = JsonlAppender(path)
    appender.append(Line("q1", "France"))
    fill()
    with pytest.raises(LaffiError, match=f"{path}: cannot write .no space left"):
        for i in range(1000):
            appender.append(Line(f"q{i}", "x" * 3000))
    appender.close()
    text = path.read_text()  # the lines that fitted (in the file's last page), each whole; the torn one is gone
    assert text.startswith('{"id": "q1", "answer": "France"}\n') and text.endswith("\n")
    assert all(json.loads(line) for line in text.splitlines())
    (disk / "filler").unlink()
    empty = disk / "other" / "answers.jsonl"
    appender = JsonlAppender(empty)
    fill()
    with pytest.raises(LaffiError, match="no space left"):
        appender.append(Line("q1", "x" * 9000))
    assert not (disk / "other").exists(), "an appender that wrote no line leaves no file or folder"


def test_the_app_answers_507_when_its_database_disk_is_full(work, full_disk):
    disk, fill = full_disk
    db = disk / "fb.sqlite"
    prepare(db, load_squad(work / "good.json"), json.loads((work / "preds.json").read_text()), [], None, None, 0)
    store = Store(db)
    token = store.add_annotator("alice")
    store.close()
    app = create_app(db, checkpoint_every_s=0.05, guidelines="")
    with TestClient(app) as client:
        fill()
        h = {"Authorization": f"Bearer {token}"}
        r = client.put("/api/annotations/q1", headers=h, json={"verdict": "correct", "feedback": "Yes. " * 999})
        assert r.status_code == 507, r.text
        assert r.json()["detail"].startswith(f"{db}: cannot write") and "full" in r.json()["detail"]
        time.sleep(0.2)  # the checkpoint loop meets the full disk too, and keeps running
        (disk / "filler").unlink()
        r = client.put("/api/annotations/q1", headers=h, json={"verdict": "correct", "feedback": "Yes."})
        assert r.status_code == 200, r.text
    store = Store(db, create=False)
    assert [(r.id, r.feedback) for r in store.export()] == [("q1", "Yes.")]
    store.close()


def test_a_full_disk_under_the_app_database_at_start_is_one_line(work, full_disk):
    disk, fill = full_disk
    fill()
    db = disk / "fb.sqlite"
    one_line_error(laffi("annotate-server", "--data", work / "good.json", "--predictions", work / "preds.json", "--db",
                         db, "--port", free_port()), str(db))  # fmt: skip
    assert sorted(p.name for p in disk.iterdir()) == ["filler"]


# ---------------------------------------------------------------------------------------- 13: FIFOs and devices


@pytest.mark.parametrize("name", ["feedback.csv", "feedback.jsonl"])
def test_an_import_from_a_fifo_or_a_device_is_refused_without_reading(work, name):
    fifo = work / name
    os.mkfifo(fifo)  # no writer: reading it would wait forever
    one_line_error(laffi("annotate", "import", "--db", work / "db.sqlite", "--file", fifo, "--annotator", "x",
                         timeout=30), f"{fifo}: not a regular file (a FIFO)")  # fmt: skip
    zero = work / f"zero-{name}"
    zero.symlink_to("/dev/zero")
    one_line_error(laffi("annotate", "import", "--db", work / "db.sqlite", "--file", zero, "--annotator", "x",
                         timeout=30), f"{zero}: not a regular file (a character device)")  # fmt: skip
