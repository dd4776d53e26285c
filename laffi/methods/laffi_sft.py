"""`laffi+sft`: the `laffi` and `sft` examples shuffled together (one of each per training question).

The QA examples keep the model answering in the QA form; alone, feedback prediction can turn every reply of a small
model into feedback (docs/results.md).
"""

from __future__ import annotations

from typing import Any

from laffi.methods import laffi, sft
from laffi.methods.common import Method
from laffi.records import FeedbackRecord, Question
from laffi.training.examples import Example


def build(questions: list[Question], feedback: list[FeedbackRecord] | None, tokenizer: Any, shots: int, seed: int,
          answers: dict[str, str] | None, train: Any = None) -> list[Example]:  # fmt: skip
    if not feedback:
        laffi.build(questions, feedback, tokenizer, shots, seed, answers, train)  # raises the one-line error
    return (sft.build(questions, feedback, tokenizer, shots, seed, answers, train)
            + laffi.build(questions, feedback, tokenizer, shots, seed, answers, train))  # fmt: skip


METHOD = Method("laffi+sft", "both laffi and sft examples, shuffled together", build=build, reads_feedback=True,
                answers_from="feedback",
                predicts_feedback=True, order=30)
