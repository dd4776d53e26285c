"""The numbers of an experiment's report, from the files of its run directory alone (laffi/rundir.py).

Every number comes from the cells' files on disk (eval_answers.json and its sidecars, adapter/train_log.jsonl,
revisions), so the report can be rebuilt at any time and checked against them. Across seeds, a method's per-question
F1 is averaged over its seeds before the bootstrap, so intervals and paired tests are over questions, with seed noise
averaged out; the spread over seeds is reported beside them.
"""

from __future__ import annotations

import itertools
import statistics as st
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from laffi import methods
from laffi.data import articles, load_squad
from laffi.files import read_json
from laffi.grid import FEEDBACK_SOURCES, Cell, Finished, feedback_predictor, reference_cell
from laffi.metrics import abstain_predictions, score_one, squad_v2_scores
from laffi.records import read_feedback, read_predictions
from laffi.rundir import RunDir, first_token_na_prob_path, na_prob_path, revisions_path, timing_path
from laffi.stats import bootstrap_ci, paired_bootstrap, roc_auc

ALPHA = 0.05


@dataclass
class Summary:
    """What results.json holds and the markdown, HTML and plots render. `cells`: per cell path, its scores, training,
    timing, feedback split and calibrated answers; `groups`: per (method, size, share), seeds pooled; `paired`: per
    size, every compared pair of rows."""

    train_questions: int
    train_articles: list[str]
    calibration_questions: int
    eval_questions: int
    eval_articles: list[str]
    train_sizes: list[int]
    seeds: list[int]
    compare: list[str]
    abstain: dict[str, Any]
    cells: dict[str, dict[str, Any]]
    missing: list[str]
    groups: list[dict[str, Any]] = field(default_factory=list)
    paired: dict[str, dict[str, Any]] = field(default_factory=dict)
    first_beats_abstain: dict[str, int | None] = field(default_factory=dict)
    ablation: list[dict[str, Any]] = field(default_factory=list)
    ablation_paired: dict[str, Any] = field(default_factory=dict)
    revision: dict[str, Any] = field(default_factory=dict)
    verdict: str = ""
    verdict_calibrated: str = ""
    plots: list[str] = field(default_factory=list)
    examples: list[dict[str, Any]] = field(default_factory=list)
    attention: dict[str, Any] | None = None
    headroom: dict[str, Any] | None = None
    gain_vs_headroom: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def summarise(done: Finished) -> Summary:
    """The report's numbers for the cells of `done` (its plots are drawn by `laffi.report.write_report`)."""
    cfg, run, main, ablation = done.cfg, RunDir(done.out), done.main, done.ablation
    train_qs, eval_qs = load_squad(run.train), load_squad(run.eval)
    calibration = load_squad(run.calibration) if read_json(run.calibration)["data"] else []
    cells = list(dict.fromkeys(main + ablation))
    preds = {c.path: read_predictions(run.eval_answers(c)) for c in cells}
    per_q = {path: [100.0 * score_one(q, p[q.id])[1] for q in eval_qs] for path, p in preds.items()}
    per_q["abstain"] = [100.0 * score_one(q, "")[1] for q in eval_qs]
    cal = {c: calibrated(run, c, eval_qs, calibration, preds[c.path]) for c in cells}
    cal = {c: v for c, v in cal.items() if v is not None}
    for c, v in cal.items():
        kept = v.pop("preds")
        per_q[as_calibrated(c).path] = [100.0 * score_one(q, kept[q.id])[1] for q in eval_qs]
    s = Summary(
        train_questions=len(train_qs), train_articles=articles(train_qs), calibration_questions=len(calibration),
        eval_questions=len(eval_qs), eval_articles=articles(eval_qs), train_sizes=cfg.train_sizes, seeds=cfg.seeds,
        compare=list(cfg.compare), abstain=squad_v2_scores(eval_qs, abstain_predictions(eval_qs)),
        cells={c.path: cell_summary(run, c, eval_qs, preds[c.path], per_q[c.path]) for c in cells},
        missing=done.missing,
    )  # fmt: skip
    for c, v in cal.items():
        s.cells[c.path]["calibrated"] = v | {"f1_ci95": list(bootstrap_ci(per_q[as_calibrated(c).path]))}
    if calibration:
        for c in cells:
            both = na_scores_compared(run, c, eval_qs, calibration, preds[c.path])
            if both is not None:
                s.cells[c.path]["na_scores"] = both
    info = s.cells | {as_calibrated(c).path: v for c, v in cal.items()}
    rows = [x for c in main for x in ([c, as_calibrated(c)] if c in cal else [c])]  # raw and calibrated side by side
    s.groups = [group_summary(g, info, per_q) for g in groups(rows)]
    s.paired = paired_tests(rows, per_q)
    s.first_beats_abstain = first_beats_abstain(s.paired, [g[0].method for g in groups(rows) if g[0].size])
    s.ablation = [group_summary(g, s.cells, per_q) for g in groups(ablation)]
    s.ablation_paired = ablation_tests(ablation, per_q)
    s.revision = {c.path: revision_summary(eval_qs, run.eval_answers(c)) for c in cells if methods.get(c.method).revise}
    s.verdict = verdict(s.groups, s.paired, s.compare)
    if {m + CALIBRATED for m in s.compare} <= {g["method"] for g in s.groups}:
        s.verdict_calibrated = verdict(s.groups, s.paired, s.compare, CALIBRATED)
    s.examples = examples(run, main, eval_qs)
    s.attention = attention_summary(run)
    s.headroom = headroom_summary(run)
    s.gain_vs_headroom = gain_vs_headroom(s.groups, s.paired, s.headroom, mixed_headroom(run, main, train_qs))
    return s


