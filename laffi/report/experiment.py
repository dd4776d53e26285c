"""The experiment report: results.json, results.md and a self-contained report.html with plots.

Every number comes from the cells' files on disk (eval_answers.json, adapter/train_log.jsonl, revisions), so the
report can be rebuilt at any time and checked against them. Across seeds, a method's per-question F1 is averaged over
its seeds before the bootstrap, so intervals and paired tests are over questions, with seed noise averaged out; the
spread over seeds is reported beside them.
"""

from __future__ import annotations

import base64
import html
import itertools
import json
import statistics as st
from pathlib import Path
from typing import Any

from laffi.config import ExperimentConfig
from laffi.data import articles
from laffi.metrics import abstain_predictions, score_one, squad_v2_scores
from laffi.pipeline import stages
from laffi.pipeline.cache import Log
from laffi.pipeline.experiment import Cell, Finished, cell_dir, reference_cell, run_experiment, train_timing_path
from laffi.records import atomic_write_text, read_feedback, read_json, read_predictions, write_json
from laffi.report.tables import comparisons_table
from laffi.stats import bootstrap_ci, paired_bootstrap, roc_auc

ALPHA = 0.05


def run_and_report(cfg: ExperimentConfig, log: Log = print, progress: bool = True,
                   shard: tuple[int, int] | None = None, report_only: bool = False) -> dict[str, Any] | None:
    """Run the experiment (every stage cached) and write its report: results.json, results.md, report.html. With a
    `shard`, None until the last shard finishes (see `run_experiment`). `report_only`: the report of the cells
    already made, nothing else run (`laffi.pipeline.experiment.made_cells`)."""
    done = run_experiment(cfg, log, progress, shard, report_only=report_only)
    return None if done is None else write_report(done)


def write_report(done: Finished) -> dict[str, Any]:
    cfg, out, main, ablation, eval_qs = done.cfg, done.out, done.main, done.ablation, done.eval_questions
    cells = list(dict.fromkeys(main + ablation))
    preds = {c.path: read_predictions(cell_dir(out, c) / "eval_answers.json") for c in cells}
    per_q = {path: [100.0 * score_one(q, p[q.id])[1] for q in eval_qs] for path, p in preds.items()}
    abstain = squad_v2_scores(eval_qs, abstain_predictions(eval_qs))
    per_q["abstain"] = [100.0 * score_one(q, "")[1] for q in eval_qs]
    cal = {c: calibrated(out, c, eval_qs, done.calibration_questions, preds[c.path]) for c in cells}
    cal = {c: v for c, v in cal.items() if v is not None}
    for c, v in cal.items():
        kept = v.pop("preds")
        per_q[as_calibrated(c).path] = [100.0 * score_one(q, kept[q.id])[1] for q in eval_qs]
    summary: dict[str, Any] = {
        "train_questions": len(done.train_questions),
        "train_articles": articles(done.train_questions),
        "calibration_questions": len(done.calibration_questions),
        "eval_questions": len(eval_qs),
        "eval_articles": articles(eval_qs),
        "train_sizes": cfg.train_sizes,
        "seeds": cfg.seeds,
        "abstain": abstain,
        "cells": {c.path: cell_summary(out, c, eval_qs, preds[c.path], per_q[c.path]) for c in cells},
        "missing": done.missing,
    }
    for c, v in cal.items():
        summary["cells"][c.path]["calibrated"] = v | {"f1_ci95": list(bootstrap_ci(per_q[as_calibrated(c).path]))}
    if done.calibration_questions:
        for c in cells:
            both = na_scores_compared(out, c, eval_qs, done.calibration_questions, preds[c.path])
            if both is not None:
                summary["cells"][c.path]["na_scores"] = both
    info = summary["cells"] | {as_calibrated(c).path: v for c, v in cal.items()}
    rows = [x for c in main for x in ([c, as_calibrated(c)] if c in cal else [c])]  # raw and calibrated side by side
    summary["groups"] = [group_summary(g, info, per_q) for g in groups(rows)]
    summary["paired"] = paired_tests(rows, per_q)
    summary["first_beats_abstain"] = first_beats_abstain(summary["paired"])
    summary["ablation"] = [group_summary(g, summary["cells"], per_q) for g in groups(ablation)]
    summary["ablation_paired"] = ablation_tests(ablation, per_q)
    revision = {c.path: revision_of(out, c, eval_qs) for c in cells if c.method == "laffi+revise"}
    if revision:
        summary["revision"] = revision
    summary["verdict"] = verdict(summary["groups"], summary["paired"])
    if {"laffi" + CALIBRATED, "sft" + CALIBRATED} <= {g["method"] for g in summary["groups"]}:
        summary["verdict_calibrated"] = verdict(summary["groups"], summary["paired"], CALIBRATED)
    summary["plots"] = write_plots(out, summary, cells)
    summary["examples"] = examples(out, main, eval_qs)
    summary["attention"] = attention_summary(out)
    summary["headroom"] = headroom_summary(out)
    markdown = render_markdown(cfg, summary)
    write_json(out / "results.json", summary)
    atomic_write_text(out / "results.md", markdown)
    atomic_write_text(out / "report.html", render_html(markdown, out))
    return summary


