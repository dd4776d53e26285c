"""Typed records that flow between stages (questions, generations, revisions, feedback) and their checked readers:
a record of the wrong shape is one `LaffiError` line naming the file, line and field. Files are read and written by
laffi/files.py (atomic writes, size-capped inputs, checked JSON)."""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from laffi.errors import LaffiError
from laffi.files import parse_json, printable, read_input_text, read_json

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
    na_prob: float | None = None  # no-answer score at the first answer position (engines/steering.py)


@dataclass
class Revision:
    """Answer, then predict feedback on it, then revise: one question's history over the rounds."""

    id: str
    first_answer: str
    feedback: list[str] = field(default_factory=list)  # the feedback the model predicted, one per round
    verdicts: list[str] = field(default_factory=list)  # "correct", "incorrect" or "unparsed", one per round
    answers: list[str] = field(default_factory=list)  # the answer after each round
    final_answer: str = ""
    # The adapter's probability of "Verdict: incorrect" on its first answer (`engines.generation.verdict_scores`),
    # and whether that was above answer.revise_threshold, so the rounds ran (False: it kept its first answer).
    incorrect_prob: float | None = None
    revised: bool = True


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
        raise LaffiError(f"{where}: unknown field '{printable(unknown[0])}'")
    for name, f in fields.items():
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        if name not in data:
            if required:
                raise LaffiError(f"{where}: missing field '{name}'")
            continue
        _check_type(data[name], f.type, f"{where}: field '{name}'")
    if isinstance(data.get("meta"), dict):
        _check_meta(data["meta"], where)
    return cls(**data)


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _is_duration(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value >= 0


# The `meta` keys that reports add up (laffi/feedback/report.py, the LLM annotator's summary): a string or a NaN
# there would crash them, or silently poison a mean, long after the file was read.
_META_CHECKS = {"prompt_tokens": (_is_count, "an integer >= 0"), "completion_tokens": (_is_count, "an integer >= 0"),
                "seconds": (_is_duration, "a finite number >= 0")}  # fmt: skip


def _check_meta(meta: dict[str, Any], where: str) -> None:
    for key, (ok, expected) in _META_CHECKS.items():
        if key in meta and not ok(meta[key]):
            raise LaffiError(f"{where}: field 'meta.{key}' must be {expected}, got {json.dumps(meta[key])}")


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


def read_jsonl(path: str | Path, cls: type[T], *, tolerate_torn_tail: bool = False) -> list[T]:
    """Read typed records. With `tolerate_torn_tail`, an unterminated last line (a crash mid-append) is dropped."""
    text = read_input_text(path, "JSONL")
    name = printable(path)
    lines = text.split("\n")
    if tolerate_torn_tail and lines and lines[-1]:
        lines[-1] = ""
    out = []
    for no, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            data = parse_json(line)
        except json.JSONDecodeError as e:
            raise LaffiError(f"{name}:{no}: not valid JSON ({e.msg})") from None
        except ValueError as e:
            raise LaffiError(f"{name}:{no}: not valid JSON: {e}") from None
        out.append(from_dict(cls, data, f"{name}:{no}"))
    return out


# ---------------------------------------------------------------------------------------------- typed readers


def read_predictions(path: str | Path, questions: list[Question] | None = None) -> dict[str, str]:
    """Official-format predictions `{id: text}`; with `questions`, ids unknown to the data are an error."""
    preds = read_json(path, "predictions")
    name = printable(path)
    if not isinstance(preds, dict):
        raise LaffiError(f"{name}: expected a JSON object {{question_id: answer_text}}, got {type(preds).__name__}")
    for qid, text in preds.items():
        if not isinstance(text, str):
            raise LaffiError(f"{name}: '{printable(qid)}': answer must be a string, got {type(text).__name__}")
    if questions is not None:
        known = {q.id for q in questions}
        unknown = [qid for qid in preds if qid not in known]
        if unknown:
            raise LaffiError(f"{name}: '{printable(unknown[0])}': unknown question id ({len(unknown)} unknown in all)")
    return preds


def read_feedback(path: str | Path) -> list[FeedbackRecord]:
    """Feedback records (JSONL), each with a verdict of 'correct' or 'incorrect' and some feedback text."""
    records = read_jsonl(path, FeedbackRecord)
    name = printable(path)
    for no, r in enumerate(records, start=1):
        if r.verdict not in ("correct", "incorrect"):
            raise LaffiError(f"{name}: record {no} ('{printable(r.id)}'): verdict must be 'correct' or 'incorrect'")
        if not r.feedback.strip():
            raise LaffiError(f"{name}: record {no} ('{printable(r.id)}'): empty feedback")
    return records