def gain_vs_headroom(groups_: list[dict], paired: dict[str, dict], headroom: dict[str, Any] | None,
                     mixed: dict[tuple, dict[str, Any]] | None = None) -> list[dict]:  # fmt: skip
    """Each feedback-trained method's gain over the model as loaded (F1, paired bootstrap) beside the headroom of the
    feedback it trained on (`headroom: true`): the predictive law of on-policy self-distillation (arXiv 2605.30070)
    says the gain grows with it. Beside it the gap between the two prompts sdft distils from: feedback in the
    teacher's prompt against the first answers of the student's QA prompt (`feedback` - `first`). A cell
    trained on the AI share alone (human fraction 0) reads the 'ai' probe, one on the human share alone (1) the
    'human' probe; a group on a mixed share reads `mixed[(method, size, human_fraction)]` (`mixed_headroom`)."""
    if not headroom:
        return []
    untrained = [g["method"] for g in groups_ if not g["size"] and not g["method"].endswith(CALIBRATED)]
    rows = []
    for g in groups_:
        share = g["human_fraction"]
        source = {0.0: "ai", 1.0: "human"}.get(share) if share is not None else None
        h = headroom.get(source) if source else (mixed or {}).get((g["method"], g["size"], share))
        if source is None and h is not None:
            source = f"{round(100 * share)} % human + ai"
        if not (g["size"] and untrained and h) or g["method"].endswith(CALIBRATED):
            continue
        tests = paired.get(f"n={g['size']}", {})
        name = f"{g['method']} vs {untrained[0]}"
        test = tests.get(name)
        if test is None:
            continue
        rows.append({"method": g["method"], "size": g["size"], "source": source, "seeds": len(g["seeds"]),
                     "headroom": h["headroom"]["f1"], "headroom_ci95": [100 * h["headroom"]["ci_low"],
                                                                        100 * h["headroom"]["ci_high"]],
                     "feedback_vs_first": 100 * h["feedback_vs_first"]["mean_diff"],
                     "feedback_vs_first_ci95": [100 * h["feedback_vs_first"]["ci_low"],
                                                100 * h["feedback_vs_first"]["ci_high"]],
                     "gain": test["mean_diff"], "gain_ci95": [test["ci_low"], test["ci_high"]],
                     "p_value": test["p_value"]})  # fmt: skip
    return rows


