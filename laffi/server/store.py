"""SQLite store of the annotation app: items to annotate, annotators (with hashed tokens) and their annotations.

WAL mode lets the server write while an export reads; the store checkpoints the WAL into the database file when it
closes (and the app does so every few seconds while it serves), so the .sqlite file alone holds every annotation once
the server has stopped. Tokens are random and only their sha256 is stored, so the database file does not give anyone
access. Each annotator sees and edits only their own annotations; an admin may export everyone's. Time spent on an
item accumulates over visits (for cost accounting), up to MAX_SECONDS.

An annotation is bound to the answer it judged: it stores that answer, and restarting the server with other
predictions gives the changed items a new answer to annotate, while the earlier annotations keep (and export) the
answer they were about.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import math
import os
import secrets
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from laffi.errors import LaffiError
from laffi.records import FeedbackRecord, Question, read_jsonl

TEMPLATE_VERSION = "human-app-v1"
# Time on one item, per visit and summed over visits. A day is far beyond any real annotation; more means a clock or a
# client is wrong, and unbounded sums could reach inf, which the JSONL export could not write.
MAX_SECONDS = 24 * 3600.0

SCHEMA = """
CREATE TABLE IF NOT EXISTS items (
    id TEXT PRIMARY KEY, position INTEGER NOT NULL, title TEXT NOT NULL, context TEXT NOT NULL,
    question TEXT NOT NULL, predicted TEXT NOT NULL, gold TEXT NOT NULL, answer_starts TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS annotators (
    name TEXT PRIMARY KEY, token_sha256 TEXT UNIQUE, is_admin INTEGER NOT NULL DEFAULT 0, created REAL NOT NULL);
CREATE TABLE IF NOT EXISTS annotations (
    annotator TEXT NOT NULL REFERENCES annotators(name), item_id TEXT NOT NULL REFERENCES items(id),
    predicted TEXT NOT NULL, verdict TEXT NOT NULL, feedback TEXT NOT NULL, seconds REAL NOT NULL DEFAULT 0,
    created REAL NOT NULL, updated REAL NOT NULL, PRIMARY KEY (annotator, item_id, predicted));
"""
# Databases written before annotations stored their answer: each annotation takes the item's current answer (the
# only one the database still knows).
MIGRATE_V1 = """
ALTER TABLE annotations RENAME TO annotations_v1;
CREATE TABLE annotations (
    annotator TEXT NOT NULL REFERENCES annotators(name), item_id TEXT NOT NULL REFERENCES items(id),
    predicted TEXT NOT NULL, verdict TEXT NOT NULL, feedback TEXT NOT NULL, seconds REAL NOT NULL DEFAULT 0,
    created REAL NOT NULL, updated REAL NOT NULL, PRIMARY KEY (annotator, item_id, predicted));
INSERT INTO annotations SELECT a.annotator, a.item_id, i.predicted, a.verdict, a.feedback, a.seconds, a.created,
    a.updated FROM annotations_v1 a JOIN items i ON i.id = a.item_id;
DROP TABLE annotations_v1;
"""


def _sha(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def check_annotator_name(name: str) -> None:
    """Raise unless `name` is a valid annotator name (letters, digits, '-', '_', '.')."""
    if not name or not name.replace("-", "").replace("_", "").replace(".", "").isalnum():
        raise LaffiError(f"annotator name '{name}': use letters, digits, '-', '_' or '.'")


def check_seconds(value: Any, where: str) -> float:
    """Time spent on an item as a float in [0, MAX_SECONDS]; empty means 0. `where` names the field in errors."""
    if value is None or value == "":
        return 0.0
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise LaffiError(f"{where}: expected a number of seconds, got {type(value).__name__}")
    try:
        seconds = float(value)
    except ValueError:
        raise LaffiError(f"{where}: '{str(value)[:40]}' is not a number") from None
    if not math.isfinite(seconds) or not 0 <= seconds <= MAX_SECONDS:
        raise LaffiError(f"{where}: {str(value)[:40]} is not between 0 and {MAX_SECONDS:.0f} seconds (24 h)")
    return seconds


def _check_location(path: Path) -> None:
    """Refuse, before anything is created, a database path that cannot work: a directory, a path under a file, or a
    folder this process may not write (SQLite in WAL mode writes FILE-wal and FILE-shm beside the database)."""
    if path.is_dir():
        raise LaffiError(f"{path}: is a directory, expected a SQLite database file")
    folder = next(p for p in (path.parent, *path.parent.parents) if p.exists())
    if not folder.is_dir():
        raise LaffiError(f"{path}: {folder} is a file, not a directory")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise LaffiError(f"{path}: cannot write to the directory {folder} (permission denied)")


class Store:
    def __init__(self, path: str | Path, create: bool = True):
        """Open the database at `path`; with `create`, make it (and its folder) when missing. Without, a file that
        is not a laffi annotation database is refused without being changed."""
        self.path = Path(path)
        _check_location(self.path)
        created = not self.path.exists()
        if created and not create:
            raise LaffiError(f"{self.path}: annotation database not found")
        # Writes take this lock and an explicit transaction: the connection is shared by the server's threads and
        # runs in autocommit mode, so without them a multi-row write would commit row by row.
        self._lock = threading.RLock()
        self._dirty = False
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # One connection shared by the server's worker threads; sqlite3 serialises access to it.
            self.db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            self.db.row_factory = sqlite3.Row
            if not create:
                tables = {r[0] for r in self.db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
                if not {"items", "annotators", "annotations"} <= tables:
                    self.db.close()
                    raise LaffiError(f"{self.path}: not a laffi annotation database (no annotation tables)")
            self.db.execute("PRAGMA journal_mode=WAL")
            # In WAL mode NORMAL syncs at checkpoints, not at every commit: a saved annotation survives the server
            # being killed; only a power loss or OS crash can undo the last few commits (never corrupts the file).
            # FULL cost 3.5-7.3 ms of fsync per save, serialised: it dominated latency under load (reliability.md).
            self.db.execute("PRAGMA synchronous=NORMAL")
            self.db.execute("PRAGMA foreign_keys=ON")
            self.db.executescript(SCHEMA)
            columns = {r["name"] for r in self.db.execute("PRAGMA table_info(annotations)")}
            if "predicted" not in columns:
                # Statement by statement: executescript would commit before its first statement, outside this
                # transaction, and a failure halfway would leave the annotations table renamed.
                with self._write():
                    for statement in MIGRATE_V1.split(";"):
                        if statement.strip():
                            self.db.execute(statement)
        except sqlite3.OperationalError as e:  # cannot open, read-only, locked (a subclass of DatabaseError)
            self._forget(created)
            raise LaffiError(f"{self.path}: cannot open ({e})") from None
        except sqlite3.DatabaseError as e:  # "file is not a database" and the like
            self._forget(created)
            raise LaffiError(f"{self.path}: not a laffi annotation database ({e})") from None
        except OSError as e:
            self._forget(created)
            raise LaffiError(f"{self.path}: cannot create ({e.strerror or e})") from None

    def _forget(self, created: bool) -> None:
        """After a failed open: leave nothing behind that this open created."""
        with contextlib.suppress(Exception):
            self.db.close()
        if created:
            for suffix in ("", "-wal", "-shm", "-journal"):
                Path(f"{self.path}{suffix}").unlink(missing_ok=True)

    @contextlib.contextmanager
    def _write(self) -> Iterator[None]:
        """One transaction: every statement inside is committed together, or (on any exception) none is."""
        with self._lock:
            self.db.execute("BEGIN IMMEDIATE")
            try:
                yield
            except BaseException:
                if self.db.in_transaction:  # SQLite itself rolls back on some errors (disk full, I/O)
                    self.db.execute("ROLLBACK")
                raise
            self.db.execute("COMMIT")
            self._dirty = True

    def checkpoint(self, mode: str = "PASSIVE") -> None:
        """Copy the WAL's committed pages into the database file (TRUNCATE also empties the WAL)."""
        with self._lock:
            self.db.execute(f"PRAGMA wal_checkpoint({mode})")
            self._dirty = False

    def checkpoint_if_written(self) -> None:
        """Checkpoint when something was written since the last checkpoint (the app calls this every few seconds)."""
        if self._dirty:
            self.checkpoint()

    def close(self) -> None:
        """Checkpoint everything into the database file, then close: the .sqlite file alone is then complete."""
        with contextlib.suppress(sqlite3.Error):
            self.checkpoint("TRUNCATE")
        self.db.close()

    def add_items(self, questions: list[Question], predictions: dict[str, str]) -> int:
        """Add (or refresh) one item per question that has a prediction. Annotations already made are kept, each
        bound to the answer it judged: an item whose prediction changed shows the new answer, unannotated."""
        start = self.db.execute("SELECT COUNT(*) FROM items").fetchone()[0]
        rows = []
        for q in questions:
            if q.id not in predictions:
                continue
            rows.append((q.id, start + len(rows), q.title, q.context, q.question, predictions[q.id],
                         json.dumps(q.answers), json.dumps(q.answer_starts)))  # fmt: skip
        with self._write():
            self.db.executemany(
                "INSERT INTO items VALUES (?,?,?,?,?,?,?,?) ON CONFLICT(id) DO UPDATE SET title=excluded.title, "
                "context=excluded.context, question=excluded.question, predicted=excluded.predicted, "
                "gold=excluded.gold, answer_starts=excluded.answer_starts", rows)  # fmt: skip
        return len(rows)

    def item_count(self) -> int:
        return self.db.execute("SELECT COUNT(*) FROM items").fetchone()[0]

    def item_at(self, index: int) -> dict[str, Any] | None:
        row = self.db.execute("SELECT * FROM items ORDER BY position LIMIT 1 OFFSET ?", (index,)).fetchone()
        return self._item(row) if row else None

    def item(self, item_id: str) -> dict[str, Any] | None:
        row = self.db.execute("SELECT * FROM items WHERE id=?", (item_id,)).fetchone()
        return self._item(row) if row else None

    @staticmethod
    def _item(row: sqlite3.Row) -> dict[str, Any]:
        d = dict(row)
        d["gold"], d["answer_starts"] = json.loads(d["gold"]), json.loads(d["answer_starts"])
        return d

    # ------------------------------------------------------------------------------------------ annotators

    def add_annotator(self, name: str, admin: bool = False) -> str:
        """Create an annotator and return their token (shown once; only its hash is stored)."""
        check_annotator_name(name)
        token = secrets.token_urlsafe(18)
        try:
            with self._write():
                self.db.execute("INSERT INTO annotators VALUES (?,?,?,?)", (name, _sha(token), int(admin), time.time()))
        except sqlite3.IntegrityError:
            raise LaffiError(f"{self.path}: annotator '{name}' already exists") from None
        return token

    def annotator_names(self) -> list[str]:
        return [r[0] for r in self.db.execute("SELECT name FROM annotators ORDER BY name")]

    def who(self, token: str) -> dict[str, Any] | None:
        row = self.db.execute("SELECT name, is_admin FROM annotators WHERE token_sha256=?", (_sha(token),)).fetchone()
        return {"name": row["name"], "admin": bool(row["is_admin"])} if row else None

    def _ensure_annotator(self, name: str) -> None:
        self.db.execute("INSERT OR IGNORE INTO annotators VALUES (?,NULL,0,?)", (name, time.time()))

    # ------------------------------------------------------------------------------------------ annotations

    def save(self, annotator: str, item_id: str, verdict: str, feedback: str, seconds: float,
             predicted: str | None = None) -> None:  # fmt: skip
        """Create or edit one annotation of the item's current answer; `seconds` (time on the item this visit) adds
        to the time already spent. With `predicted` (the answer the annotator saw), a different current answer is
        refused: the judgement would otherwise be bound to an answer the annotator never saw."""
        verdict, feedback = _check_judgement(verdict, feedback, "")
        seconds = check_seconds(seconds, "seconds")
        with self._write():
            item = self.item(item_id)
            if item is None:
                raise LaffiError(f"unknown item '{item_id}'")
            if predicted is not None and predicted != item["predicted"]:
                raise AnswerChanged(f"item '{item_id[:100]}': its answer is now '{item['predicted'][:100]}', not "
                                    f"'{predicted[:100]}' (the predictions changed; reload the item)")  # fmt: skip
            now = time.time()
            self.db.execute(
                "INSERT INTO annotations (annotator, item_id, predicted, verdict, feedback, seconds, created, updated) "
                "VALUES (?,?,?,?,?,?,?,?) ON CONFLICT(annotator, item_id, predicted) DO UPDATE SET "
                "verdict=excluded.verdict, feedback=excluded.feedback, "
                "seconds=MIN(seconds + excluded.seconds, ?), updated=excluded.updated",
                (annotator, item_id, item["predicted"], verdict, feedback, seconds, now, now, MAX_SECONDS))

    def annotation(self, annotator: str, item_id: str) -> dict[str, Any] | None:
        """The annotator's annotation of the item's current answer (None if that answer is not annotated yet)."""
        row = self.db.execute("SELECT a.verdict, a.feedback, a.seconds FROM annotations a JOIN items i "
                              "ON i.id = a.item_id AND i.predicted = a.predicted WHERE a.annotator=? AND a.item_id=?",
                              (annotator, item_id)).fetchone()  # fmt: skip
        return dict(row) if row else None

    def progress(self, annotator: str) -> dict[str, int]:
        """Items whose current answer the annotator has annotated, of all items."""
        done = self.db.execute("SELECT COUNT(*) FROM annotations a JOIN items i ON i.id = a.item_id AND "
                               "i.predicted = a.predicted WHERE a.annotator=?", (annotator,)).fetchone()[0]  # fmt: skip
        return {"done": done, "total": self.item_count()}

    def export(self, annotator: str | None = None) -> list[FeedbackRecord]:
        """Every annotation (or one annotator's: a name, or human:<name> as the records write it) as feedback
        records, annotator = human:<name>, in item order, each with the answer it judged. An annotator the
        database does not know is an error that lists the known names."""
        if annotator is not None:
            annotator = annotator.removeprefix("human:")
            known = self.annotator_names()
            if annotator not in known:
                names = ", ".join(known[:20]) + (f" and {len(known) - 20} more" if len(known) > 20 else "")
                raise LaffiError(f"{self.path}: no annotator '{annotator[:100]}' (known: {names or 'none yet'})")
        sql = ("SELECT a.*, i.title, i.context, i.question, i.gold FROM annotations a JOIN items i ON i.id = a.item_id"
               + (" WHERE a.annotator=?" if annotator else "")
               + " ORDER BY i.position, a.annotator, a.created")  # fmt: skip
        out = []
        for row in self.db.execute(sql, (annotator,) if annotator else ()):
            gold = json.loads(row["gold"])
            out.append(FeedbackRecord(
                id=row["item_id"], question=row["question"], context=row["context"], predicted_answer=row["predicted"],
                gold_answers=gold, verdict=row["verdict"], feedback=row["feedback"],
                annotator=f"human:{row['annotator']}", template_version=TEMPLATE_VERSION, title=row["title"],
                is_impossible=not gold, meta={"seconds": round(row["seconds"], 3), "updated": row["updated"]},
            ))  # fmt: skip
        return out

    # ------------------------------------------------------------------------------------------ import

    def import_file(self, path: Path, annotator: str | None = None) -> int:
        """Import feedback written elsewhere: FeedbackRecord JSONL, or UTF-8 CSV with columns id, verdict, feedback
        and optionally annotator, seconds and predicted_answer. Items must already be in the database; `annotator`
        overrides the file's. Each annotation is bound to its predicted_answer (the item's current answer when the
        CSV has no such column).

        All or nothing: every row is checked first, then all are written in one transaction. Idempotent: a row
        replaces the annotation of the same annotator, item and answer (its verdict, feedback and seconds), so
        importing a file again changes nothing. The same annotator, item and answer twice in one file is an error."""
        path = Path(path)
        rows = []
        seen: dict[tuple[str, str, str], int] = {}
        for no, row in enumerate(_read_import(path), start=1):
            qid = str(row.get("id") or "")
            where = f"{path}: row {no} ('{qid[:100]}')"
            name = (annotator or row.get("annotator") or "").removeprefix("human:")
            if not name:
                raise LaffiError(f"{where}: no annotator (add a column 'annotator' or pass --annotator)")
            try:
                check_annotator_name(name)
            except LaffiError as e:
                raise LaffiError(f"{where}: {e}") from None
            item = self.item(qid)
            if item is None:
                raise LaffiError(f"{where}: question id is not an item of {self.path}")
            verdict, feedback = _check_judgement(row.get("verdict"), row.get("feedback"), f"{where}: ")
            seconds = check_seconds(row.get("seconds"), f"{where}: {row['seconds_field']}")
            predicted = row.get("predicted_answer")
            predicted = item["predicted"] if predicted is None else predicted
            key = (name, qid, predicted)
            if key in seen:
                raise LaffiError(f"{where}: same annotator, id and answer as row {seen[key]}")
            seen[key] = no
            rows.append((name, qid, predicted, verdict, feedback, seconds))
        now = time.time()
        with self._write():
            for name, qid, predicted, verdict, feedback, seconds in rows:
                self._ensure_annotator(name)
                self.db.execute(
                    "INSERT INTO annotations (annotator, item_id, predicted, verdict, feedback, seconds, created, "
                    "updated) VALUES (?,?,?,?,?,?,?,?) ON CONFLICT(annotator, item_id, predicted) DO UPDATE SET "
                    "verdict=excluded.verdict, feedback=excluded.feedback, seconds=excluded.seconds, "
                    "updated=excluded.updated", (name, qid, predicted, verdict, feedback, seconds, now, now))
        return len(rows)


class AnswerChanged(LaffiError):
    """An annotation was sent for an answer that is no longer the item's answer."""


def _check_judgement(verdict: Any, feedback: Any, where: str) -> tuple[str, str]:
    if verdict not in ("correct", "incorrect"):
        raise LaffiError(f"{where}verdict must be 'correct' or 'incorrect', got '{str(verdict)[:40]}'")
    if not isinstance(feedback, str) or not feedback.strip():
        raise LaffiError(f"{where}feedback is empty")
    return verdict, feedback.strip()


def _read_import(path: Path) -> list[dict[str, Any]]:
    """The rows of an import file as dicts (id, verdict, feedback, annotator, seconds, predicted_answer when given),
    each with `seconds_field`, the name of its seconds field for error messages."""
    if path.is_dir():
        raise LaffiError(f"{path}: is a directory, expected a CSV or JSONL feedback file")
    if path.suffix.lower() == ".csv":
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            raise LaffiError(f"{path}: file not found") from None
        try:
            text = raw.decode("utf-8-sig")  # a spreadsheet's byte-order mark is not part of the first column's name
        except UnicodeDecodeError as e:
            raise LaffiError(f"{path}: not UTF-8 text (byte {e.start}); save the CSV as UTF-8") from None
        try:
            reader = csv.DictReader(io.StringIO(text, newline=""))
            rows = list(reader)
        except csv.Error as e:
            raise LaffiError(f"{path}: not valid CSV (line {reader.line_num}: {e})") from None
        missing = {"id", "verdict", "feedback"} - set(reader.fieldnames or [])
        if missing:
            raise LaffiError(f"{path}: missing column '{sorted(missing)[0]}'")
        return [{**row, "seconds_field": "seconds"} for row in rows]
    records = read_jsonl(path, FeedbackRecord)
    return [{"id": r.id, "verdict": r.verdict, "feedback": r.feedback, "annotator": r.annotator,
             "seconds": r.meta.get("seconds"), "predicted_answer": r.predicted_answer, "seconds_field": "meta.seconds"}
            for r in records]  # fmt: skip