# ------------------------------------------------------------------------------------------------ numbers


def cell_summary(out: Path, cell: Cell, eval_qs: list, preds: dict[str, str], f1: list[float]) -> dict[str, Any]:
    info = {"method": cell.method, "size": cell.size, "seed": cell.seed, "human_fraction": cell.human_fraction,
            "scores": squad_v2_scores(eval_qs, preds), "f1_ci95": list(bootstrap_ci(f1))}  # fmt: skip
    na_file = stages.na_prob_path(cell_dir(out, cell) / "eval_answers.json")
    if na_file.exists():  # how well its no-answer score tells unanswerable questions from answerable ones
        na = read_json(na_file)
        info["na_score_auc"] = roc_auc([na[q.id] for q in eval_qs], [q.is_impossible for q in eval_qs])
    train_info = cell_dir(out, cell.trained()) / "adapter" / "laffi_train.json"
    if cell.method != "base" and train_info.exists():
        t = read_json(train_info)
        info["train"] = {"examples": t["examples"], "steps": t["steps"], "final_loss": t["final_loss"]}
        if cell.method in ("refine", "critique") and cell.method in t:
            info["made_data"] = t[cell.method]  # what refine kept and why, or whose answers critique judged
    info["seconds"] = cell_seconds(out, cell)
    split = out / "feedback" / f"{cell.method}-{cell.name}.split.json"
    if split.exists():
        s = read_json(split)
        info["feedback_split"] = {"human": s["human"], "ai": s["ai"]}
        if "filtered_contradictions" in s:  # annotate.filter_contradictions: AI records dropped before training
            info["feedback_split"]["filtered"] = len(s["filtered_contradictions"])
        if "learned_annotator" in s:  # annotate.learn_from_examples: the annotator fine-tuned on this cell's share
            info["feedback_split"]["learned_annotator"] = s["learned_annotator"]
        quality = ai_feedback_quality(out, split, s)
        if quality is not None:
            info["ai_feedback"] = quality
    return info


def cell_seconds(out: Path, cell: Cell) -> dict[str, float | None]:
    """Wall time of a cell's own stages, from their timing files: training its adapter (None for base, or when the
    file is missing) and answering (and revising) the calibration and evaluation questions. Stages shared between
    cells (the base model's training answers, feedback) are not counted."""
    def answering(name: str) -> float | None:
        path = stages.timing_path(cell_dir(out, cell) / name)
        if not path.exists():
            return None
        t = read_json(path)
        return (t.get("answer_seconds") or 0.0) + (t.get("revise_seconds") or 0.0)

    train = train_timing_path(cell_dir(out, cell.trained()) / "adapter")
    return {"train": read_json(train)["train_seconds"] if cell.method != "base" and train.exists() else None,
            "calibration": answering("calibration_answers.json"), "eval": answering("eval_answers.json")}  # fmt: skip


def ai_feedback_quality(out: Path, split_file: Path, split: dict[str, Any]) -> dict[str, Any] | None:
    """How good the AI share of a cell's feedback was, before any filtering: the AI annotator's records on the cell's
    questions that did not take human feedback, against the gold answers (agreement and Cohen's kappa with the
    reference annotator's verdict, contradictions, a parseable right answer: `annotators-compare`'s numbers). None
    for a cell without AI feedback or whose AI file is gone."""
    from laffi.feedback.report import annotator_summary
    from laffi.records import read_feedback

    if not split.get("ai"):
        return None
    source = out / split["learned_annotator"] / "ai.jsonl" if "learned_annotator" in split else None
    if source is None:
        source = out / "feedback" / ("answers_from" if split.get("answers_from") else "") / "ai.jsonl"
    mixed = split_file.with_name(split_file.name.removesuffix(".split.json") + ".jsonl")
    if not (source.exists() and mixed.exists()):
        return None
    human = set(split.get("human_ids", []))
    ids = ({r.id for r in read_feedback(mixed)} | set(split.get("filtered_contradictions", []))) - human
    records = [r for r in read_feedback(source) if r.id in ids]
    if not records:
        return None
    s = annotator_summary(records)
    return {k: s[k] for k in ("annotators", "items", "agreement", "cohen_kappa", "contradicts_gold", "states_answer")}


CALIBRATED = " (calibrated)"  # a cell's answers with its no-answer threshold applied: a row of its own in every table


def as_calibrated(cell: Cell) -> Cell:
    """The row of a cell's calibrated answers (a name only: no directory of its own)."""
    return Cell(cell.method + CALIBRATED, cell.size, cell.seed, cell.human_fraction)


