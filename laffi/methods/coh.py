"""`coh`: Chain of Hindsight (Liu et al. 2023): QA prompt -> the model's answer under a quality marker, the feedback,
and (when it was wrong) the gold answer under the positive marker; loss on the answers only
(`prompts.coh_segments`). At answer time the adapter answers after the positive marker (`answer_prefix`)."""

from __future__ import annotations

import random
from typing import Any

from laffi import prompts
from laffi.methods.common import Method, record_question, require_feedback
from laffi.records import FeedbackRecord, Question
from laffi.training.examples import Example


def build(questions: list[Question], feedback: list[FeedbackRecord] | None, tokenizer: Any, shots: int, seed: int,
          answers: dict[str, str] | None, train: Any = None) -> list[Example]:  # fmt: skip
    """Each marker phrasing is drawn with `seed` and the question id, so one example's draw never depends on others."""
    out = []
    for r in require_feedback("coh", feedback):
        gold = r.gold_answers[0] if r.gold_answers else ""
        parts = prompts.coh_segments(r.predicted_answer, r.verdict, r.feedback, gold, random.Random(f"{seed}:{r.id}"))
        text = prompts.render(prompts.qa_messages(record_question(r), shots), tokenizer)
        out.append(Example("coh", r.id, text, "".join(t for t, _ in parts), parts, group=r.context))
    return out


METHOD = Method("coh", "Chain of Hindsight: answers under quality markers, with the feedback between them",
                build=build, reads_feedback=True, answer_prefix=prompts.coh_answer_prefix(), order=40)
