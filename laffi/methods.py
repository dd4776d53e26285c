"""The data that the `refine` and `critique` training methods make before they train (see laffi.training.loop).

- refine (Scheurer et al. 2022, "ILF"): the model being trained is shown its first answer and the feedback on it and
  writes a revised answer; the revisions that the feedback's verdict and the SQuAD normalisation accept become the
  targets of the plain QA prompt. Every decision, with its reason, is kept for the report.
- critique (Wang, Yue, Chen 2025): feedback on answers that are not the model's own, from `train.answers_from` (a
  predictions file, or an adapter directory whose answers are generated here), written by the reference annotator.

Generation resumes from JSONL files under `<adapter>.partial/`, which the trainer also uses for its checkpoints and
removes when training is done; what was made is then saved beside the adapter files (`save_report`).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from laffi import prompts
from laffi.config import AnnotateConfig, ModelConfig
from laffi.errors import LaffiError
from laffi.metrics import normalize_answer
from laffi.records import FeedbackRecord, Generation, Question, read_jsonl, write_json, write_jsonl

# Revisions and critiqued answers are answers: as long as at answer time (AnswerConfig.max_new_tokens default).
MAX_NEW_TOKENS = 32
DECODE_BATCH = 8

# Why a revision was kept or dropped (the report counts each).
KEPT_CONFIRMED = "kept: repeats the answer the feedback judged correct"
KEPT_MATCHES = "kept: the answer the feedback states"
KEPT_NEW_SPAN = "kept: a new answer that is a span of the passage (the feedback states no answer)"
DROPPED_CHANGED_CORRECT = "dropped: changed the answer the feedback judged correct"
DROPPED_REPEATED_WRONG = "dropped: repeats the answer the feedback judged incorrect"
DROPPED_DISAGREES = "dropped: not the answer the feedback states"
DROPPED_NOT_IN_PASSAGE = "dropped: not a span of the passage"


@dataclass
class RefineDecision:
    id: str
    first_answer: str
    verdict: str
    feedback_answer: str | None  # the right answer the feedback states ("" = abstain), None when it states none
    raw: str  # what the model wrote
    revised_answer: str  # parsed from `raw` ("" = abstain)
    kept: bool
    reason: str


def _same(a: str, b: str) -> bool:
    """Equal after the SQuAD normalisation; an abstention ("") equals only an abstention."""
    return normalize_answer(a) == normalize_answer(b) and bool(a.strip()) == bool(b.strip())


def judge_revision(record: FeedbackRecord, revised: str) -> tuple[bool, str]:
    """Keep a revised answer only when the feedback accepts it: the same answer after a "correct" verdict; after an
    "incorrect" one, a different answer that is the one the feedback states (or, when it states none, a span of the
    passage or an abstention)."""
    first = record.predicted_answer
    if record.verdict == "correct":
        return (True, KEPT_CONFIRMED) if _same(revised, first) else (False, DROPPED_CHANGED_CORRECT)
    if _same(revised, first):
        return False, DROPPED_REPEATED_WRONG
    stated = prompts.parse_feedback(record.feedback)[1]
    if stated is not None:
        return (True, KEPT_MATCHES) if _same(revised, stated) else (False, DROPPED_DISAGREES)
    if not revised or prompts.parse_answer(revised, record.context, require_in_context=True):
        return True, KEPT_NEW_SPAN
    return False, DROPPED_NOT_IN_PASSAGE


def work_dir(out: Path) -> Path:
    """Where resumable state lives while `out` is being made (shared with the trainer's checkpoints)."""
    return out.with_name(out.name + ".partial")


def _generate(ids: list[str], prompt: Callable[[Any, str], str], parse: Callable[[str, str], str], partial: Path,
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
    lm = load_model(model.name, dtype=model.dtype, adapter=adapter)
    partial.parent.mkdir(parents=True, exist_ok=True)
    jobs = [(qid, prompt(tokenizer, qid)) for qid in ids]
    with tqdm(total=len(jobs), desc=desc, unit="q", disable=not progress) as bar:
        return generate_records(lm, tokenizer, jobs, DecodeSettings(MAX_NEW_TOKENS, DECODE_BATCH), parse,
                                partial, bar.update)  # fmt: skip


def refine_answers(questions: list[Question], feedback: list[FeedbackRecord], out: Path, model: ModelConfig,
                   shots: int, progress: bool = True) -> tuple[dict[str, str], dict[str, Any]]:  # fmt: skip
    """Revised answers that the feedback accepts ({id: answer}) and the report of every decision.

    The model being trained (without adapter) revises its own first answer (the one the feedback is about)."""
    if not feedback:
        raise LaffiError("feedback: method 'refine' needs feedback records (--feedback FEEDBACK.jsonl)")
    by_id = {q.id: q for q in questions}
    records = [r for r in feedback if r.id in by_id]
    if not records:
        raise LaffiError("feedback: no record is about one of the training questions")

    by_record = {r.id: r for r in records}

    def prompt(tokenizer: Any, qid: str) -> str:
        r = by_record[qid]
        return prompts.render(prompts.refine_messages(by_id[qid], r.predicted_answer, r.feedback), tokenizer)

    def parse(qid: str, raw: str) -> str:
        return prompts.parse_answer(raw, by_id[qid].context)

    partial = work_dir(out) / "refine.generations.jsonl"
    gens = _generate(list(by_record), prompt, parse, partial, model, None, progress, "refine")
    decisions = []
    for r in records:
        g = gens[r.id]
        kept, reason = judge_revision(r, g.answer)
        decisions.append(RefineDecision(r.id, r.predicted_answer, r.verdict, prompts.parse_feedback(r.feedback)[1],
                                        g.raw, g.answer, kept, reason))  # fmt: skip
    answers = {d.id: d.revised_answer for d in decisions if d.kept}
    reasons: dict[str, int] = {}
    for d in decisions:
        reasons[d.reason] = reasons.get(d.reason, 0) + 1
    summary = {"reviser": f"{model.name} (the model being trained, no adapter)",
               "template_version": prompts.REFINE_TEMPLATE_VERSION, "revised": len(decisions), "kept": len(answers),
               "dropped": len(decisions) - len(answers), "reasons": dict(sorted(reasons.items()))}  # fmt: skip
    if not answers:
        raise LaffiError(f"refine: no revised answer was kept ({', '.join(f'{n} {r}' for r, n in reasons.items())})")
    return answers, {"summary": summary, "items": decisions}


def critique_feedback(questions: list[Question], answers_from: str, out: Path, model: ModelConfig, shots: int,
                      progress: bool = True) -> tuple[list[FeedbackRecord], dict[str, Any]]:  # fmt: skip
    """Reference-annotator feedback on the answers of `answers_from` to the training questions.

    `answers_from` is a predictions file ({id: answer}, as `laffi answer` writes; any model) or a PEFT adapter
    directory, whose answers (the run's model + that adapter, `shots` shots) are generated here."""
    from laffi.feedback import reference
    from laffi.pipeline.stages import read_predictions

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
    gens = _generate(list(by_id), prompt, parse, partial, model, str(adapter), progress, "answers")
    return {q.id: gens[q.id].answer for q in questions}


def save_report(out: Path, method: str, report: dict[str, Any]) -> None:
    """Beside the adapter files: `<method>_report.json` (counts), `<method>_items.jsonl` (every decision or feedback
    record), and the counts in laffi_train.json."""
    write_json(out / f"{method}_report.json", report["summary"])
    write_jsonl(out / f"{method}_items.jsonl", report["items"])
    info_path = out / "laffi_train.json"
    info = json.loads(info_path.read_text(encoding="utf-8"))
    info[method] = report["summary"]
    write_json(info_path, info)