def calibrated(out: Path, cell: Cell, eval_qs: list, calibration: list, preds: dict[str, str]) -> dict | None:
    """A cell's evaluation answers under the no-answer threshold chosen on the calibration questions (training
    articles, never evaluation ones): the official best_f1_thresh of its calibration answers and their no-answer
    scores; an evaluation question whose score is above it counts as an abstention, as the official script's
    --na-prob-thresh does. None when the cell has no scores (revised answers) or there is no calibration."""
    directory = cell_dir(out, cell)
    answers = directory / "calibration_answers.json"
    if not calibration:
        return None
    if stages.revisions_path(answers).exists():
        return calibrated_revision(directory, eval_qs, calibration)
    return calibrate_with(answers, stages.na_prob_path(answers),
                          stages.na_prob_path(directory / "eval_answers.json"), eval_qs, calibration, preds)


def calibrate_with(answers: Path, na_cal: Path, na_eval: Path, eval_qs: list, calibration: list,
                   preds: dict[str, str]) -> dict | None:  # fmt: skip
    """`calibrated` with the no-answer scores of the calibration answers and evaluation answers in these files."""
    if not (answers.exists() and na_cal.exists() and na_eval.exists()):
        return None
    on_cal = squad_v2_scores(calibration, read_predictions(answers), na_probs=read_json(na_cal))
    threshold, na = on_cal["best_f1_thresh"], read_json(na_eval)
    kept = {q.id: "" if na[q.id] > threshold else preds[q.id] for q in eval_qs}
    return {"threshold": threshold, "calibration_f1": on_cal["f1"], "calibration_best_f1": on_cal["best_f1"],
            "scores": squad_v2_scores(eval_qs, kept), "abstained": sum(not p for p in kept.values()),
            "preds": kept}  # fmt: skip


def na_scores_compared(out: Path, cell: Cell, eval_qs: list, calibration: list,
                       preds: dict[str, str]) -> dict[str, dict] | None:  # fmt: skip
    """For a cell answered with answer.na_score 'verdict': each no-answer score (verdict, first_token) with its ROC
    AUC on the evaluation questions and the calibrated F1 it gives. None for other cells."""
    directory = cell_dir(out, cell)
    answers, evals = directory / "calibration_answers.json", directory / "eval_answers.json"
    files = {"verdict": (stages.na_prob_path(answers), stages.na_prob_path(evals)),
             "first_token": (stages.first_token_na_prob_path(answers), stages.first_token_na_prob_path(evals))}
    if not all(f.exists() for pair in files.values() for f in pair):
        return None
    compared = {}
    for name, (na_cal, na_eval) in files.items():
        na = read_json(na_eval)
        cal = calibrate_with(answers, na_cal, na_eval, eval_qs, calibration, preds)
        assert cal is not None  # every file exists
        compared[name] = {"auc": roc_auc([na[q.id] for q in eval_qs], [q.is_impossible for q in eval_qs]),
                          "threshold": cal["threshold"], "calibrated_f1": cal["scores"]["f1"],
                          "calibrated_HasAns_f1": cal["scores"].get("HasAns_f1"),
                          "calibrated_NoAns_f1": cal["scores"].get("NoAns_f1")}  # fmt: skip
    return compared


def calibrated_revision(directory: Path, eval_qs: list, calibration: list) -> dict | None:
    """laffi+revise with its revision threshold chosen on the calibration questions: an answer is revised only when
    its adapter's probability of "Verdict: incorrect" is above the threshold (answer.revise_threshold), so from one
    revision run (every answer above the configured threshold revised, every probability recorded) the answers at any
    higher threshold are known exactly. The threshold with the best calibration F1 (ties: the higher, fewer
    revisions) is applied to the evaluation revisions."""
    from laffi.records import Revision, read_jsonl

    cal_file, eval_file = directory / "calibration_answers.json", directory / "eval_answers.json"
    on_cal = read_jsonl(stages.revisions_path(cal_file), Revision)
    on_eval = read_jsonl(stages.revisions_path(eval_file), Revision)
    if any(r.incorrect_prob is None for r in on_cal + on_eval):
        return None  # revisions written before the probabilities were recorded

    def at(revisions: list, t: float) -> dict[str, str]:
        return {r.id: r.final_answer if r.revised and r.incorrect_prob > t else r.first_answer for r in revisions}

    candidates = sorted({-1.0, *(r.incorrect_prob for r in on_cal)})  # -1: every revision the run made
    f1 = {t: squad_v2_scores(calibration, at(on_cal, t))["f1"] for t in candidates}
    best = max(candidates, key=lambda t: (f1[t], t))
    kept = at(on_eval, best)
    return {"threshold": best, "calibration_f1": f1[-1.0], "calibration_best_f1": f1[best],
            "scores": squad_v2_scores(eval_qs, kept), "abstained": sum(not p for p in kept.values()),
            "revised": sum(r.revised and r.incorrect_prob > best for r in on_eval), "preds": kept}  # fmt: skip


