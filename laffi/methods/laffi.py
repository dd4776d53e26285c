"""`laffi`: learn to predict the feedback on the model's own answers (LaFFi, Li et al. 2024, arXiv 2401.00907).

Feedback prompt (passage, question, the base model's own answer) -> the annotator's feedback text (verdict, why, the
right answer). Loss on the feedback only. docs/methods.md shows the exact sequence.
"""

from __future__ import annotations

from typing import Any

from laffi.methods.common import Method, feedback_examples, require_feedback
from laffi.records import FeedbackRecord, Question
from laffi.training.examples import Example


def build(questions: list[Question], feedback: list[FeedbackRecord] | None, tokenizer: Any, shots: int, seed: int,
          answers: dict[str, str] | None, train: Any = None) -> list[Example]:  # fmt: skip
    return feedback_examples("laffi", require_feedback("laffi", feedback), tokenizer)


METHOD = Method("laffi", title="LaFFi", summary="QA prompt + the model's own answer -> the feedback on it", build=build,
                reads_feedback=True,
                answers_from="feedback",
                predicts_feedback=True, order=20)