def cell_summary(run: RunDir, cell: Cell, eval_qs: list, preds: dict[str, str], f1: list[float]) -> dict[str, Any]:
    info = {"method": cell.method, "size": cell.size, "seed": cell.seed, "human_fraction": cell.human_fraction,
            "scores": squad_v2_scores(eval_qs, preds), "f1_ci95": list(bootstrap_ci(f1))}  # fmt: skip
    na_file = na_prob_path(run.eval_answers(cell))
    if na_file.exists():  # how well its no-answer score tells unanswerable questions from answerable ones
        na = read_json(na_file)
        info["na_score_auc"] = roc_auc([na[q.id] for q in eval_qs], [q.is_impossible for q in eval_qs])
    train_info = run.train_info(cell.trained())
    if cell.size and train_info.exists():
        t = read_json(train_info)
        info["train"] = {"examples": t["examples"], "steps": t["steps"], "final_loss": t["final_loss"]}
        if methods.get(cell.method).made_data and cell.method in t:
            info["made_data"] = t[cell.method]  # what the method's `prepare` made (refine's kept revisions, ...)
    info["seconds"] = cell_seconds(run, cell)
    split = run.split(cell)
    if split.exists():
        s = read_json(split)
        info["feedback_split"] = {"human": s["human"], "ai": s["ai"]}
        if "filtered_contradictions" in s:  # annotate.filter_contradictions: AI records dropped before training
            info["feedback_split"]["filtered"] = len(s["filtered_contradictions"])
        if "learned_annotator" in s:  # annotate.learn_from_examples: the annotator fine-tuned on this cell's share
            info["feedback_split"]["learned_annotator"] = s["learned_annotator"]
        quality = ai_feedback_quality(run, cell, s)
        if quality is not None:
            info["ai_feedback"] = quality
    return info


def cell_seconds(run: RunDir, cell: Cell) -> dict[str, float | None]:
    """Wall time of a cell's own stages, from their timing files: training its adapter (None for base, or when the
    file is missing) and answering (and revising) the calibration and evaluation questions. Stages shared between
    cells (the base model's training answers, feedback) are not counted."""
    def answering(name: Path) -> float | None:
        path = timing_path(name)
        if not path.exists():
            return None
        t = read_json(path)
        return (t.get("answer_seconds") or 0.0) + (t.get("revise_seconds") or 0.0)

    train = run.train_timing(cell.trained())
    return {"train": read_json(train)["train_seconds"] if cell.size and train.exists() else None,
            "calibration": answering(run.calibration_answers(cell)), "eval": answering(run.eval_answers(cell))}


def ai_feedback_quality(run: RunDir, cell: Cell, split: dict[str, Any]) -> dict[str, Any] | None:
    """How good the AI share of a cell's feedback was, before any filtering: the AI annotator's records on the cell's
    questions that did not take human feedback, against the gold answers (agreement and Cohen's kappa with the
    reference annotator's verdict, contradictions, a parseable right answer: `annotators-compare`'s numbers). None
    for a cell without AI feedback or whose AI file is gone."""
    from laffi.feedback.report import annotator_summary
    from laffi.records import read_feedback

    if not split.get("ai"):
        return None
    if "learned_annotator" in split:
        source = run.learned_annotator(cell, bool(split.get("answers_from"))) / "ai.jsonl"
    else:
        source = run.feedback("ai", bool(split.get("answers_from")))
    mixed = run.mix(cell)
    if not (source.exists() and mixed.exists()):
        return None
    human = set(split.get("human_ids", []))
    ids = ({r.id for r in read_feedback(mixed)} | set(split.get("filtered_contradictions", []))) - human
    records = [r for r in read_feedback(source) if r.id in ids]
    if not records:
        return None
    s = annotator_summary(records)
    keys = ("annotators", "items", "agreement", "cohen_kappa", "contradicts_gold", "states_answer",
            "states_answer_incorrect", "incorrect_verdicts")  # fmt: skip
    return {k: s[k] for k in keys}


