"""The data set of the tests/server/test_page_*.py browser tests (no tests here): seven small questions (one with a
long passage, one unanswerable), the model's answers, three LLM drafts and guidelines with links and a table.
tests/server/conftest.py serves the app on it (`site`)."""

from __future__ import annotations

from pathlib import Path

from laffi.records import FeedbackRecord, Question
from laffi.server.store import Store

# An LLM draft as `laffi annotate --annotator llm` writes it: the prose names the answer, no closing sentence.
RAW_DRAFT = "Incorrect: the passage says the duke led them, not the river."
CLOSED_DRAFT = 'The passage says Rollo founded it. The right answer is "Rollo".'
GUIDELINES = """# Rules

Read [the SQuAD paper](https://example.org/squad) and the [section below](#keys).

| verdict | when |
|---|---|
| correct | it matches a gold answer |

## Keys

`c` correct
"""


def _q(qid: str, context: str, question: str, answer: str | None) -> Question:
    if answer is None:
        return Question(id=qid, title="T_" + qid, context=context, question=question, is_impossible=True)
    return Question(id=qid, title="T_" + qid, context=context, question=question, answers=[answer],
                    answer_starts=[context.index(answer)])  # fmt: skip


QUESTIONS = [
    _q("q0", "Emma married Cnut in 1017.", "Whom did Emma marry?", "Cnut"),
    _q("q1", "The duke led them across the river in 1066.", "Who led them?", "The duke"),
    _q("q2", "Rollo was a Viking leader who founded Normandy.", "Who founded Normandy?", "Rollo"),
    _q("q3", "William crossed the Channel in 1066.", "Who crossed the Channel?", "William"),
    _q("q4", "The Normans built castles in stone.", "Who painted the castles?", None),
    _q("q5", "Harold died at Hastings.", "Where did Harold die?", "Hastings"),
    _q("q6", " ".join(f"Sentence {k}: the Norman dukes ruled from Rouen for many years." for k in range(40)),
       "Where did the dukes rule from?", "Rouen"),
]  # fmt: skip
PREDICTIONS = {"q0": "Cnut", "q1": "the river", "q2": "William", "q3": "Harold", "q4": "", "q5": "Hastings",
               "q6": "Paris"}  # fmt: skip


def _draft(qid: str, verdict: str, feedback: str) -> FeedbackRecord:
    q = next(q for q in QUESTIONS if q.id == qid)
    return FeedbackRecord(id=qid, question=q.question, context=q.context, predicted_answer=PREDICTIONS[qid],
                          gold_answers=q.answers, verdict=verdict, feedback=feedback, annotator="llm:test-model",
                          template_version="test", title=q.title)  # fmt: skip


DRAFTS = [_draft("q1", "incorrect", RAW_DRAFT), _draft("q2", "incorrect", CLOSED_DRAFT),
          _draft("q6", "incorrect", "Paris is not in the passage; the dukes ruled from Rouen.")]  # fmt: skip


def prepare(db: Path) -> None:
    """The data set, with the drafts, in a new database at `db`."""
    store = Store(db)
    store.add_items(QUESTIONS, PREDICTIONS)
    store.set_drafts(DRAFTS, "drafts.jsonl")
    store.close()
