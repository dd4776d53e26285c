"""The "simulated human": a documented stand-in for human annotators where no people annotate (CI, the demo, the
experiment grid's human-fraction ablation).

It knows exactly what the reference annotator knows (the gold answers; the same verdict rule) but phrases its feedback
the way people do: several wordings, chosen by a seeded generator per question, short and informal, and not always
ending in the reference's parseable "The right answer is ..." sentence. Every record is labelled
`annotator="simulated-human:paraphrase-v1"` so that no report can mistake it for real human work; it records no
annotation time (a real annotator's seconds come from the annotation app).
"""

from __future__ import annotations

import random

from laffi.config import CORRECT_THRESHOLD
from laffi.feedback.reference import judge, supporting_sentence
from laffi.records import FeedbackRecord, Question

ANNOTATOR_ID = "simulated-human:paraphrase-v1"
TEMPLATE_VERSION = "simulated-human-v1"

# {pred}: the model's answer, {gold}: the first gold answer, {evidence}: the passage sentence holding it.
_CORRECT_ANSWERED = [
    'Correct. "{pred}" is what the passage says.',
    'Yes, "{pred}" is right: "{evidence}"',
    "That's right.",
    'Right answer. The passage states it here: "{evidence}"',
]
_CORRECT_ABSTAINED = [
    "Correct to abstain: the passage never says.",
    "Good, the passage does not answer this question, so no answer is the right call.",
    "Right, nothing in the text answers that.",
]
_WRONG_ON_ANSWERED = [
    'No. The passage says "{evidence}" so it should be "{gold}".',
    'Incorrect, the answer is "{gold}", not "{pred}".',
    'Not right. Look at this sentence: "{evidence}" The right answer is "{gold}".',
    'Wrong. It\'s "{gold}".',
]
_ABSTAINED_ON_ANSWERED = [
    'It is in the passage: "{evidence}" The answer is "{gold}".',
    'Shouldn\'t abstain here, the answer is "{gold}".',
    'Abstaining is wrong. The right answer is "{gold}".',
]
_ANSWERED_ON_UNANSWERABLE = [
    'The passage doesn\'t say this at all, so "{pred}" is made up. It should abstain.',
    'Incorrect: there is no answer to this in the text. "{pred}" is a guess.',
    "Wrong, this question can't be answered from the passage. The right answer is unanswerable.",
]


def phrasings(q: Question, predicted: str, verdict: str) -> list[str]:
    """The wordings the simulated human may use for this case."""
    if verdict == "correct":
        return _CORRECT_ANSWERED if predicted else _CORRECT_ABSTAINED
    if not q.answers:
        return _ANSWERED_ON_UNANSWERABLE
    return _WRONG_ON_ANSWERED if predicted else _ABSTAINED_ON_ANSWERED


def annotate_one(q: Question, predicted: str, seed: int = 0, threshold: float = CORRECT_THRESHOLD) -> FeedbackRecord:
    verdict, f1 = judge(q, predicted, threshold)
    # A generator per question (not one for the whole list): a record does not depend on which others are annotated.
    rng = random.Random(f"{seed}:{q.id}")
    template = rng.choice(phrasings(q, predicted, verdict))
    evidence = supporting_sentence(q.context, q.answer_starts[0]) if q.answers and q.answer_starts else ""
    text = template.format(pred=predicted, gold=q.answers[0] if q.answers else "", evidence=evidence)
    return FeedbackRecord(
        id=q.id, question=q.question, context=q.context, predicted_answer=predicted, gold_answers=list(q.answers),
        verdict=verdict, feedback=text, annotator=ANNOTATOR_ID, template_version=TEMPLATE_VERSION, title=q.title,
        is_impossible=not q.answers, meta={"simulated": True, "seed": seed, "f1": round(f1, 4)},
    )  # fmt: skip


def simulated_human_feedback(
    questions: list[Question], predictions: dict[str, str], seed: int = 0
) -> list[FeedbackRecord]:
    """Simulated-human feedback on every question that has a prediction (in the questions' order)."""
    return [annotate_one(q, predictions[q.id], seed) for q in questions if q.id in predictions]