def groups(cells: list[Cell]) -> list[list[Cell]]:
    """Cells that differ only in seed, in first-seen order."""
    out: dict[tuple, list[Cell]] = {}
    for c in cells:
        out.setdefault((c.method, c.size, c.human_fraction), []).append(c)
    return list(out.values())


def seed_mean(cells: list[Cell], per_q: dict[str, list[float]]) -> list[float]:
    """Per-question F1 averaged over the seeds of a group."""
    rows = [per_q[c.path] for c in cells]
    return [sum(col) / len(col) for col in zip(*rows, strict=True)]


def group_summary(cells: list[Cell], cell_info: dict, per_q: dict[str, list[float]]) -> dict[str, Any]:
    scores = [cell_info[c.path]["scores"] for c in cells]
    f1s = [s["f1"] for s in scores]
    first = cells[0]
    return {
        "label": label(first),
        "method": first.method,
        "size": first.size,
        "human_fraction": first.human_fraction,
        "seeds": [c.seed for c in cells],
        "f1_mean": st.mean(f1s),
        "f1_sd": st.stdev(f1s) if len(f1s) > 1 else 0.0,
        "f1_by_seed": f1s,
        "exact_mean": st.mean(s["exact"] for s in scores),
        "HasAns_f1_mean": st.mean(s.get("HasAns_f1", 0.0) for s in scores),
        "NoAns_f1_mean": st.mean(s.get("NoAns_f1", 0.0) for s in scores),
        "f1_ci95": list(bootstrap_ci(seed_mean(cells, per_q))),
    }


def label(cell: Cell) -> str:
    return "base" if cell.method == "base" else f"{cell.method} n={cell.size}"


def paired_tests(main: list[Cell], per_q: dict[str, list[float]]) -> dict[str, dict[str, Any]]:
    """For each training size, every pair of methods (with base and abstaining) on the same questions, named
    "later vs earlier" in the order abstain, base, then the config's methods: the difference is later - earlier."""
    out = {}
    sizes = sorted({c.size for c in main if c.size})
    base = [g for g in groups(main) if not g[0].size]  # trained on nothing (base)
    for n in sizes:
        rows = {"abstain": per_q["abstain"]}
        if base:
            rows["base"] = seed_mean(base[0], per_q)
        if len(base) > 1:  # base's calibrated answers
            rows["base" + CALIBRATED] = seed_mean(base[1], per_q)
        rows |= {g[0].method: seed_mean(g, per_q) for g in groups(main) if g[0].size == n}
        out[f"n={n}"] = {f"{b} vs {a}": paired_bootstrap(rows[b], rows[a])
                         for a, b in itertools.combinations(rows, 2) if compared(a, b)}  # fmt: skip
    return out


def compared(a: str, b: str) -> bool:
    """Which rows a paired test compares: raw with raw and calibrated with calibrated (abstaining with both), and
    each method's calibrated answers with its raw ones."""
    if "abstain" in (a, b):
        return True
    return a.endswith(CALIBRATED) == b.endswith(CALIBRATED) or b == a + CALIBRATED or a == b + CALIBRATED


def first_beats_abstain(paired: dict[str, dict[str, Any]]) -> dict[str, int | None]:
    """Per method: the smallest training size at which it beats abstaining on every question (F1 higher, paired
    bootstrap p < ALPHA); None when no size does."""
    out: dict[str, int | None] = {}
    for size, tests in sorted(paired.items(), key=lambda kv: int(kv[0][2:])):
        for name, t in tests.items():
            method, _, other = name.partition(" vs ")
            if other != "abstain" or method.startswith("base"):
                continue
            out.setdefault(method, None)
            if out[method] is None and t["mean_diff"] > 0 and t["p_value"] < ALPHA:
                out[method] = int(size[2:])
    return out


def ablation_tests(ablation: list[Cell], per_q: dict[str, list[float]]) -> dict[str, Any]:
    """Each share of human feedback against the smallest share (the most AI feedback)."""
    gs = sorted(groups(ablation), key=lambda g: g[0].human_fraction)
    if len(gs) < 2:
        return {}
    ref = seed_mean(gs[0], per_q)
    name = f"human {gs[0][0].human_fraction:g}"
    return {f"human {g[0].human_fraction:g} vs {name}": paired_bootstrap(seed_mean(g, per_q), ref) for g in gs[1:]}


