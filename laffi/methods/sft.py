"""`sft`: supervised fine-tuning on the gold answers, the baseline LaFFi is compared with.

QA prompt (the same few-shot prompt as at answer time) -> the first gold answer, or the abstention phrase for an
unanswerable question. Loss on the answer only. docs/methods.md shows the exact sequence.
"""

from __future__ import annotations

from typing import Any

from laffi import prompts
from laffi.methods.common import Method
from laffi.records import FeedbackRecord, Question
from laffi.training.examples import Example


def sft_examples(questions: list[Question], tokenizer: Any, shots: int) -> list[Example]:
    out = []
    for q in questions:
        gold = q.answers[0] if q.answers else ""
        out.append(Example("sft", q.id, prompts.render(prompts.qa_messages(q, shots), tokenizer),
                           prompts.answer_as_text(gold), group=q.context))  # fmt: skip
    return out


def build(questions: list[Question], feedback: list[FeedbackRecord] | None, tokenizer: Any, shots: int, seed: int,
          answers: dict[str, str] | None, train: Any = None) -> list[Example]:  # fmt: skip
    return sft_examples(questions, tokenizer, shots)


METHOD = Method("sft", title="SFT", summary="QA prompt -> gold answer (plain supervised fine-tuning)", build=build,
                order=10)
