"""`sdft`: on-policy self-distillation from feedback (SDFT: Shenfeld et al. 2026, "Self-Distillation Enables
Continual Learning", arXiv 2601.19897; TRL's `trl.experimental.sdft.SDFTTrainer`).

Each training example is one feedback record. The *student* sees the plain QA prompt (the run's shots, as at answer
time); the *teacher* is the same model shown the model's first answer and the feedback on it, in one of two layouts
(`train.sdft_teacher_prompt`): the refinement prompt (`prompts.refine_messages`, refine's prompt, no shots; the
default) or the student's QA prompt with the first answer and the feedback added to the question's turn
(`prompts.qa_revise_messages`: SDFT's own layout, which keeps the student's shots and so its answer form). The
headroom probe of the same run uses the same layout for its conditions. At every step
the student samples a completion of its own prompt (on-policy, `train.sdft_temperature`); both read that completion,
each after its own prompt, and the loss is the divergence between the teacher's next-token distribution and the
student's at every completion token (`train.sdft_distillation_*`), averaged over each completion's tokens and then
over the step's examples. Only the student's forward pass has gradients; the teacher is the model without the
adapter (`train.sdft_teacher_model_kind: base`, TRL's default), the student itself (`live`) or an exponential moving
average of the adapter (`ema`). docs/methods.md shows the exact student and teacher sequences.

Why laffi's own loop and not TRL's SDFTTrainer (whose loss this reproduces; tests/test_sdft.py compares the two on one
batch): TRL builds the teacher prompt as `teacher_prompt_template.format(prompt=..., privileged_context=...)` and
requires the student prompt inside it as text, while laffi's teacher prompts are chats (the refinement prompt, or the
QA chat with an extended last turn, which a format string over the rendered student prompt cannot make); and
laffi's stage trains every method through `laffi.training.loop.train` (its resumable `ADAPTER.partial/` checkpoint,
settings record and cache keys, LoRA in the base model's bf16, shared checkpointing policy, one-line errors, progress
bar and TensorBoard events), which an HF Trainer would replace with its own. The loop runs
`laffi.training.distill.SelfDistillation` for examples that carry a teacher prompt; everything else (schedule,
optimizer, checkpoints) is the loop's. TRL's settings at their defaults, except the completion length (laffi's answers
are short: 32 tokens, as at answer time) and one completion per example and step (TRL's `num_generations` is 8: here
another epoch samples again). TRL's importance-sampling clip (`distillation_is_clip`) only acts when rollouts are reused
across optimizer steps, which TRL's defaults and this loop never do: each step samples with the weights it updates.
Sampling and the teacher run without dropout; the student's forward pass keeps `train.lora_dropout` (TRL's
`disable_dropout` turns it off: 0 gives the same).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from laffi import prompts
from laffi.config import ModelConfig, TrainConfig
from laffi.errors import LaffiError
from laffi.methods.common import Method, record_question, require_feedback
from laffi.records import FeedbackRecord, Question
from laffi.training.distill import check_settings, prompt_ids
from laffi.training.examples import Example


def student_prompt(r: FeedbackRecord, tokenizer: Any, shots: int) -> str:
    """The QA prompt of the record's question, as at answer time: the student never sees the feedback."""
    return prompts.render(prompts.qa_messages(record_question(r), shots), tokenizer)


def teacher_prompt(r: FeedbackRecord, tokenizer: Any, shots: int = 0, layout: str = "refinement") -> str:
    """The model's first answer and the feedback on it, in the layout `train.sdft_teacher_prompt` names:
    'refinement' the refinement prompt (`refine`'s prompt), 'qa' the student's QA prompt with them added
    (`prompts.revise_messages`; the headroom probe's `feedback` condition in the same layout)."""
    return prompts.render(prompts.revise_messages(layout, record_question(r), shots, r.predicted_answer, r.feedback),
                          tokenizer)  # fmt: skip


def build(questions: list[Question], feedback: list[FeedbackRecord] | None, tokenizer: Any, shots: int, seed: int,
          answers: dict[str, str] | None, train: Any = None) -> list[Example]:  # fmt: skip
    """One example per feedback record: the student prompt, no fixed completion (the student samples it), the
    teacher prompt."""
    layout = (train or TrainConfig()).sdft_teacher_prompt
    return [Example("sdft", r.id, student_prompt(r, tokenizer, shots), "", group=r.context,
                    teacher_prompt=teacher_prompt(r, tokenizer, shots, layout))
            for r in require_feedback("sdft", feedback)]  # fmt: skip


def prepare(questions: list[Question], feedback: list[FeedbackRecord] | None, out: Path, model: ModelConfig,
            cfg: TrainConfig, shots: int, progress: bool) -> tuple[Any, Any, Any]:  # fmt: skip
    """The records about training questions (the student generates during training, in this one process)."""
    check_settings(cfg)
    known = {q.id for q in questions}
    records = [r for r in require_feedback("sdft", feedback) if r.id in known]
    if not records:
        raise LaffiError("feedback: no record is about one of the training questions")
    return records, None, None


def step_positions(example: Example, tokenizer: Any, cfg: TrainConfig) -> int:
    """Token positions one example costs a step beyond its row (the student's prompt), at the longest completion:
    sampling (the prompt's prefill again and one position per new token), the completion in the student's forward
    pass, and the teacher's forward pass over its prompt and the completion."""
    student, teacher = prompt_ids([example.prompt, example.teacher_prompt or ""], tokenizer, cfg)
    completion = cfg.sdft_max_completion_length
    return (len(student) + completion) + completion + (len(teacher) + completion)


METHOD = Method("sdft", title="SDFT", summary="on-policy self-distillation: the model with the feedback in its prompt "
                "teaches the model without it, on the model's own samples", build=build, reads_feedback=True,
                prepare=prepare, step_positions=step_positions, order=65)  # fmt: skip
