"""SQLite store of the annotation app: items to annotate, annotators (with hashed tokens) and their annotations.

WAL mode lets the server write while an export reads; the store checkpoints the WAL into the database file when it
closes (and the app does so every few seconds while it serves), so the .sqlite file alone holds every annotation once
the server has stopped. Tokens are random and only their sha256 is stored, so the database file does not give anyone
access. Each annotator sees and edits only their own annotations; an admin may export everyone's. Time spent on an
item accumulates over visits (for cost accounting), up to MAX_SECONDS.

An annotation is bound to the answer it judged: it stores that answer, and restarting the server with other
predictions gives the changed items a new answer to annotate, while the earlier annotations keep (and export) the
answer they were about. It is bound to the item's content too (a hash of the question, the passage and the gold
answers): restarting with a data file in which an id now holds another question or gold answer makes that item new,
and the earlier annotations stay in the database as history, neither shown nor exported as annotations of the new
text. Items the latest predictions no longer cover are not served (their annotations still export).

The database belongs to laffi: `PRAGMA application_id` holds APPLICATION_ID. A database of another application (any
non-empty SQLite file without the marker and without laffi's tables) or a file that is not SQLite is refused before
anything is written to it. A database that cannot be written (read-only, locked by another program, a full disk) is
a one-line `StoreUnavailable` naming it; the app answers it with 507 (full) or 503.

Beyond the verdict and feedback, an annotation keeps its `status` (annotated, unsure, or skipped with a reason in
`note`) and, when the page prefilled it from an AI draft (`--drafts`), whether that draft was accepted unchanged and
the Levenshtein distance in characters from the draft's feedback to the final one. The export leaves unsure and
skipped annotations out unless asked (they are not training data). With `--overlap K`, each item is assigned to K
annotators (see `Store.deal`) and an annotator sees only their items; otherwise everyone sees every item.

Where annotators' verdicts on the same answer (same item content and predicted answer) differ, an admin may write the
final record of that answer (`Store.adjudicate`, listed by `Store.disagreements`): the full export then gives that
one record, `annotator = human:<admin>` and `meta.adjudication` naming who adjudicated and the annotations it
replaces, in place of the annotations of that answer. Every exported record states its right answer apart in
`meta.right_answer` (read from the feedback's closing sentence; "" is unanswerable).

What a feedback's text says (its closing sentence, a draft as the page shows it, the edit distance) is in
feedback_text.py; import files are read and checked in imports.py, and `Store.import_file` writes the rows they pass.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import random
import secrets
import sqlite3
import stat
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from laffi.errors import LaffiError
from laffi.files import printable
from laffi.records import FeedbackRecord, Question
from laffi.server.feedback_text import draft_as_shown, levenshtein, quoted_answer, right_answer_field, same_text
from laffi.server.imports import (
    MAX_SECONDS,
    check_annotator_name,
    check_judgement,
    check_seconds,
    checked_import,
    content_hash,
)

TEMPLATE_VERSION = "human-app-v1"
APPLICATION_ID = 0x4C414646  # "LAFF", in the SQLite header (PRAGMA application_id): this database is laffi's
SQLITE_HEADER = b"SQLite format 3\x00"
LAFFI_TABLES = {"items", "annotators", "annotations"}
KNOWN_TABLES = LAFFI_TABLES | {"drafts", "assignments", "settings", "adjudications", "annotations_v1", "annotations_v3"}

SCHEMA = """
CREATE TABLE IF NOT EXISTS items (
    id TEXT PRIMARY KEY, position INTEGER NOT NULL, title TEXT NOT NULL, context TEXT NOT NULL,
    question TEXT NOT NULL, predicted TEXT NOT NULL, gold TEXT NOT NULL, answer_starts TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS annotators (
    name TEXT PRIMARY KEY, token_sha256 TEXT UNIQUE, is_admin INTEGER NOT NULL DEFAULT 0, created REAL NOT NULL);
CREATE TABLE IF NOT EXISTS annotations (
    annotator TEXT NOT NULL REFERENCES annotators(name), item_id TEXT NOT NULL REFERENCES items(id),
    predicted TEXT NOT NULL, verdict TEXT NOT NULL, feedback TEXT NOT NULL, seconds REAL NOT NULL DEFAULT 0,
    created REAL NOT NULL, updated REAL NOT NULL, content TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (annotator, item_id, predicted, content));
CREATE TABLE IF NOT EXISTS adjudications (
    item_id TEXT NOT NULL, predicted TEXT NOT NULL, content TEXT NOT NULL, verdict TEXT NOT NULL,
    feedback TEXT NOT NULL, admin TEXT NOT NULL, created REAL NOT NULL, updated REAL NOT NULL,
    PRIMARY KEY (item_id, predicted, content));
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


# Tables and columns added after the first release: created when missing, so every older database opens.
SCHEMA_V3 = """
CREATE TABLE IF NOT EXISTS drafts (
    item_id TEXT NOT NULL, predicted TEXT NOT NULL, verdict TEXT NOT NULL, feedback TEXT NOT NULL,
    annotator TEXT NOT NULL, PRIMARY KEY (item_id, predicted));
CREATE TABLE IF NOT EXISTS assignments (
    annotator TEXT NOT NULL, item_id TEXT NOT NULL, PRIMARY KEY (annotator, item_id));
CREATE TABLE IF NOT EXISTS settings (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""
ADDED_COLUMNS = {
    "annotations": [("status", "TEXT NOT NULL DEFAULT 'annotated'"), ("note", "TEXT NOT NULL DEFAULT ''"),
                    ("draft_shown", "INTEGER NOT NULL DEFAULT 0"), ("draft_accepted", "INTEGER NOT NULL DEFAULT 0"),
                    ("draft_distance", "INTEGER")],
    "annotators": [("position", "INTEGER NOT NULL DEFAULT 0")],
    "items": [("content", "TEXT NOT NULL DEFAULT ''"), ("active", "INTEGER NOT NULL DEFAULT 1")],
}  # fmt: skip
# Databases written before annotations were bound to the item's content: the key gains the content, and each
# annotation takes its item's current content (the only one the database knows).
ANNOTATION_COLUMNS = (
    "annotator, item_id, predicted, verdict, feedback, seconds, created, updated, status, note, "
    "draft_shown, draft_accepted, draft_distance"
)
_FROM_V3 = ", ".join("a." + c.strip() for c in ANNOTATION_COLUMNS.split(","))
MIGRATE_V4 = f"""
ALTER TABLE annotations RENAME TO annotations_v3;
CREATE TABLE annotations (
    annotator TEXT NOT NULL REFERENCES annotators(name), item_id TEXT NOT NULL REFERENCES items(id),
    predicted TEXT NOT NULL, verdict TEXT NOT NULL, feedback TEXT NOT NULL, seconds REAL NOT NULL DEFAULT 0,
    created REAL NOT NULL, updated REAL NOT NULL, content TEXT NOT NULL DEFAULT '',
    status TEXT NOT NULL DEFAULT 'annotated', note TEXT NOT NULL DEFAULT '', draft_shown INTEGER NOT NULL DEFAULT 0,
    draft_accepted INTEGER NOT NULL DEFAULT 0, draft_distance INTEGER,
    PRIMARY KEY (annotator, item_id, predicted, content));
INSERT INTO annotations ({ANNOTATION_COLUMNS}, content) SELECT {_FROM_V3}, COALESCE(i.content, '')
    FROM annotations_v3 a LEFT JOIN items i ON i.id = a.item_id;
DROP TABLE annotations_v3;
"""
STATUSES = ("annotated", "unsure", "skipped")
ANY_VERSION = object()  # `Store.save` without a version: the save replaces whatever is stored
MAX_NOTE_CHARS = 500


def _sha(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class StoreUnavailable(LaffiError):
    """The database cannot be written now: read-only, locked by another program, or on a full disk. `status` is the
    HTTP status the app answers with (507 Insufficient Storage for a full disk, else 503)."""

    def __init__(self, message: str, status: int = 503):
        super().__init__(message)
        self.status = status


class AnswerChanged(LaffiError):
    """An annotation was sent for an answer that is no longer the item's answer."""


class StaleVersion(LaffiError):
    """A save based on a version of the annotation that has been replaced since (another tab saved it)."""


class NotAssigned(LaffiError):
    """An annotation was sent for an item not assigned to the annotator (with --overlap)."""


def _check_sqlite_file(path: Path) -> None:
    """Refuse an existing file that is not a SQLite database (or not a regular file) before SQLite opens it."""
    try:
        info = os.stat(path)
    except FileNotFoundError:
        return
    except OSError as e:
        raise LaffiError(f"{printable(path)}: cannot open ({(e.strerror or str(e)).lower()})") from None
    if stat.S_ISDIR(info.st_mode):
        return  # _check_location says so
    if not stat.S_ISREG(info.st_mode):
        raise LaffiError(f"{printable(path)}: not a laffi annotation database (not a regular file)")
    if info.st_size == 0:
        return  # an empty file is a new database
    try:
        with open(path, "rb") as f:
            header = f.read(len(SQLITE_HEADER))
    except OSError as e:
        raise LaffiError(f"{printable(path)}: cannot open ({(e.strerror or str(e)).lower()})") from None
    if header != SQLITE_HEADER:
        raise LaffiError(f"{printable(path)}: not a laffi annotation database (not a SQLite file); give a new path")


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
        _check_sqlite_file(self.path)
        # Writes take this lock and an explicit transaction: the connection is shared by the server's threads and
        # runs in autocommit mode, so without them a multi-row write would commit row by row.
        self._lock = threading.RLock()
        self._dirty = False
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # One connection shared by the server's worker threads; sqlite3 serialises access to it.
            self.db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            self.db.row_factory = sqlite3.Row
            self._check_owner(create)
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
            self._add_missing()
            self._bind_content()
            if self.db.execute("PRAGMA application_id").fetchone()[0] != APPLICATION_ID:
                self.db.execute(f"PRAGMA application_id={APPLICATION_ID}")
        except LaffiError:
            self._forget(created)
            raise
        except sqlite3.OperationalError as e:  # cannot open, read-only, locked (a subclass of DatabaseError)
            self._forget(created)
            raise LaffiError(f"{self.path}: cannot open ({e})") from None
        except sqlite3.DatabaseError as e:  # "file is not a database" and the like
            self._forget(created)
            raise LaffiError(f"{self.path}: not a laffi annotation database ({e})") from None
        except OSError as e:
            self._forget(created)
            raise LaffiError(f"{self.path}: cannot create ({e.strerror or e})") from None

    def _check_owner(self, create: bool) -> None:
        """Refuse a database of another application: it has neither laffi's marker nor only laffi's tables. A new or
        empty database is laffi's to make (with `create`); one made before the marker existed has laffi's tables."""
        app_id = self.db.execute("PRAGMA application_id").fetchone()[0]
        tables = {r[0] for r in self.db.execute("SELECT name FROM sqlite_master WHERE type='table'")
                  if not r[0].startswith("sqlite_")}  # fmt: skip
        if app_id == APPLICATION_ID:
            return
        foreign = sorted(tables - KNOWN_TABLES)
        if app_id != 0 or foreign:
            what = f"its tables: {', '.join(foreign[:5])}" if foreign else f"application_id {app_id}"
            raise LaffiError(f"{self.path}: not a laffi annotation database (another application's; {what}); laffi "
                             "writes only into its own database: give a new path")  # fmt: skip
        if not LAFFI_TABLES <= tables and (tables or not create):
            raise LaffiError(f"{self.path}: not a laffi annotation database (no annotation tables)")

    def _bind_content(self) -> None:
        """Give items and annotations written before content binding their content hash (in one transaction)."""
        items = self.db.execute("SELECT id, question, context, gold FROM items WHERE content = ''").fetchall()
        columns = {r["name"] for r in self.db.execute("PRAGMA table_info(annotations)")}
        if not items and "content" in columns:
            return
        with self._write():
            self.db.executemany("UPDATE items SET content=? WHERE id=?",
                                [(content_hash(r["question"], r["context"], json.loads(r["gold"])), r["id"])
                                 for r in items])  # fmt: skip
            if "content" not in columns:
                for statement in MIGRATE_V4.split(";"):
                    if statement.strip():
                        self.db.execute(statement)

    def _add_missing(self) -> None:
        """Create the tables and columns that databases written by earlier versions lack (in one transaction)."""
        missing = []
        for table, columns in ADDED_COLUMNS.items():
            have = {r["name"] for r in self.db.execute(f"PRAGMA table_info({table})")}
            missing += [f"ALTER TABLE {table} ADD COLUMN {name} {kind}" for name, kind in columns if name not in have]
        tables = {r[0] for r in self.db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if not missing and {"drafts", "assignments", "settings"} <= tables:
            return
        with self._write():
            for statement in [*SCHEMA_V3.split(";"), *missing]:
                if statement.strip():
                    self.db.execute(statement)

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
            try:
                self.db.execute("BEGIN IMMEDIATE")
                try:
                    yield
                    self.db.execute("COMMIT")
                except BaseException:
                    if self.db.in_transaction:  # SQLite itself rolls back on some errors (disk full, I/O)
                        with contextlib.suppress(sqlite3.Error):
                            self.db.execute("ROLLBACK")
                    raise
            except sqlite3.OperationalError as e:  # read-only, locked, disk full, I/O error: nothing was written
                raise self.unavailable(e) from None
            self._dirty = True

    def unavailable(self, e: sqlite3.Error) -> StoreUnavailable:
        """A one-line error naming the database for a write SQLite refused (507 for a full disk, else 503)."""
        text = str(e)
        full = "full" in text.lower()
        return StoreUnavailable(f"{printable(self.path)}: cannot write ({text})", 507 if full else 503)

    def checkpoint(self, mode: str = "PASSIVE") -> None:
        """Copy the WAL's committed pages into the database file (TRUNCATE also empties the WAL)."""
        with self._lock:
            self.db.execute(f"PRAGMA wal_checkpoint({mode})")
            self._dirty = False

    def checkpoint_if_written(self) -> None:
        """Checkpoint when something was written since the last checkpoint (the app calls this every few seconds). A
        checkpoint that fails (a full disk) is tried again next time: the WAL still holds every commit."""
        if self._dirty:
            with contextlib.suppress(sqlite3.Error):
                self.checkpoint()

    def close(self) -> None:
        """Checkpoint everything into the database file, then close: the .sqlite file alone is then complete."""
        with contextlib.suppress(sqlite3.Error):
            self.checkpoint("TRUNCATE")
        self.db.close()

    def add_items(self, questions: list[Question], predictions: dict[str, str], reorder: bool = False) -> int:
        """Make the items the questions that have a prediction; returns how many. Annotations already made are kept,
        each bound to the answer and the content it judged: an item whose prediction changed shows the new answer,
        unannotated, and one whose question, passage or gold answers changed is a new item (its earlier annotations
        stay as history, not exported). Items these predictions do not cover are no longer served.
        `self.refreshed` then counts the items whose content changed and those no longer served.
        Items are served in the order they were first added; with `reorder` (`annotate-server --queue`) in the order
        of `questions`, items added before included."""
        start = self.db.execute("SELECT COALESCE(MAX(position) + 1, 0) FROM items").fetchone()[0]
        before = {r[0]: r[1] for r in self.db.execute("SELECT id, content FROM items WHERE active = 1")}
        old = {r[0]: r[1] for r in self.db.execute("SELECT id, content FROM items")}
        rows = []
        for q in questions:
            if q.id not in predictions:
                continue
            content = content_hash(q.question, q.context, q.answers)
            rows.append((q.id, start + len(rows), q.title, q.context, q.question, predictions[q.id],
                         json.dumps(q.answers), json.dumps(q.answer_starts), content))  # fmt: skip
        with self._write():
            self.db.execute("UPDATE items SET active = 0")
            self.db.executemany(
                "INSERT INTO items (id, position, title, context, question, predicted, gold, answer_starts, content, "
                "active) VALUES (?,?,?,?,?,?,?,?,?,1) ON CONFLICT(id) DO UPDATE SET title=excluded.title, "
                "context=excluded.context, question=excluded.question, predicted=excluded.predicted, "
                "gold=excluded.gold, answer_starts=excluded.answer_starts, content=excluded.content, active=1"
                + (", position=excluded.position" if reorder else ""),
                rows)  # fmt: skip
        served = {r[0] for r in rows}
        self.refreshed = {"changed": sum(1 for r in rows if r[0] in old and old[r[0]] != r[8]),
                          "dropped": len(set(before) - served)}  # fmt: skip
        return len(rows)

    def item_count(self) -> int:
        """How many items are served (those of the latest predictions)."""
        return self.db.execute("SELECT COUNT(*) FROM items WHERE active = 1").fetchone()[0]

    def item_at(self, index: int, annotator: str | None = None) -> dict[str, Any] | None:
        """The item at `index` of the annotator's queue (every item, in order, unless items are assigned)."""
        join, params = self._scope(annotator)
        row = self.db.execute(f"SELECT i.* FROM items i {join} WHERE i.active = 1 ORDER BY i.position LIMIT 1 "
                              "OFFSET ?", (*params, index)).fetchone()  # fmt: skip
        return self._item(row) if row else None

    def item(self, item_id: str) -> dict[str, Any] | None:
        """The item served under `item_id` (None when unknown or not in the latest predictions)."""
        row = self.db.execute("SELECT * FROM items WHERE id=? AND active = 1", (item_id,)).fetchone()
        return self._item(row) if row else None

    @staticmethod
    def _item(row: sqlite3.Row) -> dict[str, Any]:
        d = dict(row)
        d["gold"], d["answer_starts"] = json.loads(d["gold"]), json.loads(d["answer_starts"])
        return d

    # ------------------------------------------------------------------------------------------ settings

    def setting(self, key: str) -> str | None:
        row = self.db.execute("SELECT value FROM settings WHERE key=?", (key,)).fetchone()
        return row[0] if row else None

    def set_setting(self, key: str, value: str | None) -> None:
        with self._write():
            if value is None:
                self.db.execute("DELETE FROM settings WHERE key=?", (key,))
            else:
                self.db.execute("INSERT OR REPLACE INTO settings VALUES (?,?)", (key, value))

    # ------------------------------------------------------------------------------------------ queues

    def overlap(self) -> int | None:
        """K of `--overlap K` (items assigned to K annotators each), or None: every annotator sees every item."""
        value = self.setting("overlap")
        return int(value) if value is not None else None

    def _sees_all(self, annotator: str | None) -> bool:
        if annotator is None or self.overlap() is None:
            return True
        row = self.db.execute("SELECT is_admin FROM annotators WHERE name=?", (annotator,)).fetchone()
        return bool(row and row[0])

    def _scope(self, annotator: str | None) -> tuple[str, tuple]:
        """SQL join (on items `i`) limiting to the annotator's items, and its parameters."""
        if self._sees_all(annotator):
            return "", ()
        return "JOIN assignments s ON s.item_id = i.id AND s.annotator = ?", (annotator,)

    def may_annotate(self, annotator: str, item_id: str) -> bool:
        if self._sees_all(annotator):
            return True
        return self.db.execute("SELECT 1 FROM assignments WHERE annotator=? AND item_id=?",
                               (annotator, item_id)).fetchone() is not None  # fmt: skip

    def statuses(self, annotator: str) -> list[dict[str, Any]]:
        """The annotator's queue: index, id, question (first 120 characters) and status (annotated, unsure, skipped
        or todo) of each item's current answer."""
        join, params = self._scope(annotator)
        rows = self.db.execute(
            f"SELECT i.id, substr(i.question, 1, 120) AS question, a.status FROM items i {join} LEFT JOIN "
            "annotations a ON a.item_id = i.id AND a.predicted = i.predicted AND a.content = i.content AND "
            "a.annotator = ? WHERE i.active = 1 ORDER BY i.position",
            (*params, annotator)).fetchall()  # fmt: skip
        return [{"index": k, "id": r["id"], "question": r["question"], "status": r["status"] or "todo"}
                for k, r in enumerate(rows)]  # fmt: skip

    def counts(self, annotator: str) -> dict[str, int]:
        """How many of the annotator's items are annotated, unsure, skipped and still to do."""
        join, params = self._scope(annotator)
        out = {"annotated": 0, "unsure": 0, "skipped": 0, "todo": 0}
        for status, n in self.db.execute(
            f"SELECT COALESCE(a.status, 'todo'), COUNT(*) FROM items i {join} LEFT JOIN annotations a ON "
            "a.item_id = i.id AND a.predicted = i.predicted AND a.content = i.content AND a.annotator = ? "
            "WHERE i.active = 1 GROUP BY 1",
            (*params, annotator),
        ):
            out[status] = n  # fmt: skip
        return out

    def next_todo(self, annotator: str, after: int = -1) -> int | None:
        """Index of the first item still to do after `after` (wrapping round to the start), or None."""
        todo = [s["index"] for s in self.statuses(annotator) if s["status"] == "todo"]
        later = [i for i in todo if i > after]
        return (later or todo or [None])[0]

    def position(self, annotator: str) -> int:
        row = self.db.execute("SELECT position FROM annotators WHERE name=?", (annotator,)).fetchone()
        return row[0] if row else 0

    def set_position(self, annotator: str, index: int) -> None:
        """Where the annotator is (a reload or another tab resumes there); written only when it moves."""
        if self.position(annotator) != index:
            with self._write():
                self.db.execute("UPDATE annotators SET position=? WHERE name=?", (index, annotator))

    # ------------------------------------------------------------------------------------------ assignment

    def configure_assignment(self, overlap: int | None, seed: int = 0) -> None:
        """`--overlap K --assign-seed S`: from now on each item is assigned to K annotators (then `deal`); None
        switches assignment off (everyone sees every item; assignments made are kept for a later K)."""
        if overlap is not None and overlap < 1:
            raise LaffiError(f"--overlap: must be at least 1, got {overlap}")
        self.set_setting("overlap", None if overlap is None else str(overlap))
        self.set_setting("assign_seed", str(seed))
        if overlap is not None:
            self.deal()

    def deal(self) -> int:
        """Assign items to annotators so that each item has K of them; returns the assignments made.

        The rule: items are taken in a seeded order (`--assign-seed`) and the annotators (active, not admins) in a
        seeded order too. (1) Each item with fewer than K annotators gets the least-loaded annotators it lacks: dealt
        to a fresh team this is round-robin, every share within one item of the others. (2) When items were already
        dealt before, an annotator who has none yet (added later) also takes, up to an equal share (items x K /
        annotators, rounded up), the items that still have fewer than K annotations, fewest annotations first: they
        join those items' annotators, so such an item may end with more than K annotations. Assignments are never
        taken away, so nobody loses an item they have started."""
        k = self.overlap()
        if k is None:
            return 0
        seed = int(self.setting("assign_seed") or 0)
        with self._write():
            names = [
                r[0]
                for r in self.db.execute(
                    "SELECT name FROM annotators WHERE is_admin = 0 AND token_sha256 IS NOT NULL ORDER BY name"
                )
            ]
            if not names:
                return 0
            items = [r[0] for r in self.db.execute("SELECT id FROM items WHERE active = 1 ORDER BY position")]
            rng = random.Random(seed)
            rng.shuffle(items)
            rank = {name: i for i, name in enumerate(rng.sample(names, len(names)))}
            assigned: dict[str, set[str]] = {item: set() for item in items}
            load = dict.fromkeys(names, 0)
            for name, item in self.db.execute("SELECT annotator, item_id FROM assignments"):
                if item in assigned:
                    assigned[item].add(name)
                if name in load:
                    load[name] += 1
            dealt_before = any(assigned.values())
            newcomers = [n for n in sorted(names, key=rank.get) if load[n] == 0]
            new: list[tuple[str, str]] = []
            for item in items:
                lacking = sorted((n for n in names if n not in assigned[item]), key=lambda n: (load[n], rank[n]))
                for name in lacking[: max(0, k - len(assigned[item]))]:
                    assigned[item].add(name)
                    load[name] += 1
                    new.append((name, item))
            if dealt_before and newcomers:
                share = -(-len(items) * k // len(names))
                done = dict(
                    self.db.execute(
                        "SELECT a.item_id, COUNT(*) FROM annotations a JOIN items i ON i.id = a.item_id AND "
                        "i.predicted = a.predicted AND i.content = a.content WHERE a.status != 'skipped' GROUP BY "
                        "a.item_id"
                    ).fetchall()
                )
                order = {item: i for i, item in enumerate(items)}
                open_items = sorted((it for it in items if done.get(it, 0) < k),
                                    key=lambda it: (done.get(it, 0), order[it]))  # fmt: skip
                for name in newcomers:
                    for item in open_items:
                        if load[name] >= share:
                            break
                        if name not in assigned[item]:
                            assigned[item].add(name)
                            load[name] += 1
                            new.append((name, item))
            self.db.executemany("INSERT INTO assignments VALUES (?,?)", new)
        return len(new)

    def ensure_dealt(self, annotator: str) -> None:
        """With assignment on, give an annotator who has no items yet (added while the server runs) their share."""
        if self._sees_all(annotator):
            return
        if self.db.execute("SELECT 1 FROM assignments WHERE annotator=? LIMIT 1", (annotator,)).fetchone() is None:
            self.deal()

    # ------------------------------------------------------------------------------------------ annotators

    def add_annotator(self, name: str, admin: bool = False) -> str:
        """Create an annotator and return their token (shown once; only its hash is stored)."""
        check_annotator_name(name)
        token = secrets.token_urlsafe(18)
        try:
            with self._write():
                self.db.execute("INSERT INTO annotators (name, token_sha256, is_admin, created) VALUES (?,?,?,?)",
                                (name, _sha(token), int(admin), time.time()))  # fmt: skip
        except sqlite3.IntegrityError:
            raise LaffiError(f"{self.path}: annotator '{name}' already exists") from None
        return token

    def remove_annotator(self, name: str) -> None:
        """Undo `add_annotator` (its token could not be shown): the annotator goes, unless they have annotations."""
        with self._write():
            self.db.execute("DELETE FROM annotators WHERE name=? AND NOT EXISTS (SELECT 1 FROM annotations WHERE "
                            "annotator=?)", (name, name))  # fmt: skip

    def annotator_names(self) -> list[str]:
        return [r[0] for r in self.db.execute("SELECT name FROM annotators ORDER BY name")]

    def _known(self, name: str) -> None:
        if self.db.execute("SELECT 1 FROM annotators WHERE name=?", (name,)).fetchone() is None:
            known = self.annotator_names()
            names = ", ".join(known[:20]) + (f" and {len(known) - 20} more" if len(known) > 20 else "")
            raise LaffiError(f"{self.path}: no annotator '{name[:100]}' (known: {names or 'none yet'})")

    def list_annotators(self) -> list[dict[str, Any]]:
        """Every annotator: name, admin, active (has a token that logs in) and their counts."""
        rows = self.db.execute("SELECT name, is_admin, token_sha256 IS NOT NULL AS active FROM annotators "
                               "ORDER BY name").fetchall()  # fmt: skip
        return [{"name": r["name"], "admin": bool(r["is_admin"]), "active": bool(r["active"]), **self.counts(r["name"])}
                for r in rows]  # fmt: skip

    def revoke(self, name: str) -> None:
        """The annotator's token stops working at once; their annotations stay (and export)."""
        self._known(name)
        with self._write():
            self.db.execute("UPDATE annotators SET token_sha256=NULL WHERE name=?", (name,))

    def reset_token(self, name: str) -> str:
        """A new token for the annotator (the old one stops working); returns it (shown once)."""
        self._known(name)
        token = secrets.token_urlsafe(18)
        with self._write():
            self.db.execute("UPDATE annotators SET token_sha256=? WHERE name=?", (_sha(token), name))
        return token

    def who(self, token: str) -> dict[str, Any] | None:
        row = self.db.execute("SELECT name, is_admin FROM annotators WHERE token_sha256=?", (_sha(token),)).fetchone()
        return {"name": row["name"], "admin": bool(row["is_admin"])} if row else None

    def _ensure_annotator(self, name: str) -> None:
        self.db.execute("INSERT OR IGNORE INTO annotators (name, token_sha256, is_admin, created) VALUES (?,NULL,0,?)",
                        (name, time.time()))  # fmt: skip

    # ------------------------------------------------------------------------------------------ drafts

    def set_drafts(self, records: list[FeedbackRecord], where: str) -> dict[str, int]:
        """Replace the AI drafts with `records` (`--drafts`, written by `laffi annotate --annotator llm`). A draft
        is shown only on an item whose current answer is the draft's `predicted_answer`. Returns how many drafts
        match an item's answer, are for another answer, or for a question that is not an item."""
        rows, seen = [], set()
        for no, r in enumerate(records, start=1):
            if r.verdict not in ("correct", "incorrect"):
                raise LaffiError(f"{where}: record {no}: verdict must be 'correct' or 'incorrect', got "
                                 f"'{str(r.verdict)[:40]}'")  # fmt: skip
            if (r.id, r.predicted_answer) not in seen:  # the first draft of an answer wins
                seen.add((r.id, r.predicted_answer))
                rows.append((r.id, r.predicted_answer, r.verdict, r.feedback.strip(), r.annotator))
        with self._write():
            self.db.execute("DELETE FROM drafts")
            self.db.executemany("INSERT INTO drafts VALUES (?,?,?,?,?)", rows)
        current = {r[0]: r[1] for r in self.db.execute("SELECT id, predicted FROM items")}
        out = {"matching": 0, "other_answer": 0, "unknown": 0}
        for item_id, predicted, *_ in rows:
            key = (
                "unknown" if item_id not in current else "matching" if current[item_id] == predicted else "other_answer"
            )
            out[key] += 1
        return out

    def draft(self, item_id: str) -> dict[str, Any] | None:
        """The AI draft of the item's current answer (verdict, feedback, annotator), or None. Its feedback is the
        draft as the page shows it and would save it unchanged (`draft_as_shown`): an annotation accepted unchanged
        has exactly this text, and the edit distance is measured from it."""
        row = self.db.execute("SELECT d.verdict, d.feedback, d.annotator, i.predicted, i.gold FROM drafts d JOIN items "
                              "i ON i.id = d.item_id AND i.predicted = d.predicted WHERE d.item_id=?",
                              (item_id,)).fetchone()  # fmt: skip
        if row is None:
            return None
        feedback = draft_as_shown(row["feedback"], row["verdict"], row["predicted"], json.loads(row["gold"]))
        return {"verdict": row["verdict"], "feedback": feedback, "annotator": row["annotator"]}

    # ------------------------------------------------------------------------------------------ annotations

    def save(self, annotator: str, item_id: str, verdict: str, feedback: str, seconds: float,
             predicted: str | None = None, status: str = "annotated", note: str = "",
             draft_shown: bool = False, version: float | None | object = ANY_VERSION) -> None:  # fmt: skip
        """Create or edit one annotation of the item's current answer; `seconds` (time on the item this visit) adds
        to the time already spent. With `predicted` (the answer the annotator saw), a different current answer is
        refused: the judgement would otherwise be bound to an answer the annotator never saw.

        `status` is annotated, unsure (a verdict and feedback the annotator is not sure of) or skipped (no verdict;
        `note` says why). `draft_shown`: the page prefilled the form from the item's AI draft; the annotation then
        keeps whether the draft was accepted unchanged and the edit distance from its feedback to the final one.

        `version` is the annotation's `version` as the page loaded it (None: it loaded no annotation). When the
        annotation has been saved since (another tab or window of the same annotator), the save is refused with
        `StaleVersion` rather than overwriting that work."""
        if status not in STATUSES:
            raise LaffiError(f"status must be one of {', '.join(STATUSES)}, got '{str(status)[:40]}'")
        note = (note or "").strip()
        if len(note) > MAX_NOTE_CHARS:
            raise LaffiError(f"note: at most {MAX_NOTE_CHARS} characters")
        if status == "skipped":
            if not note:
                raise LaffiError("a skip needs a reason (note)")
            verdict, feedback = "", ""
        else:
            verdict, feedback = check_judgement(verdict, feedback, "")
        seconds = check_seconds(seconds, "seconds")
        with self._write():
            item = self.item(item_id)
            if item is None:
                raise LaffiError(f"unknown item '{item_id}'")
            if not self.may_annotate(annotator, item_id):
                raise NotAssigned(f"item '{item_id[:100]}' is not assigned to {annotator}")
            if predicted is not None and predicted != item["predicted"]:
                raise AnswerChanged(
                    f"item '{item_id[:100]}': its answer is now {quoted_answer(item['predicted'])}, not "
                    f"{quoted_answer(predicted)} (the predictions changed; reload the item)"
                )
            old = self.db.execute("SELECT draft_shown, updated FROM annotations WHERE annotator=? AND item_id=? AND "
                                  "predicted=? AND content=?", (annotator, item_id, item["predicted"],
                                                                item["content"])).fetchone()  # fmt: skip
            if version is not ANY_VERSION and (old[1] if old else None) != version:
                raise StaleVersion(f"item '{item_id[:100]}': not saved, because another tab or window saved it after "
                                   "this page loaded it; open the item again to see that version")  # fmt: skip
            shown = bool(draft_shown or (old and old[0]))
            draft = self.draft(item_id) if shown else None
            accepted, distance = False, None
            if draft is not None and status != "skipped":
                accepted = verdict == draft["verdict"] and same_text(feedback, draft["feedback"])
                distance = levenshtein(draft["feedback"], feedback)
            now = time.time()
            self.db.execute(
                "INSERT INTO annotations (annotator, item_id, predicted, verdict, feedback, seconds, created, updated, "
                "status, note, draft_shown, draft_accepted, draft_distance, content) VALUES "
                "(?,?,?,?,?,?,?,?,?,?,?,?,?,?) ON CONFLICT(annotator, item_id, predicted, content) DO UPDATE SET "
                "verdict=excluded.verdict, "
                "feedback=excluded.feedback, seconds=MIN(seconds + excluded.seconds, ?), updated=excluded.updated, "
                "status=excluded.status, note=excluded.note, draft_shown=excluded.draft_shown, "
                "draft_accepted=excluded.draft_accepted, draft_distance=excluded.draft_distance",
                (annotator, item_id, item["predicted"], verdict, feedback, seconds, now, now, status, note,
                 int(draft is not None), int(accepted), distance, item["content"], MAX_SECONDS))  # fmt: skip

    def annotation(self, annotator: str, item_id: str) -> dict[str, Any] | None:
        """The annotator's annotation of the item's current answer (None if that answer is not annotated yet);
        `version` (the time it was last saved) is what `save(version=...)` checks."""
        row = self.db.execute("SELECT a.verdict, a.feedback, a.seconds, a.status, a.note, a.updated AS version FROM "
                              "annotations a JOIN items "
                              "i ON i.id = a.item_id AND i.predicted = a.predicted AND i.content = a.content WHERE "
                              "a.annotator=? AND a.item_id=?", (annotator, item_id)).fetchone()  # fmt: skip
        return dict(row) if row else None

    def progress(self, annotator: str) -> dict[str, int]:
        """Items whose current answer the annotator has judged (annotated or unsure), of the items they see."""
        c = self.counts(annotator)
        return {"done": c["annotated"] + c["unsure"], "total": sum(c.values())}

    def export(self, annotator: str | None = None, include_unsure: bool = False,
               include_skipped: bool = False) -> list[FeedbackRecord]:  # fmt: skip
        """Every annotation (or one annotator's: a name, or human:<name> as the records write it) as feedback
        records, annotator = human:<name>, in item order, each with the answer it judged. Annotations of an item's
        earlier content (the data file changed under the same id) are history and left out. An annotator the
        database does not know is an error that lists the known names.

        Training data only by default: unsure annotations come with `include_unsure`, skipped ones (verdict and
        feedback empty, not loadable as training feedback) with `include_skipped`. `meta` holds seconds, updated,
        status (and note), draft: {shown, accepted, edit_distance}, and right_answer (the answer the feedback's
        closing sentence states, "" for unanswerable; absent when it states none).

        An answer an admin adjudicated (`adjudicate`) is one record in the full export, first among its item's
        records: the admin's verdict and feedback, annotator = human:<admin>, in place of every annotation of that
        answer (whatever their status); see `_adjudicated_record`. One annotator's export (`annotator`) is their own
        annotations as they wrote them."""
        if annotator is not None:
            annotator = annotator.removeprefix("human:")
            self._known(annotator)
        statuses = ["annotated"] + ["unsure"] * include_unsure + ["skipped"] * include_skipped
        sql = ("SELECT a.*, i.title, i.context, i.question, i.gold, i.position FROM annotations a JOIN items i ON "
               f"i.id = a.item_id AND i.content = a.content WHERE a.status IN ({','.join('?' * len(statuses))})"
               + (" AND a.annotator=?" if annotator else "")
               + " ORDER BY i.position, a.annotator, a.created")  # fmt: skip
        adjudicated = {} if annotator else self._adjudications()
        keyed: list[tuple[tuple, FeedbackRecord]] = []
        for row in self.db.execute(sql, (*statuses, annotator) if annotator else statuses):
            if (row["item_id"], row["predicted"]) in adjudicated:
                continue
            gold = json.loads(row["gold"])
            meta = {"seconds": round(row["seconds"], 3), "updated": row["updated"], "status": row["status"],
                    "draft": {"shown": bool(row["draft_shown"]), "accepted": bool(row["draft_accepted"]),
                              "edit_distance": row["draft_distance"]}}  # fmt: skip
            if row["note"]:
                meta["note"] = row["note"]
            meta.update(right_answer_field(row["feedback"]))
            keyed.append(((row["position"], 1), FeedbackRecord(
                id=row["item_id"], question=row["question"], context=row["context"], predicted_answer=row["predicted"],
                gold_answers=gold, verdict=row["verdict"], feedback=row["feedback"],
                annotator=f"human:{row['annotator']}", template_version=TEMPLATE_VERSION, title=row["title"],
                is_impossible=not gold, meta=meta,
            )))  # fmt: skip
        for adj in adjudicated.values():
            keyed.append(((adj["position"], 0), self._adjudicated_record(adj)))
        keyed.sort(key=lambda k: k[0])  # stable: the annotations keep their order within an item
        return [record for _, record in keyed]

    # ------------------------------------------------------------------------------------------ admin

    def summary(self) -> dict[str, Any]:
        """The admin view: each annotator's counts, and verdict agreement (Cohen's kappa) between every two
        annotators on the answers both judged (annotated or unsure), with the mean over pairs."""
        from laffi.feedback.report import cohen_kappa

        verdicts: dict[str, dict[tuple[str, str], str]] = {}
        for name, item, predicted, verdict in self.db.execute(
            "SELECT a.annotator, a.item_id, a.predicted, a.verdict FROM annotations a JOIN items i ON i.id = "
            "a.item_id AND i.content = a.content WHERE a.status != 'skipped'"
        ):
            verdicts.setdefault(name, {})[(item, predicted)] = verdict  # fmt: skip
        pairs = []
        names = sorted(verdicts)
        for i, a in enumerate(names):
            for b in names[i + 1 :]:
                common = sorted(set(verdicts[a]) & set(verdicts[b]))
                if common:
                    kappa = cohen_kappa([verdicts[a][k] for k in common], [verdicts[b][k] for k in common])
                    agree = sum(verdicts[a][k] == verdicts[b][k] for k in common) / len(common)
                    pairs.append({"a": a, "b": b, "items": len(common), "agreement": round(agree, 4),
                                  "kappa": round(kappa, 4) if math.isfinite(kappa) else None})  # fmt: skip
        shared = {k for name in names for k in verdicts[name]
                  if sum(k in verdicts[other] for other in names) >= 2}  # fmt: skip
        kappas = [p["kappa"] for p in pairs if p["kappa"] is not None]
        times = self.annotator_times()
        annotators = [{**a, "time": times.get(a["name"])} for a in self.list_annotators()]
        return {"overlap": self.overlap(), "items": self.item_count(), "annotators": annotators,
                "agreement": {"pairs": pairs, "shared_items": len(shared),
                              "mean_kappa": round(sum(kappas) / len(kappas), 4) if kappas else None}}  # fmt: skip

    # ------------------------------------------------------------------------------------------ adjudication

    def _answer_key(self, item_id: str) -> sqlite3.Row:
        """The items row of `item_id`, served or not (its annotations still export), or a LaffiError."""
        row = self.db.execute("SELECT * FROM items WHERE id=?", (item_id,)).fetchone()
        if row is None:
            raise LaffiError(f"unknown item '{item_id[:100]}'")
        return row

    def adjudicate(self, admin: str, item_id: str, predicted: str, verdict: str, feedback: str) -> None:
        """Write (or replace) the final record of one answer of an item: `admin`'s verdict and feedback, which the
        full export gives in place of the annotations of that answer. The answer must have annotations of the item's
        current content."""
        verdict, feedback = check_judgement(verdict, feedback, "")
        with self._write():
            item = self._answer_key(item_id)
            if self.db.execute("SELECT 1 FROM annotations WHERE item_id=? AND predicted=? AND content=? LIMIT 1",
                               (item_id, predicted, item["content"])).fetchone() is None:  # fmt: skip
                raise LaffiError(f"item '{item_id[:100]}': no annotations of the answer {quoted_answer(predicted)}")
            now = time.time()
            self.db.execute(
                "INSERT INTO adjudications (item_id, predicted, content, verdict, feedback, admin, created, updated) "
                "VALUES (?,?,?,?,?,?,?,?) ON CONFLICT(item_id, predicted, content) DO UPDATE SET "
                "verdict=excluded.verdict, feedback=excluded.feedback, admin=excluded.admin, updated=excluded.updated",
                (item_id, predicted, item["content"], verdict, feedback, admin, now, now))  # fmt: skip

    def _adjudications(self) -> dict[tuple[str, str], dict[str, Any]]:
        """The adjudications of the items' current content, by (item id, answer), with their item's fields."""
        rows = self.db.execute(
            "SELECT d.*, i.position, i.title, i.context, i.question, i.gold FROM adjudications d JOIN items i ON "
            "i.id = d.item_id AND i.content = d.content").fetchall()  # fmt: skip
        return {(r["item_id"], r["predicted"]): dict(r) for r in rows}

    def _adjudicated_record(self, adj: dict[str, Any]) -> FeedbackRecord:
        """An adjudication as the export's record: annotator = human:<admin>; `meta.seconds` is the annotators' time
        on that answer, summed; `meta.adjudication` = {by, annotations: [{annotator, verdict, status}]} (the
        annotations it replaces) and `meta.provenance` = "adjudicated by <admin>"."""
        replaced = self.db.execute("SELECT annotator, verdict, status, seconds FROM annotations WHERE item_id=? AND "
                                   "predicted=? AND content=? ORDER BY annotator",
                                   (adj["item_id"], adj["predicted"], adj["content"])).fetchall()  # fmt: skip
        gold = json.loads(adj["gold"])
        meta = {"seconds": round(sum(r["seconds"] for r in replaced), 3), "updated": adj["updated"],
                "status": "annotated", "provenance": f"adjudicated by {adj['admin']}",
                "adjudication": {"by": adj["admin"], "annotations": [
                    {"annotator": f"human:{r['annotator']}", "verdict": r["verdict"], "status": r["status"]}
                    for r in replaced]},
                **right_answer_field(adj["feedback"])}  # fmt: skip
        return FeedbackRecord(id=adj["item_id"], question=adj["question"], context=adj["context"],
                              predicted_answer=adj["predicted"], gold_answers=gold, verdict=adj["verdict"],
                              feedback=adj["feedback"], annotator=f"human:{adj['admin']}",
                              template_version=TEMPLATE_VERSION, title=adj["title"], is_impossible=not gold,
                              meta=meta)  # fmt: skip

    def disagreements(self) -> list[dict[str, Any]]:
        """The answers (same item content, same predicted answer) that annotators judged with different verdicts
        (annotated or unsure), and those an admin adjudicated, in item order: the item's fields, whether the answer
        is the item's current one, every annotation of it (skipped ones too, with their reason) and the
        adjudication (None when there is none)."""
        adjudicated = self._adjudications()
        groups: dict[tuple[str, str], dict[str, Any]] = {}
        for r in self.db.execute(
            "SELECT a.annotator, a.item_id, a.predicted, a.verdict, a.feedback, a.status, a.note, a.seconds, "
            "a.updated, i.position, i.title, i.question, i.context, i.gold, i.predicted AS current, i.active "
            "FROM annotations a JOIN items i ON i.id = a.item_id AND i.content = a.content "
            "ORDER BY i.position, a.predicted, a.annotator"
        ):
            key = (r["item_id"], r["predicted"])
            if key not in groups:
                groups[key] = {"id": r["item_id"], "title": r["title"], "question": r["question"],
                               "context": r["context"], "gold": json.loads(r["gold"]), "predicted": r["predicted"],
                               "current_answer": bool(r["active"]) and r["predicted"] == r["current"],
                               "annotations": [], "adjudication": None}  # fmt: skip
            groups[key]["annotations"].append({k: r[k] for k in ("annotator", "verdict", "feedback", "status", "note",
                                                                 "seconds", "updated")})  # fmt: skip
        out = []
        for key, g in groups.items():
            verdicts = {a["verdict"] for a in g["annotations"] if a["status"] != "skipped"}
            if len(verdicts) > 1 or key in adjudicated:
                adj = adjudicated.get(key)
                if adj is not None:
                    g["adjudication"] = {k: adj[k] for k in ("admin", "verdict", "feedback", "updated")}
                g["disagree"] = len(verdicts) > 1
                out.append(g)
        return out

    # ------------------------------------------------------------------------------------------ history

    def history(self, item_id: str, annotator: str, everyone: bool = False) -> list[dict[str, Any]]:
        """An item's annotations other than `annotator`'s own of its current answer and content (that one is on the
        form): `annotator`'s own of earlier answers and earlier content, or with `everyone` (an admin) every
        annotator's, newest first. Each says whether it judged the current answer (`current_answer`) and the
        current question, passage and gold answers (`current_content`); the earlier content itself is not kept."""
        item = self._answer_key(item_id)
        rows = self.db.execute(
            "SELECT annotator, predicted, content, verdict, feedback, status, note, seconds, updated FROM annotations "
            "WHERE item_id=?" + ("" if everyone else " AND annotator=?") + " ORDER BY updated DESC",
            (item_id,) if everyone else (item_id, annotator)).fetchall()  # fmt: skip
        out = []
        for r in rows:
            current_content = r["content"] == item["content"]
            current_answer = current_content and r["predicted"] == item["predicted"]
            if r["annotator"] == annotator and current_answer:
                continue
            out.append({**{k: r[k] for k in ("annotator", "predicted", "verdict", "feedback", "status", "note",
                                             "seconds", "updated")},
                        "current_answer": current_answer, "current_content": current_content})  # fmt: skip
        return out

    def annotator_times(self) -> dict[str, dict[str, Any]]:
        """Time per item for each annotator, over their annotations of the items' current content (any status):
        {items, seconds (total), mean, median} (seconds per item)."""
        times: dict[str, list[float]] = {}
        for name, seconds in self.db.execute("SELECT a.annotator, a.seconds FROM annotations a JOIN items i ON "
                                             "i.id = a.item_id AND i.content = a.content"):  # fmt: skip
            times.setdefault(name, []).append(seconds)
        out = {}
        for name, values in times.items():
            values.sort()
            mid = len(values) // 2
            median = values[mid] if len(values) % 2 else (values[mid - 1] + values[mid]) / 2
            out[name] = {"items": len(values), "seconds": round(sum(values), 1),
                         "mean": round(sum(values) / len(values), 1), "median": round(median, 1)}  # fmt: skip
        return out

    # ------------------------------------------------------------------------------------------ import

    def import_file(self, path: Path, annotator: str | None = None) -> int:
        """Import feedback written elsewhere: FeedbackRecord JSONL, or UTF-8 CSV with columns id, verdict, feedback
        and optionally annotator, seconds and predicted_answer. Items must already be in the database; `annotator`
        overrides the file's. Each annotation is bound to its predicted_answer (the item's current answer when the
        CSV has no such column; a blank cell is refused unless the item's answer is the abstention '') and to the
        item's content (a JSONL record about another question, passage or gold answers is refused).

        All or nothing: every row is checked first, then all are written in one transaction. Idempotent: a row
        replaces the annotation of the same annotator, item and answer (its verdict, feedback and seconds), so
        importing a file again changes nothing. The same annotator, item and answer twice in one file is an error."""
        rows = checked_import(Path(path), annotator, self.item, self.path)
        now = time.time()
        with self._write():
            for name, qid, predicted, verdict, feedback, seconds, content in rows:
                self._ensure_annotator(name)
                self.db.execute(
                    "INSERT INTO annotations (annotator, item_id, predicted, verdict, feedback, seconds, created, "
                    "updated, content) VALUES (?,?,?,?,?,?,?,?,?) ON CONFLICT(annotator, item_id, predicted, content) "
                    "DO UPDATE SET verdict=excluded.verdict, feedback=excluded.feedback, seconds=excluded.seconds, "
                    "updated=excluded.updated, status='annotated', note=''",
                    (name, qid, predicted, verdict, feedback, seconds, now, now, content),
                )
        return len(rows)