CALIBRATED = " (calibrated)"  # a cell's answers with its no-answer threshold applied: a row of its own in every table


def as_calibrated(cell: Cell) -> Cell:
    """The row of a cell's calibrated answers (a name only: no directory of its own)."""
    return Cell(cell.method + CALIBRATED, cell.size, cell.seed, cell.human_fraction)


def calibrated(run: RunDir, cell: Cell, eval_qs: list, calibration: list, preds: dict[str, str]) -> dict | None:
    """A cell's evaluation answers under the no-answer threshold chosen on the calibration questions (training
    articles, never evaluation ones): the official best_f1_thresh of its calibration answers and their no-answer
    scores; an evaluation question whose score is above it counts as an abstention, as the official script's
    --na-prob-thresh does. None when the cell has no scores (revised answers) or there is no calibration."""
    answers = run.calibration_answers(cell)
    if not calibration:
        return None
    if revisions_path(answers).exists():
        return calibrated_revision(answers, run.eval_answers(cell), eval_qs, calibration)
    return calibrate_with(answers, na_prob_path(answers), na_prob_path(run.eval_answers(cell)), eval_qs, calibration,
                          preds)  # fmt: skip


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


def na_scores_compared(run: RunDir, cell: Cell, eval_qs: list, calibration: list,
                       preds: dict[str, str]) -> dict[str, dict] | None:  # fmt: skip
    """For a cell answered with answer.na_score 'verdict': each no-answer score (verdict, first_token) with its ROC
    AUC on the evaluation questions and the calibrated F1 it gives. None for other cells."""
    answers, evals = run.calibration_answers(cell), run.eval_answers(cell)
    files = {"verdict": (na_prob_path(answers), na_prob_path(evals)),
             "first_token": (first_token_na_prob_path(answers), first_token_na_prob_path(evals))}
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


def calibrated_revision(cal_file: Path, eval_file: Path, eval_qs: list, calibration: list) -> dict | None:
    """A revising method (laffi+revise) with its revision threshold chosen on the calibration questions: an answer is
    revised only when its adapter's probability of "Verdict: incorrect" is above the threshold
    (answer.revise_threshold), so from one revision run (every answer above the configured threshold revised, every
    probability recorded) the answers at any higher threshold are known exactly. The threshold with the best
    calibration F1 (ties: the higher, fewer revisions) is applied to the evaluation revisions."""
    from laffi.records import Revision, read_jsonl

    on_cal = read_jsonl(revisions_path(cal_file), Revision)
    on_eval = read_jsonl(revisions_path(eval_file), Revision)
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
    return f"{cell.method} n={cell.size}" if cell.size else cell.method


def paired_tests(main: list[Cell], per_q: dict[str, list[float]]) -> dict[str, dict[str, Any]]:
    """For each training size, every pair of methods (with base and abstaining) on the same questions, named
    "later vs earlier" in the order abstain, base, then the config's methods: the difference is later - earlier."""
    out = {}
    sizes = sorted({c.size for c in main if c.size})
    base = [g for g in groups(main) if not g[0].size]  # trained on nothing (base, its calibrated row)
    for n in sizes:
        rows = {"abstain": per_q["abstain"]}
        rows |= {g[0].method: seed_mean(g, per_q) for g in base}  # with its calibrated answers
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