def verdict(groups_: list[dict], paired: dict[str, dict], suffix: str = "") -> str:
    """One sentence: did LaFFi beat SFT (at the largest size both ran), by how much, at what significance. With
    `suffix` CALIBRATED: the same for their calibrated answers."""
    a, b = "laffi" + suffix, "sft" + suffix
    sizes = [g["size"] for g in groups_ if g["method"] == a]
    sizes = [n for n in sizes if any(g["method"] == b and g["size"] == n for g in groups_)]
    if not sizes:
        return "LaFFi and SFT were not both in the grid, so they are not compared."
    n = max(sizes)
    tests = paired[f"n={n}"]
    # Named "later vs earlier" in config order: flip the sign if the config listed laffi before sft.
    test, sign = (tests[f"{a} vs {b}"], 1) if f"{a} vs {b}" in tests else (tests[f"{b} vs {a}"], -1)
    diff = sign * test["mean_diff"]
    lo, hi = sorted((sign * test["ci_low"], sign * test["ci_high"]))
    laffi = next(g for g in groups_ if g["method"] == a and g["size"] == n)
    sft = next(g for g in groups_ if g["method"] == b and g["size"] == n)
    if diff > 0 and test["p_value"] < ALPHA:
        outcome = "LaFFi beat SFT"
    elif diff < 0 and test["p_value"] < ALPHA:
        outcome = "LaFFi did worse than SFT"
    else:
        outcome = "LaFFi did not significantly differ from SFT"
    if suffix:
        outcome = outcome.replace("LaFFi", "Calibrated, LaFFi", 1)
    return (f"{outcome} with {n} training questions: F1 {laffi['f1_mean']:.1f} vs {sft['f1_mean']:.1f}, difference "
            f"{diff:+.1f} (95 % CI {lo:+.1f} to {hi:+.1f}, paired bootstrap p = {test['p_value']:.3f}, "
            f"{len(laffi['seeds'])} seed(s) averaged per question).")  # fmt: skip


def attention_summary(out: Path) -> dict[str, Any] | None:
    """The attention stage's tables and plots, when it ran."""
    path = out / "attention" / "attention.json"
    if not path.exists():
        return None
    a = read_json(path)
    markdown = (path.parent / "attention.md").read_text(encoding="utf-8")
    return {"questions": a["questions"], "answerable": a["answerable"], "markdown": markdown,
            "pngs": sorted(p.name for p in path.parent.glob("*.png"))}  # fmt: skip


def headroom_summary(out: Path) -> dict[str, Any] | None:
    """The feedback-headroom probe of each feedback source (headroom/<source>/H.json, `headroom: true`), with the
    source's verdicts against the gold answers (agreement, Cohen's kappa) from its feedback file."""
    from laffi.feedback.report import annotator_summary

    found = {}
    for source in ("ai", "human"):
        path = out / "headroom" / source / "H.json"
        if not path.exists():
            continue
        h = read_json(path)
        quality = annotator_summary(read_feedback(out / "feedback" / f"{source}.jsonl"))
        found[source] = {"annotators": quality["annotators"], "cohen_kappa": quality["cohen_kappa"],
                         "agreement": quality["agreement"], "questions": h["questions"],
                         "f1": {c: v["scores"]["f1"] for c, v in h["conditions"].items()},
                         "headroom": h["headroom"]}  # fmt: skip
    return found or None


