"""`critique`: the laffi objective on feedback about answers that are not the model's own (critique fine-tuning,
Wang, Yue, Chen 2025).

Before training, the answers of `train.answers_from` (a predictions file from any model, an adapter directory whose
answers are generated here, or base-Kshot: the run's model with K shots) are judged by the reference annotator; the
model then learns to predict that feedback.
Without `answers_from`, the given feedback records are used as they are (feedback someone wrote on other answers).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from laffi import prompts
from laffi.config import AnnotateConfig, ModelConfig, TrainConfig
from laffi.errors import LaffiError
from laffi.methods.common import Method, answers_source, feedback_examples, generate, require_feedback, work_dir
from laffi.records import FeedbackRecord, Question, read_predictions
from laffi.training.examples import Example


def critique_feedback(questions: list[Question], answers_from: str, out: Path, model: ModelConfig, shots: int,
                      progress: bool = True) -> tuple[list[FeedbackRecord], dict[str, Any]]:  # fmt: skip
    """Reference-annotator feedback on the answers of `answers_from` to the training questions.

    `answers_from` (`common.answers_source`) is a predictions file ({id: answer}, as `laffi answer` writes; any
    model), a PEFT adapter directory, whose answers (the run's model + that adapter, `shots` shots) are generated
    here, or 'base-Kshot': the run's model without an adapter, answering with K shots."""
    from laffi.feedback import reference

    if not answers_from:
        raise LaffiError("train.answers_from: method 'critique' needs the answers to critique: a predictions file, "
                         "an adapter directory or base-Kshot (--set train.answers_from=PATH)")  # fmt: skip
    kind, source = answers_source(answers_from)
    if kind == "predictions":
        preds = read_predictions(source)
    elif kind == "adapter":
        preds = _generated_answers(questions, source, out, model, shots, progress)
    else:
        preds = _generated_answers(questions, None, out, model, source, progress)
    threshold = AnnotateConfig().correct_threshold
    records = [reference.annotate(q, preds[q.id], threshold) for q in questions if q.id in preds]
    if not records:
        raise LaffiError(f"train.answers_from: {answers_from}: answers none of the training questions")
    summary = {"answers_from": answers_from, "kind": kind, "annotator": reference.ANNOTATOR_ID,
               "correct_threshold": threshold, "answered": len(records), "missing": len(questions) - len(records),
               "judged_correct": sum(r.verdict == "correct" for r in records)}  # fmt: skip
    return records, {"summary": summary, "items": records}


def _generated_answers(questions: list[Question], adapter: Path | None, out: Path, model: ModelConfig, shots: int,
                       progress: bool) -> dict[str, str]:  # fmt: skip
    """The answers of the run's model (with `adapter`, if any) to `questions`, resumable under `out`.partial/."""
    from laffi.engines.generation import answer_prefix

    by_id = {q.id: q for q in questions}
    prefix = answer_prefix(adapter)  # a Chain of Hindsight adapter answers after its positive marker

    def prompt(tokenizer: Any, qid: str) -> str:
        return prompts.render(prompts.qa_messages(by_id[qid], shots), tokenizer) + prefix

    def parse(qid: str, raw: str) -> str:
        return prompts.parse_answer(raw, by_id[qid].context)

    partial = work_dir(out) / "critique.answers.jsonl"
    adapter_name = str(adapter) if adapter else None
    gens = generate(list(by_id), prompt, parse, partial, model, adapter_name, progress, "answers")
    return {q.id: gens[q.id].answer for q in questions}


def prepare(questions: list[Question], feedback: list[FeedbackRecord] | None, out: Path, model: ModelConfig,
            cfg: TrainConfig, shots: int, progress: bool) -> tuple[Any, Any, Any]:  # fmt: skip
    if cfg.answers_from or not feedback:
        feedback, report = critique_feedback(questions, cfg.answers_from, out, model, shots, progress)
        return feedback, None, report
    return feedback, None, None


def build(questions: list[Question], feedback: list[FeedbackRecord] | None, tokenizer: Any, shots: int, seed: int,
          answers: dict[str, str] | None, train: Any = None) -> list[Example]:  # fmt: skip
    return feedback_examples("critique", require_feedback("critique", feedback), tokenizer)


def made_data(d: dict[str, Any]) -> tuple[str, str]:
    """The report's row: whose answers critique was trained to judge, and how many the feedback calls correct."""
    data = f"{d['answered']} answers of {d['answers_from']}"
    return data, f"{d['judged_correct']} judged correct by {d['annotator']}"


METHOD = Method("critique", "the laffi objective on feedback about another model's answers (train.answers_from)",
                answers_from="judge", judges="sft", build=build, prepare=prepare, predicts_feedback=True,
                made_data=made_data, order=60)