def first_beats_abstain(paired: dict[str, dict[str, Any]], trained: list[str]) -> dict[str, int | None]:
    """Per method of `trained` (rows of methods that train, raw or calibrated): the smallest training size at which it
    beats abstaining on every question (F1 higher, paired bootstrap p < ALPHA); None when no size does."""
    out: dict[str, int | None] = {}
    for size, tests in sorted(paired.items(), key=lambda kv: int(kv[0][2:])):
        for name, t in tests.items():
            method, _, other = name.partition(" vs ")
            if other != "abstain" or method not in trained:
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


def verdict(groups_: list[dict], paired: dict[str, dict], compare: list[str], suffix: str = "") -> str:
    """One sentence: did the first method of `compare` (`compare:` in the config; laffi) beat the second (sft) at the
    largest size both ran, by how much, at what significance. With `suffix` CALIBRATED: the same for their calibrated
    answers."""
    first, second = (methods.get(m).display for m in compare)
    a, b = compare[0] + suffix, compare[1] + suffix
    sizes = [g["size"] for g in groups_ if g["method"] == a]
    sizes = [n for n in sizes if any(g["method"] == b and g["size"] == n for g in groups_)]
    if not sizes:
        return f"{first} and {second} were not both in the grid, so they are not compared."
    n = max(sizes)
    tests = paired[f"n={n}"]
    # Named "later vs earlier" in config order: flip the sign if the config listed the first before the second.
    test, sign = (tests[f"{a} vs {b}"], 1) if f"{a} vs {b}" in tests else (tests[f"{b} vs {a}"], -1)
    diff = sign * test["mean_diff"]
    lo, hi = sorted((sign * test["ci_low"], sign * test["ci_high"]))
    ga = next(g for g in groups_ if g["method"] == a and g["size"] == n)
    gb = next(g for g in groups_ if g["method"] == b and g["size"] == n)
    if diff > 0 and test["p_value"] < ALPHA:
        outcome = f"{first} beat {second}"
    elif diff < 0 and test["p_value"] < ALPHA:
        outcome = f"{first} did worse than {second}"
    else:
        outcome = f"{first} did not significantly differ from {second}"
    if suffix:
        outcome = "Calibrated, " + outcome
    return (f"{outcome} with {n} training questions: F1 {ga['f1_mean']:.1f} vs {gb['f1_mean']:.1f}, difference "
            f"{diff:+.1f} (95 % CI {lo:+.1f} to {hi:+.1f}, paired bootstrap p = {test['p_value']:.3f}, "
            f"{len(ga['seeds'])} seed(s) averaged per question).")  # fmt: skip


def attention_summary(run: RunDir) -> dict[str, Any] | None:
    """The attention stage's tables and plots, when it ran."""
    path = run.attention
    if not path.exists():
        return None
    a = read_json(path)
    markdown = (path.parent / "attention.md").read_text(encoding="utf-8")
    return {"questions": a["questions"], "answerable": a["answerable"], "markdown": markdown,
            "pngs": sorted(p.name for p in path.parent.glob("*.png"))}  # fmt: skip


def mixed_headroom(run: RunDir, cells: list[Cell], train_qs: list) -> dict[tuple, dict[str, Any]]:
    """(method, size, human_fraction) -> the headroom of the feedback a group of cells on a mixed share trained on:
    each seed's own records have their probe (headroom/mixes.json), and, as for the gain, a question's F1 in each
    condition is averaged over the group's seeds before the paired bootstrap over questions."""
    from laffi.feedback.headroom import condition_path

    if not run.headroom_mixes.exists():
        return {}
    mixes, by_id, out = read_json(run.headroom_mixes), {q.id: q for q in train_qs}, {}
    for group in groups([c for c in cells if c.size and c.human_fraction and c.human_fraction < 1]):
        probes = [mixes.get(run.mix(c).stem) for c in group]
        if not all(probes) or not all(run.headroom(p).exists() for p in probes):
            continue
        f1 = {}
        for condition in ("first", "no_feedback", "feedback"):
            per_probe = []
            for p in probes:
                answers = read_json(condition_path(run.headroom(p), condition))
                per_probe.append({qid: score_one(by_id[qid], a)[1] for qid, a in answers.items()})
            ids = sorted(set.intersection(*(set(x) for x in per_probe)))
            f1[condition] = [sum(x[qid] for x in per_probe) / len(per_probe) for qid in ids]
        fb, nf, first = f1["feedback"], f1["no_feedback"], f1["first"]
        c = group[0]
        out[(c.method, c.size, c.human_fraction)] = {
            "probes": probes, "questions": len(fb),
            "headroom": {"f1": 100 * (sum(fb) - sum(nf)) / len(fb), **paired_bootstrap(fb, nf)},
            "feedback_vs_first": paired_bootstrap(fb, first)}  # fmt: skip
    return out