def headroom_table(h: dict[str, Any]) -> str:
    rows = ["| source | annotators | kappa | questions | first | no_feedback | verdict_only | no_answer_sentence | "
            "feedback | headroom (feedback - no_feedback) |", "|---|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for source, s in h.items():
        f1, d = s["f1"], s["headroom"]
        rows.append(f"| {source} | {', '.join(s['annotators'])} | {s['cohen_kappa']:.3f} | {s['questions']} | "
                    + " | ".join(f"{f1[c]:.1f}" for c in ("first", "no_feedback", "verdict_only",
                                                            "no_answer_sentence", "feedback"))
                    + f" | {d['f1']:+.1f} (95 % CI {100 * d['ci_low']:+.1f} to {100 * d['ci_high']:+.1f}, "
                      f"p = {d['p_value']:.3f}) |")  # fmt: skip
    return "\n".join(rows)


def revision_of(out: Path, cell: Cell, eval_qs: list) -> dict[str, Any]:
    return revision_summary(eval_qs, cell_dir(out, cell) / "eval_answers.json")


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


def examples(out: Path, main: list[Cell], eval_qs: list) -> list[dict[str, Any]]:
    """A few evaluation questions with each method's answer (reference cells) and LaFFi's predicted feedback."""
    laffi = reference_cell(main, "laffi")
    if laffi is None or not (cell_dir(out, laffi) / "examples.json").exists():
        return []
    from laffi.records import Revision, read_jsonl

    revisions = read_jsonl(stages.revisions_path(cell_dir(out, laffi) / "examples.json"), Revision)
    by_id = {q.id: q for q in eval_qs}
    methods = list(dict.fromkeys(c.method for c in main))
    answers = {m: read_predictions(cell_dir(out, reference_cell(main, m)) / "eval_answers.json")
               for m in methods}  # fmt: skip
    rows = []
    for r in revisions:
        q = by_id[r.id]
        rows.append({"id": q.id, "question": q.question, "gold": q.answers, "answers": {m: answers[m][q.id]
                     for m in methods}, "laffi_predicted_feedback": r.feedback[0] if r.feedback else ""})  # fmt: skip
    return rows


# ------------------------------------------------------------------------------------------------ rendering


def _auc(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f}"


def _pct(x: float) -> str:
    return f"{x:.1f}"


def render_markdown(cfg: ExperimentConfig, s: dict[str, Any]) -> str:
    lines = ["# laffi experiment", "", f"**{s['verdict']}**", ""]
    if s.get("verdict_calibrated"):
        lines += [f"**{s['verdict_calibrated']}**", ""]
    lines += [
             f"{s['eval_questions']} evaluation questions from held-out {', '.join(s['eval_articles'])}; "
             f"{s['train_questions']} training questions from {', '.join(s['train_articles'])}; training "
             f"sizes {cfg.train_sizes}; seeds {cfg.seeds}; main grid human-feedback share {cfg.human_fraction:g} "
             f"(human source: {human_label(cfg)}; AI annotator: {ai_label(cfg)}).", "",
             "## Methods", "", "F1 is the mean over seeds (± their standard deviation); the 95 % interval is a "
             "bootstrap over questions of the seed-averaged per-question F1. " + calibration_note(s), "",
             groups_table(s["abstain"], s["groups"])]  # fmt: skip
    if s.get("missing"):
        n = len(s["missing"])
        lines += ["", f"Not made yet ({n} cell{'s' if n > 1 else ''} of the grid, left out of every table and test): "
                  + ", ".join(s["missing"]) + "."]  # fmt: skip
    beats = s.get("first_beats_abstain", {})
    if beats:
        lines += ["", "Smallest training size at which each method beats abstaining on every question (paired "
                  f"bootstrap, p < {ALPHA}): " + "; ".join(f"{m}: {'n=' + str(n) if n else 'none of the sizes'}"
                                                          for m, n in beats.items()) + "."]  # fmt: skip
    for size, tests in s["paired"].items():
        lines += ["", f"### Paired bootstrap tests, {size}", "", comparisons_table(tests)]
    if s["ablation"]:
        lines += ["", "## Ablation: share of human feedback", "", f"Method {cfg.ablation_method}, human source: "
                  f"{human_label(cfg)}.", "", groups_table(s["abstain"], s["ablation"], by="human")]  # fmt: skip
        if s["ablation_paired"]:
            lines += ["", comparisons_table(s["ablation_paired"])]
        quality = ai_quality_table({c: v for c, v in s["cells"].items() if v.get("human_fraction") is not None})
        if quality:
            lines += ["", "The AI share of each cell's feedback against the gold answers (before any filtering): "
                      "agreement and Cohen's κ with the reference annotator's verdict, the share contradicting the "
                      "gold answers, the share stating a parseable right answer.", "", quality]  # fmt: skip
    for path, rev in s.get("revision", {}).items():
        lines += ["", f"## Revision ({path})", "", "| questions | changed | helped | hurt | q/s revision only |",
                  "|---:|---:|---:|---:|---:|", f"| {rev['questions']} | {rev['changed']} | {rev['helped']} | "
                  f"{rev['hurt']} | {rev['questions_per_second_revision_only']:.2f} |"]  # fmt: skip
    made = made_data_table(s["cells"])
    if made:
        lines += ["", "## Training data that refine and critique made", "", made]
    lines += ["", "## Plots", ""] + [f"![{name}](plots/{name}.png)" for name in s["plots"]]
    if s.get("attention"):
        a = s["attention"]
        lines += ["", "## Attention", "", f"{a['questions']} evaluation questions ({a['answerable']} answerable); "
                  "means over layers, heads and questions (see `attention/attention.json`).", "", a["markdown"], ""]
        lines += [f"![{Path(f).stem}](attention/{Path(f).name})" for f in a["pngs"]]
    compared = na_scores_table(s["cells"])
    if compared:
        lines += ["", "## No-answer scores compared", "", "Cells answered with answer.na_score 'verdict' (the "
                  "adapter's probability of 'Verdict: incorrect' on its own answer) also record the first-token "
                  "score of the same answers. Each score's ROC AUC for telling unanswerable evaluation questions "
                  "from answerable ones, and the F1 of the answers under the threshold it gets on the calibration "
                  "questions.", "", compared]  # fmt: skip
    if s.get("headroom"):
        lines += ["", "## Feedback headroom", "", "The base model answering its training questions again with the "
                  "refinement prompt and its first answer, without feedback and with each source's feedback "
                  "(laffi/feedback/headroom.py; F1 on those questions, official scoring; kappa: the source's "
                  "verdicts against the gold answers'):", "", headroom_table(s["headroom"])]  # fmt: skip
    lines += ["", "## Cells", "", cells_table(s["cells"])]
    if s["examples"]:
        lines += ["", "## Examples", "", examples_markdown(s["examples"])]
    return "\n".join(lines) + "\n"


def calibration_note(s: dict[str, Any]) -> str:
    if not s.get("calibration_questions"):
        return "No calibration questions: no calibrated rows (data.calibration_questions)."
    return (f"A *calibrated* row is the same model's answers with a no-answer threshold: each cell answered "
            f"{s['calibration_questions']} calibration questions of the training articles (used by no training "
            "size), the threshold that maximises F1 there (the official best_f1_thresh on its no-answer scores) is "
            "applied to its evaluation answers, and a question scored above it counts as an abstention. Thresholds "
            "are in the cells table, with each score's ROC AUC for telling unanswerable evaluation questions from "
            "answerable ones (0.5: no better than chance). For laffi+revise the calibrated threshold is the revision "
            "threshold instead: an answer is revised only when its adapter's probability of 'Verdict: incorrect' is "
            "above the one that gave the best F1 on the calibration questions (-1: revise as the run did).")


def human_label(cfg: ExperimentConfig) -> str:
    return "simulated-human (a stand-in built from the gold answers, not people)" if cfg.human_feedback == \
        "simulated" else cfg.human_feedback  # fmt: skip


def groups_table(abstain: dict, rows: list[dict], by: str = "method") -> str:
    head = "| human share |" if by == "human" else "| method | n |"
    lines = [head + " seeds | EM | F1 | HasAns F1 | NoAns F1 | F1 95% CI |",
             "|---|" + ("" if by == "human" else "---:|") + "---:|---:|---:|---:|---:|---:|"]  # fmt: skip
    first = "| abstain (every question) |" + ("" if by == "human" else " - |")
    lines.append(first + f" - | {_pct(abstain['exact'])} | {_pct(abstain['f1'])} | 0.0 | 100.0 | - |")
    for g in rows:
        lead = f"| {g['human_fraction']:g} |" if by == "human" else f"| {g['method']} | {g['size'] or '-'} |"
        lo, hi = g["f1_ci95"]
        lines.append(f"{lead} {len(g['seeds'])} | {_pct(g['exact_mean'])} | {_pct(g['f1_mean'])} ± "
                     f"{_pct(g['f1_sd'])} | {_pct(g['HasAns_f1_mean'])} | {_pct(g['NoAns_f1_mean'])} | "
                     f"{_pct(lo)}–{_pct(hi)} |")  # fmt: skip
    return "\n".join(lines)


def ai_label(cfg: ExperimentConfig) -> str:
    """The AI annotator as the report names it: which kind, and whether contradicting records were dropped."""
    a = cfg.annotate
    label = a.annotator
    if a.annotator == "llm":
        label += (" fine-tuned on each cell's human share (learn_from_examples)" if a.learn_from_examples
                  else f" with {a.shots} shots")  # fmt: skip
    if a.filter_contradictions:
        label += "; AI feedback contradicting the gold answers dropped before training"
    return label


def made_data_table(cells: dict[str, dict]) -> str:
    """refine: revised answers kept for training, and why the rest were dropped; critique: whose answers it was
    trained to judge and how many of them the (reference) feedback calls correct."""
    lines = []
    for path, c in cells.items():
        d = c.get("made_data")
        if not d:
            continue
        if c["method"] == "refine":
            why = "; ".join(f"{n} {reason}" for reason, n in d["reasons"].items())
            lines.append(f"| {path} | revised {d['revised']}, kept {d['kept']}, dropped {d['dropped']} | {_md(why)} |")
        else:
            lines.append(f"| {path} | {d['answered']} answers of {_md(str(d['answers_from']))} | "
                         f"{d['judged_correct']} judged correct by {d['annotator']} |")  # fmt: skip
    if not lines:
        return ""
    return "\n".join(["| cell | data | detail |", "|---|---|---|", *lines])


def ai_quality_table(cells: dict[str, dict]) -> str:
    rows = [(path, c["ai_feedback"], c["feedback_split"]) for path, c in cells.items() if c.get("ai_feedback")]
    if not rows:
        return ""
    lines = ["| cell | AI annotator | AI records | agreement | Cohen's κ | contradicts gold | states a right answer | "
             "dropped by the filter |", "|---|---|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
    for path, q, split in rows:
        lines.append(f"| {path} | {', '.join(q['annotators'])} | {q['items']} | {q['agreement']:.3f} | "
                     f"{q['cohen_kappa']:.3f} | {q['contradicts_gold']:.3f} | {q['states_answer']:.3f} | "
                     f"{split.get('filtered', '-')} |")  # fmt: skip
    return "\n".join(lines)


def na_scores_table(cells: dict[str, dict]) -> str:
    rows = [(path, name, v) for path, c in cells.items() for name, v in c.get("na_scores", {}).items()]
    if not rows:
        return ""
    lines = ["| cell | no-answer score | AUC | threshold | calibrated F1 | HasAns F1 | NoAns F1 |",
             "|---|---|---:|---:|---:|---:|---:|"]  # fmt: skip
    for path, name, v in rows:
        has, no = v.get("calibrated_HasAns_f1"), v.get("calibrated_NoAns_f1")
        lines.append(f"| {path} | {name} | {_auc(v['auc'])} | {v['threshold']:.4g} | {_pct(v['calibrated_f1'])} | "
                     f"{'-' if has is None else _pct(has)} | {'-' if no is None else _pct(no)} |")  # fmt: skip
    return "\n".join(lines)


def cells_table(cells: dict[str, dict]) -> str:
    lines = ["| cell | EM | F1 | HasAns F1 | NoAns F1 | training steps | final loss | human / AI feedback | "
             "no-answer score AUC | no-answer threshold (calibration F1 raw -> best) | calibrated F1 | "
             "minutes: training / answering |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for path, c in cells.items():
        s = c["scores"]
        train, split, cal = c.get("train"), c.get("feedback_split"), c.get("calibrated")
        steps = str(train["steps"]) if train else "-"
        loss = f"{train['final_loss']:.3f}" if train and train["final_loss"] is not None else "-"
        mix = f"{split['human']} / {split['ai']}" if split else "-"
        threshold = (f"{cal['threshold']:.4g} ({_pct(cal['calibration_f1'])} -> {_pct(cal['calibration_best_f1'])})"
                     if cal else "-")  # fmt: skip
        lines.append(f"| {path} | {_pct(s['exact'])} | {_pct(s['f1'])} | {_pct(s.get('HasAns_f1', 0.0))} | "
                     f"{_pct(s.get('NoAns_f1', 0.0))} | {steps} | {loss} | {mix} | {_auc(c.get('na_score_auc'))} | "
                     f"{threshold} | "
                     f"{_pct(cal['scores']['f1']) if cal else '-'} | {_minutes(c.get('seconds'))} |")  # fmt: skip
    return "\n".join(lines)


def _minutes(seconds: dict[str, float | None] | None) -> str:
    """'training / answering' in minutes ('-' where unknown; answering is calibration + evaluation questions)."""
    if not seconds:
        return "-"
    answering = [v for k, v in seconds.items() if k != "train" and v is not None]
    train = "-" if seconds["train"] is None else f"{seconds['train'] / 60:.1f}"
    return f"{train} / {sum(answering) / 60:.1f}" if answering else f"{train} / -"


def examples_markdown(rows: list[dict]) -> str:
    out = []
    for r in rows:
        gold = " / ".join(r["gold"]) if r["gold"] else "(unanswerable)"
        out.append(f"**{_md(r['question'])}** — gold: {_md(gold)}")
        out.append("")
        out += [f"- {m}: {_md(a) if a else '(abstains)'}" for m, a in r["answers"].items()]
        out.append(f"- LaFFi's predicted feedback on its own answer: {_md(r['laffi_predicted_feedback'])}")
        out.append("")
    return "\n".join(out)


def _md(text: str) -> str:
    """Model and data text shown inert: HTML-escaped, and no markdown syntax of its own."""
    escaped = html.escape(" ".join(text.split()))
    return "".join("\\" + ch if ch in "\\`*_{}[]()#+-.!|<>" else ch for ch in escaped)


def render_html(markdown_text: str, out: Path) -> str:
    """One file with everything in it: the markdown rendered, the PNGs inlined as data URIs."""
    import markdown

    body = markdown.markdown(markdown_text, extensions=["tables"])
    for folder in ("plots", "attention"):
        for png in sorted((out / folder).glob("*.png")):
            data = base64.b64encode(png.read_bytes()).decode()
            body = body.replace(f'src="{folder}/{png.name}"', f'src="data:image/png;base64,{data}"')
    style = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}table{border-collapse:"
             "collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:.25em .6em}img{max-width:100%}")  # fmt: skip
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>laffi experiment</title><style>{style}"
            f"</style></head><body>{body}</body></html>\n")  # fmt: skip


def write_plots(out: Path, s: dict[str, Any], cells: list[Cell]) -> list[str]:
    from laffi.report import plots

    directory = out / "plots"
    directory.mkdir(exist_ok=True)
    made = []
    if s["groups"]:
        largest = max([g["size"] for g in s["groups"]])
        rows = [g for g in s["groups"] if g["size"] in (0, largest)]
        plots.methods(rows, s["abstain"]["f1"], directory / "methods.png", f"F1 by method, n={largest}")
        made.append("methods")
    if len({g["size"] for g in s["groups"] if g["size"]}) > 1:
        plots.sizes(s["groups"], s["abstain"], directory / "sizes.png")
        made.append("sizes")
    if len(s["ablation"]) > 1:
        plots.ablation(s["ablation"], s["abstain"]["f1"], directory / "ablation.png")
        made.append("ablation")
    logs = {c.path: _train_log(out, c) for c in cells if c.method != "base" and c.trained() == c}
    logs = {k: v for k, v in logs.items() if v}
    if logs:
        plots.losses(logs, directory / "loss.png")
        made.append("loss")
    return made


def _train_log(out: Path, cell: Cell) -> list[dict]:
    path = cell_dir(out, cell) / "adapter" / "train_log.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
