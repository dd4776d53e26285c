"""The data set of the tests/integration/test_app_*.py browser tests (no tests here), a small purpose-built one, and
the real server on it (`laffi annotate-server`, with any extra flags). tests/integration/conftest.py serves it with
its drafts (`site`)."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path

from laffi.data import write_squad
from laffi.records import FeedbackRecord, Question, to_dict

LONG_WORD = "x" * 10_000
DRAFT_FEEDBACK = 'The passage says the duke led them, not the river. The right answer is "The duke".'


def _q(qid: str, title: str, context: str, question: str, answer: str | None, copies: int = 1) -> Question:
    if answer is None:
        return Question(id=qid, title=title, context=context, question=question, is_impossible=True)
    start = context.index(answer)
    return Question(id=qid, title=title, context=context, question=question, answers=[answer] * copies,
                    answer_starts=[start] * copies)  # fmt: skip


def questions() -> list[Question]:
    """Eight items, each for a purpose: whole-word highlight and repeated gold (0), a long passage (1), a 10,000
    character word (2), an item with an AI draft of its answer (3), one whose draft judged another answer (4), an
    unanswerable one the model abstained on (5), two plain ones (6, 7)."""
    long_context = " ".join(f"Sentence {k}: the Norman dukes ruled their lands from Rouen for many years."
                            for k in range(70))  # fmt: skip
    return [
        _q("q-words", "Words", "Their army crossed the river. The duke led them home.", "Who led them home?",
           "The duke", copies=3),
        _q("q-long", "Long_passage", long_context, "Where did the dukes rule from?", "Rouen"),
        _q("q-wide", "Wide", f"Before {LONG_WORD} after the year 911.", "When?", "911"),
        _q("q-draft", "Drafted", "The duke led them across the river in 1066.", "Who led them?", "The duke"),
        _q("q-other", "Other_draft", "Rollo was a Viking leader who founded Normandy.", "Who founded Normandy?",
           "Rollo"),
        _q("q-none", "Unanswerable", "The Normans built castles in stone.", "Who painted the castles?", None),
        _q("q-plain1", "Plain", "Emma married Cnut in 1017.", "Whom did Emma marry?", "Cnut"),
        _q("q-plain2", "Plain", "William crossed the Channel in 1066.", "Who crossed the Channel?", "William"),
    ]  # fmt: skip


PREDICTIONS = {"q-words": "the", "q-long": "Paris", "q-wide": "911", "q-draft": "the river", "q-other": "Rollo",
               "q-none": "", "q-plain1": "Cnut", "q-plain2": "Harold"}  # fmt: skip


def drafts(qs: list[Question]) -> list[FeedbackRecord]:
    by_id = {q.id: q for q in qs}

    def record(qid: str, predicted: str, verdict: str, feedback: str) -> FeedbackRecord:
        q = by_id[qid]
        return FeedbackRecord(id=qid, question=q.question, context=q.context, predicted_answer=predicted,
                              gold_answers=q.answers, verdict=verdict, feedback=feedback, annotator="llm:test-model",
                              template_version="test", title=q.title)  # fmt: skip

    return [record("q-draft", "the river", "incorrect", DRAFT_FEEDBACK),
            record("q-other", "William", "incorrect", 'Wrong. The right answer is "Rollo".')]  # fmt: skip


def build(folder: Path) -> dict[str, Path]:
    """The data, predictions, drafts and guidelines files in `folder`."""
    qs = questions()
    paths = {"data": folder / "data.json", "preds": folder / "preds.json", "drafts": folder / "drafts.jsonl",
             "db": folder / "fb.sqlite", "log": folder / "server.log"}  # fmt: skip
    write_squad(qs, paths["data"])
    paths["preds"].write_text(json.dumps(PREDICTIONS))
    paths["drafts"].write_text("".join(json.dumps(to_dict(r)) + "\n" for r in drafts(qs)))
    return paths


@contextlib.contextmanager
def serve(paths: dict[str, Path], *extra: object) -> Iterator[str]:
    """`laffi annotate-server` on the files from `build`, with extra flags; yields its URL."""
    from server_helper import annotation_server

    with annotation_server(paths["data"], paths["preds"], paths["db"], paths["log"], *extra) as (url, _):
        yield url
