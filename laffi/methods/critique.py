"""`critique`: the laffi objective on feedback about answers that are not the model's own (critique fine-tuning,
Wang, Yue, Chen 2025).

Before training, the answers of `train.answers_from` (a predictions file from any model, or an adapter directory whose
answers are generated here) are judged by the reference annotator; the model then learns to predict that feedback.
Without `answers_from`, the given feedback records are used as they are (feedback someone wrote on other answers).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from laffi import prompts
from laffi.config import AnnotateConfig, ModelConfig, TrainConfig
from laffi.errors import LaffiError
from laffi.methods.common import Method, feedback_examples, generate, require_feedback, work_dir
from laffi.records import FeedbackRecord, Question, read_predictions
from laffi.training.examples import Example


def critique_feedback(questions: list[Question], answers_from: str, out: Path, model: ModelConfig, shots: int,
                      progress: bool = True) -> tuple[list[FeedbackRecord], dict[str, Any]]:  # fmt: skip
    """Reference-annotator feedback on the answers of `answers_from` to the training questions.

    `answers_from` is a predictions file ({id: answer}, as `laffi answer` writes; any model) or a PEFT adapter
    directory, whose answers (the run's model + that adapter, `shots` shots) are generated here."""
    from laffi.feedback import reference

    if not answers_from:
        raise LaffiError("train.answers_from: method 'critique' needs the answers to critique: a predictions file "
                         "or an adapter directory (--set train.answers_from=PATH)")  # fmt: skip
    source = Path(answers_from)
    if source.is_dir():
        preds, kind = _adapter_answers(questions, source, out, model, shots, progress), "adapter"
    elif source.is_file():
        preds, kind = read_predictions(source), "predictions"
    else:
        raise LaffiError(f"train.answers_from: {answers_from}: no such predictions file or adapter directory")
    threshold = AnnotateConfig().correct_threshold
    records = [reference.annotate(q, preds[q.id], threshold) for q in questions if q.id in preds]
    if not records:
        raise LaffiError(f"train.answers_from: {answers_from}: answers none of the training questions")
    summary = {"answers_from": answers_from, "kind": kind, "annotator": reference.ANNOTATOR_ID,
               "correct_threshold": threshold, "answered": len(records), "missing": len(questions) - len(records),
               "judged_correct": sum(r.verdict == "correct" for r in records)}  # fmt: skip
    return records, {"summary": summary, "items": records}


def _adapter_answers(questions: list[Question], adapter: Path, out: Path, model: ModelConfig, shots: int,
                     progress: bool) -> dict[str, str]:  # fmt: skip
    from laffi.engines.generation import answer_prefix

    if not (adapter / "adapter_config.json").exists():
        raise LaffiError(f"train.answers_from: {adapter}: not a PEFT adapter directory (no adapter_config.json)")
    by_id = {q.id: q for q in questions}
    prefix = answer_prefix(adapter)  # a Chain of Hindsight adapter answers after its positive marker

    def prompt(tokenizer: Any, qid: str) -> str:
        return prompts.render(prompts.qa_messages(by_id[qid], shots), tokenizer) + prefix

    def parse(qid: str, raw: str) -> str:
        return prompts.parse_answer(raw, by_id[qid].context)

    partial = work_dir(out) / "critique.answers.jsonl"
    gens = generate(list(by_id), prompt, parse, partial, model, str(adapter), progress, "answers")
    return {q.id: gens[q.id].answer for q in questions}


def prepare(questions: list[Question], feedback: list[FeedbackRecord] | None, out: Path, model: ModelConfig,
            cfg: TrainConfig, shots: int, progress: bool) -> tuple[Any, Any, Any]:  # fmt: skip
    if cfg.answers_from or not feedback:
        feedback, report = critique_feedback(questions, cfg.answers_from, out, model, shots, progress)
        return feedback, None, report
    return feedback, None, None


def build(questions: list[Question], feedback: list[FeedbackRecord] | None, tokenizer: Any, shots: int, seed: int,
          answers: dict[str, str] | None) -> list[Example]:  # fmt: skip
    return feedback_examples("critique", require_feedback("critique", feedback), tokenizer)


METHOD = Method("critique", "the laffi objective on feedback about another model's answers (train.answers_from)",
                build=build, prepare=prepare, order=60)
