"""What every method module shares: the `Method` record the registry reads, and helpers for building examples and for
the methods that make their own data before training (refine, critique)."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from laffi import prompts
from laffi.config import ModelConfig
from laffi.errors import LaffiError
from laffi.files import write_json, write_jsonl
from laffi.records import FeedbackRecord, Generation, Question, read_jsonl
from laffi.training.examples import Example

# build(questions, feedback, tokenizer, shots, seed, answers, train) -> examples (unshuffled: the registry shuffles);
# `train` is the run's TrainConfig, or None for its defaults.
Build = Callable[[list[Question], "list[FeedbackRecord] | None", Any, int, int, "dict[str, str] | None", Any],
                 list[Example]]
# prepare(questions, feedback, out, model, train_cfg, shots, progress) -> (feedback, answers, report or None)
Prepare = Callable[..., tuple[Any, Any, Any]]


@dataclass(frozen=True)
class Method:
    name: str
    summary: str  # one line: what the model learns from (CLI help, docs)
    title: str = ""  # how sentences name it ("LaFFi", "SFT"); '' = its name
    build: Build | None = None  # None: the method trains nothing (base, answer-time methods)
    reads_feedback: bool = False  # needs the run's feedback records on the base model's training answers
    # What `train.answers_from` is to the method: 'judge' (critique: its `prepare` has those answers judged),
    # 'feedback' (laffi, laffi+sft: `laffi run` / `laffi experiment` write the run's feedback on those answers
    # instead of the base model's own), '' (not used: setting it is an error in `laffi train`).
    answers_from: str = ""
    prepare: Prepare | None = None  # makes the method's own data before training; runs in one process only
    adapter_of: str | None = None  # an answer-time method: answers with this trained method's adapter
    revise: bool = False  # answer, then revise with the adapter's own predicted feedback (`answer.revise_rounds`)
    answer_prefix: str = ""  # text that ends every QA prompt for this method's adapter (coh's positive marker)
    predicts_feedback: bool = False  # its adapter writes feedback on an answer (answer.na_score: verdict can use it)
    # answers_from 'judge' without `train.answers_from`: the answers of this method's adapter of the same size and
    # seed (critique judges sft's), made first in `laffi run` / `laffi experiment`.
    judges: str = ""
    # The report's row for the data `prepare` made (laffi_train.json[name]): (data, detail) markdown cell texts.
    made_data: Callable[[dict[str, Any]], tuple[str, str]] | None = None
    # For `--plan`: token positions one example costs a step beyond its tokenized row (sdft's sampling and teacher
    # pass), from (example, tokenizer, train settings); its `build` then needs nothing `prepare` makes.
    step_positions: Callable[[Example, Any, Any], int] | None = None
    order: int = 100  # position in listings

    @property
    def display(self) -> str:
        return self.title or self.name

    @property
    def trains(self) -> bool:
        return self.build is not None


def require_feedback(method: str, feedback: list[FeedbackRecord] | None) -> list[FeedbackRecord]:
    if not feedback:
        raise LaffiError(f"feedback: method '{method}' needs feedback records (--feedback FEEDBACK.jsonl)")
    return feedback


def answers_source(spec: str, where: str = "train.answers_from") -> tuple[str, Any]:
    """What `train.answers_from` names: ("base", K) for 'base-Kshot' (the run's model without an adapter, answering
    with K shots), ("adapter", path) for a PEFT adapter directory (the run's model with it, the run's shots), or
    ("predictions", path) for a predictions file {id: answer} (any model). Anything else is a one-line error."""
    base = re.fullmatch(r"base-(\d+)shots?", spec)
    if base and not Path(spec).exists():
        shots = int(base.group(1))
        if shots > len(prompts.SHOTS):
            raise LaffiError(f"{where}: {spec}: the QA prompt has 0 to {len(prompts.SHOTS)} shots")
        return "base", shots
    path = Path(spec)
    if path.is_dir():
        if not (path / "adapter_config.json").exists():
            raise LaffiError(f"{where}: {spec}: not a PEFT adapter directory (no adapter_config.json)")
        return "adapter", path
    if path.is_file():
        return "predictions", path
    raise LaffiError(f"{where}: {spec}: no such predictions file or adapter directory (nor base-Kshot: the run's "
                     f"model with K = 0-{len(prompts.SHOTS)} shots)")


def record_question(r: FeedbackRecord) -> Question:
    """The question a feedback record is about (its passage, question and gold answers)."""
    return Question(id=r.id, title=r.title, context=r.context, question=r.question, answers=list(r.gold_answers),
                    is_impossible=r.is_impossible)  # fmt: skip


def qa_examples(kind: str, questions: list[Question], answers: dict[str, str], tokenizer: Any,
                shots: int) -> list[Example]:  # fmt: skip
    """QA prompt -> a given answer, for the questions that have one."""
    return [Example(kind, q.id, prompts.render(prompts.qa_messages(q, shots), tokenizer),
                    prompts.answer_as_text(answers[q.id]), group=q.context)
            for q in questions if q.id in answers]  # fmt: skip


def feedback_examples(kind: str, feedback: list[FeedbackRecord], tokenizer: Any) -> list[Example]:
    """Feedback prompt (passage, question, the judged answer) -> the feedback text: what laffi and critique learn."""
    return [Example(kind, r.id, prompts.render(prompts.feedback_messages(record_question(r), r.predicted_answer),
                                               tokenizer), r.feedback, group=r.context)
            for r in feedback]  # fmt: skip


# ---------------------------------------------------------------------------------------------- data-making methods

# Revisions and critiqued answers are answers: as long as at answer time (AnswerConfig.max_new_tokens default).
MAX_NEW_TOKENS = 32
DECODE_BATCH = 8


def work_dir(out: Path) -> Path:
    """Where resumable state lives while `out` is being made (shared with the trainer's checkpoints)."""
    return out.with_name(out.name + ".partial")


def generate(ids: list[str], prompt: Callable[[Any, str], str], parse: Callable[[str, str], str], partial: Path,
             model: ModelConfig, adapter: str | None, progress: bool, desc: str) -> dict[str, Generation]:  # fmt: skip
    """`prompt(tokenizer, id)` generated for each id and parsed, resuming from `partial`; the model is loaded only
    when work is left."""
    done = {g.id: g for g in read_jsonl(partial, Generation, tolerate_torn_tail=True)} if partial.exists() else {}
    if all(qid in done for qid in ids):
        return done
    from tqdm.auto import tqdm

    from laffi.engines.generation import DecodeSettings, generate_records
    from laffi.models import load_model, load_tokenizer

    tokenizer = load_tokenizer(model.name)
    lm = load_model(model.name, dtype=model.dtype, adapter=adapter, device=model.device)
    partial.parent.mkdir(parents=True, exist_ok=True)
    jobs = [(qid, prompt(tokenizer, qid)) for qid in ids]
    with tqdm(total=len(jobs), desc=desc, unit="q", disable=not progress) as bar:
        return generate_records(lm, tokenizer, jobs, DecodeSettings(MAX_NEW_TOKENS, DECODE_BATCH), parse,
                                partial, bar.update)  # fmt: skip


def save_report(out: Path, method: str, report: dict[str, Any]) -> None:
    """Beside the adapter files: `<method>_report.json` (counts), `<method>_items.jsonl` (every decision or feedback
    record), and the counts in laffi_train.json."""
    write_json(out / f"{method}_report.json", report["summary"])
    write_jsonl(out / f"{method}_items.jsonl", report["items"])
    info_path = out / "laffi_train.json"
    info = json.loads(info_path.read_text(encoding="utf-8"))
    info[method] = report["summary"]
    write_json(info_path, info)
