"""Annotations written outside the app (`laffi annotate import`), read from a file and checked before the database
writes any of them.

`read_import` reads FeedbackRecord JSONL or UTF-8 CSV into rows; `checked_import` checks every row against the
database's items (annotator name, verdict and feedback, seconds, the answer and the content it judged), so that
`Store.import_file` writes all the rows or none. The checks of single values (`check_annotator_name`,
`check_judgement`, `check_seconds`) and `content_hash`, which binds an annotation to its item's content, are also
what the store applies to the page's saves and to its items; they are here, below the store, because an import file
must pass them before the store is written. This module never opens the database.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from laffi.errors import LaffiError
from laffi.files import printable, read_input_bytes
from laffi.records import FeedbackRecord, read_jsonl

# Time on one item, per visit and summed over visits. A day is far beyond any real annotation; more means a clock or a
# client is wrong, and unbounded sums could reach inf, which the JSONL export could not write.
MAX_SECONDS = 24 * 3600.0
# An import file's row as it is written: annotator, item id, predicted answer, verdict, feedback, seconds, content hash.
ImportRow = tuple[str, str, str, str, str, float, str]


def content_hash(question: str, context: str, gold: list[str]) -> str:
    """What an annotation is about besides the answer: the question, the passage and the gold answers."""
    return hashlib.sha256(json.dumps([question, context, list(gold)], ensure_ascii=False).encode()).hexdigest()


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


def check_judgement(verdict: Any, feedback: Any, where: str) -> tuple[str, str]:
    """An annotation's verdict and feedback (stripped), or a LaffiError whose message starts with `where`."""
    if verdict not in ("correct", "incorrect"):
        raise LaffiError(f"{where}verdict must be 'correct' or 'incorrect', got '{str(verdict)[:40]}'")
    if not isinstance(feedback, str) or not feedback.strip():
        raise LaffiError(f"{where}feedback is empty")
    return verdict, feedback.strip()


def read_import(path: Path) -> list[dict[str, Any]]:
    """The rows of an import file as dicts (id, verdict, feedback, annotator, seconds, predicted_answer when given),
    each with `seconds_field`, the name of its seconds field for error messages; a CSV's rows with `blank_cells` (an
    empty cell there is a cell left blank), a JSONL record's with the `content` hash of what it judged."""
    if path.is_dir():
        raise LaffiError(f"{path}: is a directory, expected a CSV or JSONL feedback file")
    if path.suffix.lower() == ".csv":
        raw = read_input_bytes(path, "CSV")  # a FIFO, a device, a file over the size cap: one line, never a hang
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
            header = text.split("\n", 1)[0].rstrip("\r")
            shown = printable(header if len(header) <= 80 else header[:80] + "...")
            for sep in (";", "\t", "|"):
                if {"id", "verdict", "feedback"} <= {c.strip() for c in header.split(sep)}:
                    # A spreadsheet saved with the separator of its locale: say so, not "missing column".
                    raise LaffiError(f"{path}: columns separated by {sep!r}, not ',' (header '{shown}'); save the CSV "
                                     "comma-separated")  # fmt: skip
            raise LaffiError(f"{path}: missing column '{sorted(missing)[0]}' (header '{shown}')")
        return [{**row, "seconds_field": "seconds", "blank_cells": True} for row in rows]
    records = read_jsonl(path, FeedbackRecord)
    return [{"id": r.id, "verdict": r.verdict, "feedback": r.feedback, "annotator": r.annotator,
             "seconds": r.meta.get("seconds"), "predicted_answer": r.predicted_answer, "seconds_field": "meta.seconds",
             "content": content_hash(r.question, r.context, r.gold_answers)}
            for r in records]  # fmt: skip


def checked_import(
    path: Path, annotator: str | None, item_at: Callable[[str], dict[str, Any] | None], db: Path
) -> list[ImportRow]:
    """The rows of the import file at `path`, each checked against the items of the database `db` (`item_at`: an
    item id's served item, or None), as the annotations `Store.import_file` writes; the first bad row is a LaffiError
    and nothing is returned. `annotator` overrides the file's."""
    rows = []
    seen: dict[tuple[str, str, str], int] = {}
    for no, row in enumerate(read_import(path), start=1):
        qid = str(row.get("id") or "")
        where = f"{path}: row {no} ('{qid[:100]}')"
        name = (annotator or row.get("annotator") or "").removeprefix("human:")
        if not name:
            raise LaffiError(f"{where}: no annotator (add a column 'annotator' or pass --annotator)")
        try:
            check_annotator_name(name)
        except LaffiError as e:
            raise LaffiError(f"{where}: {e}") from None
        item = item_at(qid)
        if item is None:
            raise LaffiError(f"{where}: question id is not an item of {db}")
        verdict, feedback = check_judgement(row.get("verdict"), row.get("feedback"), f"{where}: ")
        seconds = check_seconds(row.get("seconds"), f"{where}: {row['seconds_field']}")
        predicted = row.get("predicted_answer")
        if row.get("blank_cells") and predicted == "" and item["predicted"] != "":
            # A spreadsheet's empty cell is not an abstention: binding the verdict to '' would mislabel it.
            raise LaffiError(f"{where}: predicted_answer is blank but the item's answer is "
                             f"'{item['predicted'][:100]}'; write the answer that was judged")  # fmt: skip
        predicted = item["predicted"] if predicted is None else predicted
        if row.get("content") is not None and row["content"] != item["content"]:
            raise LaffiError(f"{where}: its question, passage or gold answers differ from the item's in "
                             f"{db} (the data changed since it was written)")  # fmt: skip
        key = (name, qid, predicted)
        if key in seen:
            raise LaffiError(f"{where}: same annotator, id and answer as row {seen[key]}")
        seen[key] = no
        rows.append((name, qid, predicted, verdict, feedback, seconds, item["content"]))
    return rows
