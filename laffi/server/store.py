"""SQLite store of the annotation app: items to annotate, annotators (with hashed tokens) and their annotations.

WAL mode lets the server write while an export reads. Tokens are random and only their sha256 is stored, so the
database file does not give anyone access. Each annotator sees and edits only their own annotations; an admin may
export everyone's. Time spent on an item accumulates over visits (for cost accounting).
"""

from __future__ import annotations

import csv
import hashlib
import json
import secrets
import sqlite3
import time
from pathlib import Path
from typing import Any

from laffi.errors import LaffiError
from laffi.records import FeedbackRecord, Question, read_jsonl

TEMPLATE_VERSION = "human-app-v1"

SCHEMA = """
CREATE TABLE IF NOT EXISTS items (
    id TEXT PRIMARY KEY, position INTEGER NOT NULL, title TEXT NOT NULL, context TEXT NOT NULL,
    question TEXT NOT NULL, predicted TEXT NOT NULL, gold TEXT NOT NULL, answer_starts TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS annotators (
    name TEXT PRIMARY KEY, token_sha256 TEXT UNIQUE, is_admin INTEGER NOT NULL DEFAULT 0, created REAL NOT NULL);
CREATE TABLE IF NOT EXISTS annotations (
    annotator TEXT NOT NULL REFERENCES annotators(name), item_id TEXT NOT NULL REFERENCES items(id),
    verdict TEXT NOT NULL, feedback TEXT NOT NULL, seconds REAL NOT NULL DEFAULT 0, created REAL NOT NULL,
    updated REAL NOT NULL, PRIMARY KEY (annotator, item_id));
"""


