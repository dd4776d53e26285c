"""`laffi run`: every stage of the LaFFi loop from one config, each cached under the run directory.

Layout of a run directory:
    config.yaml                   the resolved config
    data/train.json, eval.json    the article split and question samples (official SQuAD format)
    base/train_answers.json       the base model's own answers on the training questions (what LaFFi gets feedback on)
    feedback/train.jsonl          feedback records on those answers
    <method>/adapter/             a PEFT adapter per fine-tuned method
    <method>/eval_answers.json    answers on the held-out questions (base: no adapter)
    results.json, results.md      scores of every method and of the "abstain on every question" baseline

A stage is skipped when the marker beside its output (`.<output>.stage.json`) holds the same key (a hash of its input
files and settings) and says done; otherwise it runs again. `answer` and `train` resume from their partial state after
an interruption, but only when the key is unchanged: a stage started with other inputs is cleared first.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import yaml

from laffi.config import AnswerConfig, RunConfig, TrainConfig, train_cache_settings
from laffi.data import articles, load_squad, resolve_data_path, sample_questions, split_by_article, write_squad
from laffi.metrics import abstain_predictions, squad_v2_scores
from laffi.pipeline import stages
from laffi.records import atomic_write_text, read_json, write_json
from laffi.report.tables import comparisons_table, results_table
from laffi.training.loop import needs_feedback

Log = Callable[[str], None]


def file_hash(path: Path) -> str:
    """sha256 of a file, or of every file under a directory (names and bytes), for cache keys."""
    h = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for f in files:
        h.update(str(f.relative_to(path) if path.is_dir() else f.name).encode())
        h.update(f.read_bytes())
    return h.hexdigest()


def stage_key(**inputs: Any) -> str:
    return hashlib.sha256(json.dumps(inputs, sort_keys=True, default=str).encode()).hexdigest()[:16]


def marker(output: Path) -> Path:
    """Where a stage records the key of the inputs its output (or its partial state) belongs to."""
    return output.with_name(f".{output.name}.stage.json")


def cached(output: Path, key: str) -> bool:
    m = marker(output)
    if not (output.exists() and m.exists()):
        return False
    state = read_json(m)
    return state.get("key") == key and state.get("done") is True


def begin(output: Path, key: str, scratch: list[Path] = ()) -> None:
    """Start or resume a stage. Output and partial state (`scratch`) left by a run with other inputs are removed,
    so a stage never resumes from, or returns, work done for different settings."""
    m = marker(output)
    if not (m.exists() and read_json(m).get("key") == key):
        for path in [output, *scratch]:
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink(missing_ok=True)
    write_json(m, {"key": key, "done": False})


def finish(output: Path, key: str) -> None:
    write_json(marker(output), {"key": key, "done": True})


def run_pipeline(cfg: RunConfig, log: Log = print, progress: bool = True) -> dict[str, Any]:
    out = Path(cfg.out_dir)
    # Validate the data before anything exists in out_dir: a mistyped data.path leaves no config or stage marker.
    load_squad(resolve_data_path(cfg.data.path))
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "config.yaml", yaml.safe_dump(asdict(cfg), sort_keys=False))
    train_file, eval_file = split_stage(cfg, out, log)
    train_qs, eval_qs = load_squad(train_file), load_squad(eval_file)
    fine_tuned = [m for m in cfg.methods if m != "base"]  # laffi+revise needs the laffi adapter, so feedback too
    feedback_file = None
    if any(needs_feedback(m) for m in fine_tuned):
        answers = answer_stage(cfg, out / "base", "train_answers.json", train_qs, train_file, None, log, progress)
        feedback_file = feedback_stage(cfg, out, train_qs, answers, log, progress)
    predictions = {"abstain": abstain_predictions(eval_qs)}
    revision = {}
    for method in cfg.methods:
        adapter, answer_cfg = None, replace(cfg.answer, revise_rounds=0)
        first = None
        if method == "laffi+revise":
            adapter = train_stage(cfg, out, "laffi", train_file, feedback_file, log, progress)
            # Revision starts from the laffi row's answers (same adapter, same prompt): only the feedback is new.
            laffi_answers = answer_stage(cfg, out / "laffi", "eval_answers.json", eval_qs, eval_file, adapter, log,
                                         progress)  # fmt: skip
            first = laffi_answers.with_suffix(".generations.jsonl")
            answer_cfg = replace(cfg.answer, revise_rounds=max(1, cfg.answer.revise_rounds))
        elif method != "base":
            adapter = train_stage(cfg, out, method, train_file, feedback_file, log, progress)
        preds = answer_stage(cfg, out / method, "eval_answers.json", eval_qs, eval_file, adapter, log, progress,
                             answer_cfg, first)  # fmt: skip
        predictions[method] = stages.read_predictions(preds)
        if answer_cfg.revise_rounds:
            revision[method] = revision_summary(eval_qs, preds)
    return write_results(cfg, train_qs, eval_qs, predictions, revision)


def write_results(cfg: RunConfig, train_qs: list, eval_qs: list, predictions: dict[str, dict[str, str]],
                  revision: dict[str, Any]) -> dict[str, Any]:  # fmt: skip
    """results.json (scores, statistics, revision and span-only analyses) and results.md (the same as tables)."""
    out = Path(cfg.out_dir)
    results = {m: squad_v2_scores(eval_qs, preds) for m, preds in predictions.items()}
    summary = {
        "train_questions": len(train_qs),
        "eval_questions": len(eval_qs),
        "train_articles": articles(train_qs),
        "eval_articles": articles(eval_qs),
        "scores": results,
    }
    if revision:
        summary["revision"] = revision
    summary["statistics"] = statistics(eval_qs, predictions)
    table = results_table(results, summary["statistics"]["f1_ci95"])
    table += "\n\n" + comparisons_table(summary["statistics"]["paired"])
    if not cfg.answer.require_in_context:
        summary["span_only_scores"] = span_only_scores(eval_qs, out, cfg.methods, results["abstain"])
        table += ("\n\nThe same answers, re-parsed with `answer.require_in_context` (abstain when the answer is not a "
                  "span of the passage):\n\n" + results_table(summary["span_only_scores"]))  # fmt: skip
    write_json(out / "results.json", summary)
    atomic_write_text(out / "results.md", table + "\n")
    return summary


def statistics(questions: list, predictions: dict[str, dict[str, str]], seed: int = 0) -> dict[str, Any]:
    """95 % bootstrap intervals of each method's F1, and paired bootstrap tests of each method against sft and
    against abstaining (same questions, 1,000 resamples, seeded)."""
    from laffi.metrics import score_one
    from laffi.stats import bootstrap_ci, paired_bootstrap

    f1 = {m: [100.0 * score_one(q, preds[q.id])[1] for q in questions] for m, preds in predictions.items()}
    ci = {m: list(bootstrap_ci(v, seed=seed)) for m, v in f1.items()}
    paired = {}
    for m in (m for m in f1 if m != "abstain"):
        for ref in ("sft", "abstain"):
            if m != ref and ref in f1:
                paired[f"{m} vs {ref}"] = paired_bootstrap(f1[m], f1[ref], seed=seed)
    return {"f1_ci95": ci, "paired": paired, "resamples": 1000, "seed": seed}


def span_only_scores(questions: list, out: Path, methods: list[str], abstain: dict) -> dict[str, Any]:
    """Scores of each method's raw answers re-parsed with the extractive rule: no new generation, same raw text."""
    from laffi.prompts import parse_answer
    from laffi.records import Generation, read_jsonl

    by_id = {q.id: q for q in questions}
    scores = {"abstain": abstain}
    for method in methods:
        if method == "laffi+revise":  # its final answers come from feedback, not from one raw generation
            continue
        gens = read_jsonl(out / method / "eval_answers.generations.jsonl", Generation)
        preds = {g.id: parse_answer(g.raw, by_id[g.id].context, require_in_context=True) for g in gens}
        scores[method] = squad_v2_scores(questions, preds)
    return scores


