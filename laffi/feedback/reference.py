"""The `reference` annotator: deterministic natural-language feedback written from the gold answers.

It judges the predicted answer with the SQuAD normalisation and F1 (correct when the best F1 over the gold answers
reaches a threshold; an abstention is correct only on an unanswerable question), says why, points at the passage
sentence that holds the gold answer, and always ends with the right answer in one parseable form:
`The right answer is "<answer>".` or `The right answer is unanswerable.` (see `prompts.parse_feedback`).
"""

from __future__ import annotations

import re

from laffi import prompts
from laffi.config import CORRECT_THRESHOLD
from laffi.metrics import score_one
from laffi.records import FeedbackRecord, Question

ANNOTATOR_ID = "reference"
TEMPLATE_VERSION = f"reference-v1/{prompts.FEEDBACK_TEMPLATE_VERSION}"
MAX_SENTENCE_CHARS = 300

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9\"'(])")


def supporting_sentence(context: str, start: int) -> str:
    """The sentence of `context` that contains character `start` (where the gold answer begins)."""
    begin = 0
    for m in _SENTENCE_END.finditer(context):
        if m.start() >= start:
            return _clip(context[begin : m.start()].strip())
        begin = m.end()
    return _clip(context[begin:].strip())


def _clip(sentence: str) -> str:
    if len(sentence) <= MAX_SENTENCE_CHARS:
        return sentence
    return sentence[: MAX_SENTENCE_CHARS - 3].rstrip() + "..."


def judge(q: Question, predicted: str, threshold: float) -> tuple[str, float]:
    """(verdict, best F1). An abstention ("") scores F1 1 only on unanswerable questions, as in SQuAD 2.0."""
    _, f1 = score_one(q, predicted)
    return ("correct" if f1 >= threshold else "incorrect"), float(f1)


def feedback_text(q: Question, predicted: str, verdict: str, f1: float) -> str:
    """The feedback for one answer: verdict, why, and the right answer (with its supporting sentence)."""
    if not q.answers:
        if verdict == "correct":
            why = "The passage does not answer this question, so abstaining is right."
        else:
            why = f'"{predicted}" is wrong: the passage does not answer this question.'
        return f"Verdict: {verdict}. {why} The right answer is {prompts.ABSTAIN_PHRASE}."
    gold = q.answers[0]
    evidence = f'The passage says: "{supporting_sentence(q.context, q.answer_starts[0])}"'
    if verdict == "correct":
        why = f'"{predicted}" answers the question.'
    elif not predicted:
        why = "Abstaining is wrong: the passage answers this question."
    elif f1 > 0:
        why = f'"{predicted}" is only partly right.'
    else:
        why = f'"{predicted}" is wrong.'
    return f'Verdict: {verdict}. {why} {evidence} The right answer is "{gold}".'


def annotate(q: Question, predicted: str, threshold: float = CORRECT_THRESHOLD) -> FeedbackRecord:
    verdict, f1 = judge(q, predicted, threshold)
    return FeedbackRecord(
        id=q.id,
        question=q.question,
        context=q.context,
        predicted_answer=predicted,
        gold_answers=list(q.answers),
        verdict=verdict,
        feedback=feedback_text(q, predicted, verdict, f1),
        annotator=ANNOTATOR_ID,
        template_version=TEMPLATE_VERSION,
        title=q.title,
        is_impossible=not q.answers,
        meta={"f1": round(f1, 4), "threshold": threshold},
    )