def _sha(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class Store:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        if self.path.is_dir():
            raise LaffiError(f"{self.path}: is a directory, expected a SQLite database file")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # One connection shared by the server's worker threads; sqlite3 serialises access to it.
        self.db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self.db.row_factory = sqlite3.Row
        try:
            self.db.execute("PRAGMA journal_mode=WAL")
            # In WAL mode NORMAL syncs at checkpoints, not at every commit: a saved annotation survives the server
            # being killed; only a power loss or OS crash can undo the last few commits (never corrupts the file).
            # FULL cost 3.5-7.3 ms of fsync per save, serialised: it dominated latency under load (reliability.md).
            self.db.execute("PRAGMA synchronous=NORMAL")
            self.db.execute("PRAGMA foreign_keys=ON")
            self.db.executescript(SCHEMA)
        except sqlite3.DatabaseError as e:
            raise LaffiError(f"{self.path}: not a laffi annotation database ({e})") from None

    def close(self) -> None:
        self.db.close()

    # ------------------------------------------------------------------------------------------ items

    def add_items(self, questions: list[Question], predictions: dict[str, str]) -> int:
        """Add (or refresh) one item per question that has a prediction; annotations already made are kept."""
        start = self.db.execute("SELECT COUNT(*) FROM items").fetchone()[0]
        rows = []
        for q in questions:
            if q.id not in predictions:
                continue
            rows.append((q.id, start + len(rows), q.title, q.context, q.question, predictions[q.id],
                         json.dumps(q.answers), json.dumps(q.answer_starts)))  # fmt: skip
        with self.db:
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
        if not name or not name.replace("-", "").replace("_", "").replace(".", "").isalnum():
            raise LaffiError(f"annotator name '{name}': use letters, digits, '-', '_' or '.'")
        token = secrets.token_urlsafe(18)
        try:
            with self.db:
                self.db.execute("INSERT INTO annotators VALUES (?,?,?,?)", (name, _sha(token), int(admin), time.time()))
        except sqlite3.IntegrityError:
            raise LaffiError(f"{self.path}: annotator '{name}' already exists") from None
        return token

    def who(self, token: str) -> dict[str, Any] | None:
        row = self.db.execute("SELECT name, is_admin FROM annotators WHERE token_sha256=?", (_sha(token),)).fetchone()
        return {"name": row["name"], "admin": bool(row["is_admin"])} if row else None

    def _ensure_annotator(self, name: str) -> None:
        self.db.execute("INSERT OR IGNORE INTO annotators VALUES (?,NULL,0,?)", (name, time.time()))

    # ------------------------------------------------------------------------------------------ annotations

    def save(self, annotator: str, item_id: str, verdict: str, feedback: str, seconds: float) -> None:
        """Create or edit one annotation; `seconds` (time on the item this visit) adds to the time already spent."""
        if verdict not in ("correct", "incorrect"):
            raise LaffiError(f"verdict must be 'correct' or 'incorrect', got '{verdict}'")
        if not feedback.strip():
            raise LaffiError("feedback is empty")
        if self.item(item_id) is None:
            raise LaffiError(f"unknown item '{item_id}'")
        now = time.time()
        with self.db:
            self.db.execute(
                "INSERT INTO annotations VALUES (?,?,?,?,?,?,?) ON CONFLICT(annotator, item_id) DO UPDATE SET "
                "verdict=excluded.verdict, feedback=excluded.feedback, seconds=seconds+excluded.seconds, "
                "updated=excluded.updated",
                (annotator, item_id, verdict, feedback.strip(), max(0.0, seconds), now, now))

    def annotation(self, annotator: str, item_id: str) -> dict[str, Any] | None:
        row = self.db.execute("SELECT verdict, feedback, seconds FROM annotations WHERE annotator=? AND item_id=?",
                              (annotator, item_id)).fetchone()  # fmt: skip
        return dict(row) if row else None

    def progress(self, annotator: str) -> dict[str, int]:
        done = self.db.execute("SELECT COUNT(*) FROM annotations WHERE annotator=?", (annotator,)).fetchone()[0]
        return {"done": done, "total": self.item_count()}

    def export(self, annotator: str | None = None) -> list[FeedbackRecord]:
        """Every annotation (or one annotator's) as feedback records, annotator = human:<name>, in item order."""
        sql = ("SELECT a.*, i.* FROM annotations a JOIN items i ON i.id = a.item_id"
               + (" WHERE a.annotator=?" if annotator else "") + " ORDER BY i.position, a.annotator")  # fmt: skip
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
        """Import feedback written elsewhere: FeedbackRecord JSONL, or CSV with columns id, verdict, feedback and
        optionally annotator and seconds. Items must already be in the database; `annotator` overrides the file's."""
        rows = _read_import(Path(path))
        for no, row in enumerate(rows, start=1):
            name = annotator or row.get("annotator") or ""
            name = name.removeprefix("human:")
            where = f"{path}: row {no} ('{row.get('id', '')}')"
            if not name:
                raise LaffiError(f"{where}: no annotator (add a column 'annotator' or pass --annotator)")
            if self.item(row.get("id", "")) is None:
                raise LaffiError(f"{where}: question id is not an item of {self.path}")
            if row.get("verdict") not in ("correct", "incorrect") or not str(row.get("feedback", "")).strip():
                raise LaffiError(f"{where}: needs verdict correct|incorrect and non-empty feedback")
        for row in rows:
            name = (annotator or row.get("annotator")).removeprefix("human:")
            self._ensure_annotator(name)
            self.save(name, row["id"], row["verdict"], row["feedback"], float(row.get("seconds") or 0.0))
        return len(rows)


def _read_import(path: Path) -> list[dict[str, Any]]:
    if path.suffix.lower() == ".csv":
        try:
            with open(path, newline="", encoding="utf-8") as f:
                rows = list(csv.DictReader(f))
        except FileNotFoundError:
            raise LaffiError(f"{path}: file not found") from None
        missing = {"id", "verdict", "feedback"} - set(rows[0] if rows else {})
        if missing:
            raise LaffiError(f"{path}: missing column '{sorted(missing)[0]}'")
        for no, row in enumerate(rows, start=2):
            if row.get("seconds"):
                try:
                    float(row["seconds"])
                except ValueError:
                    raise LaffiError(f"{path}:{no}: field 'seconds' is not a number") from None
        return rows
    records = read_jsonl(path, FeedbackRecord)
    return [{"id": r.id, "verdict": r.verdict, "feedback": r.feedback, "annotator": r.annotator,
             "seconds": r.meta.get("seconds", 0.0)} for r in records]  # fmt: skip
