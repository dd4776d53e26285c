"""Typed records that flow between stages, and their JSON/JSONL (de)serialisation.

Every write is atomic (temporary file in the same directory, then rename) so an interrupted stage never leaves a
half-written output. Append-only JSONL files are how long stages resume: a torn last line is dropped on reading.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from laffi.errors import LaffiError

T = TypeVar("T")


@dataclass
class Question:
    """One SQuAD 2.0 question with its passage. `answers` is empty when `is_impossible`."""

    id: str
    title: str
    context: str
    question: str
    answers: list[str] = field(default_factory=list)
    answer_starts: list[int] = field(default_factory=list)
    is_impossible: bool = False


@dataclass
class Generation:
    """One model output: the raw text it generated and the answer parsed from it ("" = abstain)."""

    id: str
    raw: str
    answer: str


@dataclass
class Revision:
    """Answer, then predict feedback on it, then revise: one question's history over the rounds."""

    id: str
    first_answer: str
    feedback: list[str] = field(default_factory=list)  # the feedback the model predicted, one per round
    verdicts: list[str] = field(default_factory=list)  # "correct", "incorrect" or "unparsed", one per round
    answers: list[str] = field(default_factory=list)  # the answer after each round
    final_answer: str = ""


@dataclass
class FeedbackRecord:
    """Natural-language feedback on one predicted answer. Human, LLM and reference annotators all write this."""

    id: str
    question: str
    context: str
    predicted_answer: str
    gold_answers: list[str]
    verdict: str  # "correct" or "incorrect"
    feedback: str
    annotator: str  # "reference", "human:<name>", "llm:<model>"
    template_version: str
    title: str = ""
    is_impossible: bool = False
    meta: dict[str, Any] = field(default_factory=dict)


def to_dict(record: Any) -> dict[str, Any]:
    return dataclasses.asdict(record)


def from_dict(cls: type[T], data: Any, where: str) -> T:
    """Build a dataclass from a dict, naming `where` (file:line) and the field on any mismatch."""
    if not isinstance(data, dict):
        raise LaffiError(f"{where}: expected a JSON object, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise LaffiError(f"{where}: unknown field '{unknown[0]}'")
    for name, f in fields.items():
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        if name not in data:
            if required:
                raise LaffiError(f"{where}: missing field '{name}'")
            continue
        _check_type(data[name], f.type, f"{where}: field '{name}'")
    return cls(**data)


_SIMPLE_TYPES = {"str": str, "bool": bool, "float": (int, float), "int": int}


def _check_type(value: Any, annotation: Any, where: str) -> None:
    # Annotations are strings because of `from __future__ import annotations`; we only use a few shapes.
    ann = str(annotation)
    if ann in _SIMPLE_TYPES:
        ok = isinstance(value, _SIMPLE_TYPES[ann]) and not (ann != "bool" and isinstance(value, bool))
    elif ann.startswith("list["):
        inner = _SIMPLE_TYPES[ann[5:-1]]
        ok = isinstance(value, list) and all(isinstance(v, inner) and not isinstance(v, bool) for v in value)
    elif ann.startswith("dict["):
        ok = isinstance(value, dict)
    else:
        ok = True
    if not ok:
        raise LaffiError(f"{where} has the wrong type ({type(value).__name__}, expected {ann})")


# ---------------------------------------------------------------------------------------------- atomic writes


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write `text` to `path` via a temporary file + rename, so readers never see a partial file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        # mkstemp creates 0600 files; give the output the permissions a normal open() would.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: str | Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def read_json(path: str | Path, what: str = "JSON") -> Any:
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise LaffiError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise LaffiError(f"{path}: is a directory, expected a {what} file") from None
    try:
        return json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise LaffiError(f"{path}: not UTF-8 text (byte {e.start})") from None
    except json.JSONDecodeError as e:
        raise LaffiError(f"{path}: not valid JSON (line {e.lineno}, column {e.colno}: {e.msg})") from None


def write_jsonl(path: str | Path, records: Iterable[Any]) -> None:
    lines = [json.dumps(to_dict(r), ensure_ascii=False) for r in records]
    atomic_write_text(path, "".join(line + "\n" for line in lines))


def read_jsonl(path: str | Path, cls: type[T], *, tolerate_torn_tail: bool = False) -> list[T]:
    """Read typed records. With `tolerate_torn_tail`, an unterminated last line (a crash mid-append) is dropped."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise LaffiError(f"{path}: file not found") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise LaffiError(f"{path}: not UTF-8 text (byte {e.start})") from None
    lines = text.split("\n")
    if tolerate_torn_tail and lines and lines[-1]:
        lines[-1] = ""
    out = []
    for no, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            data = json.loads(line)
        except json.JSONDecodeError as e:
            raise LaffiError(f"{path}:{no}: not valid JSON ({e.msg})") from None
        out.append(from_dict(cls, data, f"{path}:{no}"))
    return out


class JsonlAppender:
    """Append records one line at a time (flushed), so a killed stage can resume from what is on disk."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._truncate_torn_tail()
        self._f = open(self.path, "a", encoding="utf-8")

    def _truncate_torn_tail(self) -> None:
        if not self.path.exists():
            return
        data = self.path.read_bytes()
        end = data.rfind(b"\n") + 1
        if end != len(data):
            with open(self.path, "r+b") as f:
                f.truncate(end)

    def append(self, record: Any) -> None:
        self._f.write(json.dumps(to_dict(record), ensure_ascii=False) + "\n")
        self._f.flush()

    def close(self) -> None:
        self._f.close()

    def __enter__(self) -> JsonlAppender:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def iter_chunks(items: list[T], size: int) -> Iterator[list[T]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]