def headroom_summary(run: RunDir) -> dict[str, Any] | None:
    """The feedback-headroom probe of each feedback source (headroom/<source>/H.json, `headroom: true`) and of each
    mixed share's records (headroom/mixes.json), with the verdicts of the records probed against the gold answers
    (agreement, Cohen's kappa) from their feedback file."""
    from laffi.feedback.headroom import layout_of
    from laffi.feedback.report import annotator_summary

    found = {}
    mixes = sorted(set(read_json(run.headroom_mixes).values())) if run.headroom_mixes.exists() else []
    for source in [*FEEDBACK_SOURCES, *mixes]:
        path = run.headroom(source)
        if not path.exists():
            continue
        h = read_json(path)
        quality = annotator_summary(read_feedback(run.feedback(source)))
        found[source] = {"annotators": quality["annotators"], "cohen_kappa": quality["cohen_kappa"],
                         "agreement": quality["agreement"], "questions": h["questions"],
                         "abstain_f1": h["abstain"]["f1"],
                         "f1": {c: v["scores"]["f1"] for c, v in h["conditions"].items()},
                         "headroom": h["headroom"], "layout": h.get("layout", layout_of("refinement", 0)),
                         "feedback_vs_first": h["conditions"]["feedback"]["vs_first"]}  # fmt: skip
    return found or None


def revision_of(run: RunDir, cell: Cell, eval_qs: list) -> dict[str, Any]:
    return revision_summary(eval_qs, run.eval_answers(cell))


def revision_summary(questions: list, preds_file: Path) -> dict[str, Any]:
    """How often revision changed an answer, and how often the change helped or hurt (SQuAD F1 of the question)."""
    from laffi.metrics import score_one
    from laffi.records import Revision, read_jsonl

    by_id = {q.id: q for q in questions}
    revisions = read_jsonl(revisions_path(preds_file), Revision)
    changed = [r for r in revisions if r.final_answer != r.first_answer]
    delta = [score_one(by_id[r.id], r.final_answer)[1] - score_one(by_id[r.id], r.first_answer)[1] for r in changed]
    timing = read_json(timing_path(preds_file))
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


def examples(run: RunDir, main: list[Cell], eval_qs: list) -> list[dict[str, Any]]:
    """A few evaluation questions with each method's answer (reference cells) and the feedback that the grid's
    feedback-predicting adapter (`grid.feedback_predictor`) writes on its own answer."""
    predictor = feedback_predictor(main)
    if predictor is None or not run.examples(predictor).exists():
        return []
    from laffi.records import Revision, read_jsonl

    revisions = read_jsonl(revisions_path(run.examples(predictor)), Revision)
    by_id = {q.id: q for q in eval_qs}
    shown = list(dict.fromkeys(c.method for c in main))
    answers = {m: read_predictions(run.eval_answers(reference_cell(main, m))) for m in shown}
    rows = []
    for r in revisions:
        q = by_id[r.id]
        rows.append({"id": q.id, "question": q.question, "gold": q.answers,
                     "answers": {m: answers[m][q.id] for m in shown}, "predicted_by": predictor.method,
                     "predicted_feedback": r.feedback[0] if r.feedback else ""})  # fmt: skip
    return rows