def split_stage(cfg: RunConfig, out: Path, log: Log) -> tuple[Path, Path]:
    src = resolve_data_path(cfg.data.path)
    stage_dir = out / "data"
    key = stage_key(data=file_hash(src), settings=asdict(cfg.data))
    train_file, eval_file = stage_dir / "train.json", stage_dir / "eval.json"
    if cached(eval_file, key) and train_file.exists():
        return train_file, eval_file
    begin(eval_file, key, [train_file])
    questions = load_squad(src)
    train_all, eval_all = split_by_article(questions, cfg.data.eval_articles, cfg.data.split_seed)
    train_qs = sample_questions(train_all, cfg.data.train_questions or None, cfg.data.split_seed)
    eval_qs = sample_questions(eval_all, cfg.data.eval_questions or None, cfg.data.split_seed)
    return write_split(train_qs, eval_qs, train_file, eval_file, key, log)


def write_split(train_qs: list, eval_qs: list, train_file: Path, eval_file: Path, key: str,
                log: Log) -> tuple[Path, Path]:  # fmt: skip
    """Write both halves of a split (the eval file's marker covers the pair) and say what went where."""
    write_squad(train_qs, train_file)
    write_squad(eval_qs, eval_file)
    finish(eval_file, key)
    log(f"split: {len(train_qs)} training questions from {len(articles(train_qs))} articles, "
        f"{len(eval_qs)} evaluation questions from held-out {', '.join(articles(eval_qs))}")  # fmt: skip
    return train_file, eval_file


