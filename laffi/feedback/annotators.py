"""The annotators, and the registry that finds them: who writes the feedback on an answer (`annotate.annotator`).

An annotator either writes its records from the question, the predicted answer and the gold answers alone
(`write`: reference, simulated-human), or runs a language model (`runs_model`: llm, few-shot or learned; the
pipeline loads the model and, for the learned one, trains it: `laffi.pipeline.stages.annotate`). Adding an annotator
is one entry here, its module and its test; nothing else names annotators (tests/test_method_names.py).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from laffi.config import AnnotateConfig
from laffi.errors import LaffiError
from laffi.records import FeedbackRecord, Question

# write(questions, predictions, settings) -> one record per question with a prediction, in the questions' order.
Write = Callable[[list[Question], dict[str, str], AnnotateConfig], list[FeedbackRecord]]


@dataclass(frozen=True)
class Annotator:
    name: str
    summary: str  # one line: where its feedback comes from
    write: Write | None = None  # None: it runs a model (`runs_model`)

    @property
    def runs_model(self) -> bool:
        return self.write is None

    def label(self, cfg: AnnotateConfig) -> str:
        """How the report names this annotator with these settings."""
        if not self.runs_model:
            return self.name
        if cfg.learn_from_examples:
            return f"{self.name} fine-tuned on each cell's human share (learn_from_examples)"
        return f"{self.name} with {cfg.shots} shots"


def _reference(questions: list[Question], preds: dict[str, str], cfg: AnnotateConfig) -> list[FeedbackRecord]:
    from laffi.feedback.reference import annotate

    return [annotate(q, preds[q.id], cfg.correct_threshold) for q in questions if q.id in preds]


def _simulated(questions: list[Question], preds: dict[str, str], cfg: AnnotateConfig) -> list[FeedbackRecord]:
    from laffi.feedback.simulated import simulated_human_feedback

    return simulated_human_feedback(questions, preds, cfg.seed)


ANNOTATORS = (
    Annotator("reference", "deterministic, from the gold answers", _reference),
    Annotator("llm", "a language model taught by human-written examples (few-shot, or LoRA-trained on them)"),
    Annotator("simulated-human", "a labelled stand-in for people, built from the gold answers", _simulated),
)


def names() -> list[str]:
    return [a.name for a in ANNOTATORS]


def get(name: str, where: str = "annotate.annotator") -> Annotator:
    """The annotator called `name`; an unknown name is a one-line error naming `where`."""
    for a in ANNOTATORS:
        if a.name == name:
            return a
    raise LaffiError(f"{where}: unknown annotator '{name}' (known: {', '.join(names())})")