def answer_stage(cfg: RunConfig, stage_dir: Path, name: str, questions: list, data_file: Path, adapter: Path | None,
                 log: Log, progress: bool, answer_cfg: AnswerConfig | None = None,
                 first: Path | None = None) -> Path:  # fmt: skip
    output = stage_dir / name
    answer_cfg = answer_cfg or replace(cfg.answer, revise_rounds=0)
    settings = asdict(answer_cfg)
    if not answer_cfg.revise_rounds:  # revision settings don't change plain answers: keep them out of the key
        settings.pop("revise_rounds")
        settings.pop("feedback_max_new_tokens")
    if settings["engine"] == "transformers":  # the default engine keeps the keys of runs made before the setting
        settings.pop("engine")
    if settings["workers"] == 1:  # likewise one decoding thread
        settings.pop("workers")
    if settings["draft_tokens"] == 0:  # and one token per decode step
        settings.pop("draft_tokens")
    key = stage_key(data=file_hash(data_file), model=asdict(cfg.model), answer=settings,
                    adapter=file_hash(adapter) if adapter else None,
                    first=file_hash(first) if first else None)  # fmt: skip
    if cached(output, key):
        log(f"answer: {output} is up to date")
        return output
    partial = stages.partial_path(output)
    begin(output, key, list(stage_dir.glob(f"{partial.name}*")) if stage_dir.exists() else [])
    stages.answer(questions, output, cfg.model, answer_cfg, adapter=str(adapter) if adapter else None,
                  generations_out=output.with_suffix(".generations.jsonl"), progress=progress, first=first)  # fmt: skip
    finish(output, key)
    return output


def revision_summary(questions: list, preds_file: Path) -> dict[str, Any]:
    """How often revision changed an answer, and how often the change helped or hurt (SQuAD F1 of the question)."""
    from laffi.metrics import score_one
    from laffi.records import Revision, read_jsonl

    by_id = {q.id: q for q in questions}
    revisions = read_jsonl(stages.revisions_path(preds_file), Revision)
    changed = [r for r in revisions if r.final_answer != r.first_answer]
    delta = [score_one(by_id[r.id], r.final_answer)[1] - score_one(by_id[r.id], r.first_answer)[1] for r in changed]
    timing = read_json(stages.timing_path(preds_file))
    n = timing["questions"]
    out = {
        "questions": len(revisions),
        "changed": len(changed),
        "helped": sum(d > 0 for d in delta),
        "hurt": sum(d < 0 for d in delta),
        "verdicts_first_round": {v: sum(r.verdicts[:1] == [v] for r in revisions)
                                 for v in ("correct", "incorrect", "unparsed")},  # fmt: skip
        "questions_per_second_revision_only": n / timing["revise_seconds"],
        "timing_resumed": timing["resumed"],
    }
    if timing.get("answer_seconds"):  # measured by the run that wrote the first answers (None if unknown)
        out["questions_per_second_answer_only"] = n / timing["answer_seconds"]
        out["questions_per_second_with_revision"] = n / (timing["answer_seconds"] + timing["revise_seconds"])
    return out


def feedback_stage(cfg: RunConfig, out: Path, questions: list, answers: Path, log: Log,
                   progress: bool = True) -> Path:  # fmt: skip
    stage_dir = out / "feedback"
    output = stage_dir / "train.jsonl"
    key = stage_key(answers=file_hash(answers), annotate=asdict(cfg.annotate))
    if cached(output, key):
        return output
    begin(output, key)
    records = stages.annotate(questions, stages.read_predictions(answers), output, cfg.annotate, progress)
    finish(output, key)
    correct = sum(r.verdict == "correct" for r in records)
    log(f"feedback: {len(records)} records, {correct} answers judged correct")
    return output


def method_train_config(cfg: RunConfig, method: str) -> TrainConfig:
    return TrainConfig(**{**asdict(cfg.train), "method": method})


def train_stage(cfg: RunConfig, out: Path, method: str, train_file: Path, feedback_file: Path | None, log: Log,
                progress: bool) -> Path:  # fmt: skip
    stage_dir = out / method
    output = stage_dir / "adapter"
    tcfg = method_train_config(cfg, method)
    uses_feedback = needs_feedback(method)
    key = stage_key(data=file_hash(train_file), feedback=file_hash(feedback_file) if uses_feedback else None,
                    model=asdict(cfg.model), train=train_cache_settings(tcfg), shots=cfg.answer.shots)  # fmt: skip
    if cached(output, key):
        log(f"train: {output} is up to date")
        return output
    begin(output, key, [output.with_name(output.name + ".partial"), output.with_name(output.name + ".tmp")])
    feedback = stages.read_feedback(feedback_file) if uses_feedback and feedback_file else None
    info = stages.train(load_squad(train_file), feedback, output, cfg.model, tcfg, cfg.answer.shots, progress)
    finish(output, key)
    log(f"train {method}: {info['examples']} examples, {info['steps']} steps, final loss {info['final_loss']:.3f}")
    return output
