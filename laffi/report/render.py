"""The report rendered: results.md (every table shows "abstain on every question") and a self-contained report.html
with the plots inlined. Reads only a `Summary` (laffi/report/summary.py) and the config it was made with."""

from __future__ import annotations

import base64
import html
from pathlib import Path
from typing import Any

from laffi import methods
from laffi.config import ExperimentConfig
from laffi.feedback import annotators
from laffi.report.summary import ALPHA, CALIBRATED, Summary


def _auc(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f}"


def _pct(x: float) -> str:
    return f"{x:.1f}"


def render_markdown(cfg: ExperimentConfig, s: Summary) -> str:
    lines = ["# laffi experiment", "", f"**{s.verdict}**", ""]
    if s.verdict_calibrated:
        lines += [f"**{s.verdict_calibrated}**", ""]
    lines += [
             f"{s.eval_questions} evaluation questions from held-out {', '.join(s.eval_articles)}; "
             f"{s.train_questions} training questions from {', '.join(s.train_articles)}; training "
             f"sizes {cfg.train_sizes}; seeds {cfg.seeds}; main grid human-feedback share {cfg.human_fraction:g} "
             f"(human source: {human_label(cfg)}; AI annotator: {ai_label(cfg)}).", "",
             "## Methods", "", "F1 is the mean over seeds (± their standard deviation); the 95 % interval is a "
             "bootstrap over questions of the seed-averaged per-question F1. " + calibration_note(s), "",
             groups_table(s.abstain, s.groups)]  # fmt: skip
    if s.missing:
        n = len(s.missing)
        lines += ["", f"Not made yet ({n} cell{'s' if n > 1 else ''} of the grid, left out of every table and test): "
                  + ", ".join(s.missing) + "."]  # fmt: skip
    beats = s.first_beats_abstain
    if beats:
        lines += ["", "Smallest training size at which each method beats abstaining on every question (paired "
                  f"bootstrap, p < {ALPHA}): " + "; ".join(f"{m}: {'n=' + str(n) if n else 'none of the sizes'}"
                                                          for m, n in beats.items()) + "."]  # fmt: skip
    for size, tests in s.paired.items():
        lines += ["", f"### Paired bootstrap tests, {size}", "", comparisons_table(tests)]
    if s.ablation:
        lines += ["", "## Ablation: share of human feedback", "", f"Method {cfg.ablation_method}, human source: "
                  f"{human_label(cfg)}.", "", groups_table(s.abstain, s.ablation, by="human")]  # fmt: skip
        if s.ablation_paired:
            lines += ["", comparisons_table(s.ablation_paired)]
        quality = ai_quality_table({c: v for c, v in s.cells.items() if v.get("human_fraction") is not None})
        if quality:
            lines += ["", "The AI share of each cell's feedback against the gold answers (before any filtering): "
                      "agreement and Cohen's κ with the reference annotator's verdict, the share contradicting the "
                      "gold answers, the share stating a parseable right answer.", "", quality]  # fmt: skip
    for path, rev in s.revision.items():
        lines += ["", f"## Revision ({path})", "", "| questions | changed | helped | hurt | q/s revision only |",
                  "|---:|---:|---:|---:|---:|", f"| {rev['questions']} | {rev['changed']} | {rev['helped']} | "
                  f"{rev['hurt']} | {rev['questions_per_second_revision_only']:.2f} |"]  # fmt: skip
    made = made_data_table(s.cells)
    if made:
        lines += ["", "## Training data that methods made before training", "", made]
    lines += ["", "## Plots", ""] + [f"![{name}](plots/{name}.png)" for name in s.plots]
    if s.attention:
        a = s.attention
        lines += ["", "## Attention", "", f"{a['questions']} evaluation questions ({a['answerable']} answerable); "
                  "means over layers, heads and questions (see `attention/attention.json`).", "", a["markdown"], ""]
        lines += [f"![{Path(f).stem}](attention/{Path(f).name})" for f in a["pngs"]]
    compared = na_scores_table(s.cells)
    if compared:
        lines += ["", "## No-answer scores compared", "", "Cells answered with answer.na_score 'verdict' (the "
                  "adapter's probability of 'Verdict: incorrect' on its own answer) also record the first-token "
                  "score of the same answers. Each score's ROC AUC for telling unanswerable evaluation questions "
                  "from answerable ones, and the F1 of the answers under the threshold it gets on the calibration "
                  "questions.", "", compared]  # fmt: skip
    if s.headroom:
        prompt = layout_words(next(iter(s.headroom.values()))["layout"])
        lines += ["", "## Feedback headroom", "", f"The base model answering its training questions again with "
                  f"{prompt} and its first answer, without feedback and with each source's feedback "
                  "(laffi/feedback/headroom.py; F1 on those questions, official scoring; kappa: the source's "
                  "verdicts against the gold answers'):", "", headroom_table(s.headroom)]  # fmt: skip
        if s.gain_vs_headroom:
            lines += ["", "Each method's gain over the model as loaded (paired bootstrap over the evaluation "
                      "questions) beside the headroom of the feedback it trained on. Self-distillation's predictive "
                      "law (arXiv 2605.30070) expects the gain to grow with the in-context gap: for sdft that is "
                      f"the teacher's prompt against the student's, feedback - first ({prompt} with the feedback "
                      "against the first answers), which the headroom (feedback - no_feedback) overstates when "
                      "revising alone loses F1.", "",
                      gain_table(s.gain_vs_headroom, abstain_vs_untrained(s)), "",
                      "(plots/gain_vs_headroom.png draws it.)"]
    lines += ["", "## Cells", "", cells_table(s.cells)]
    if s.examples:
        lines += ["", "## Examples", "", examples_markdown(s.examples)]
    return "\n".join(lines) + "\n"


def calibration_note(s: Summary) -> str:
    if not s.calibration_questions:
        return "No calibration questions: no calibrated rows (data.calibration_questions)."
    return (f"A *calibrated* row is the same model's answers with a no-answer threshold: each cell answered "
            f"{s.calibration_questions} calibration questions of the training articles (used by no training "
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
    label = annotators.get(cfg.annotate.annotator).label(cfg.annotate)
    if cfg.annotate.filter_contradictions:
        label += "; AI feedback contradicting the gold answers dropped before training"
    return label


def made_data_table(cells: dict[str, dict]) -> str:
    """The data each method's `prepare` made, as the method describes it (`Method.made_data`): refine's revised answers
    kept for training and why the rest were dropped; whose answers critique was trained to judge."""
    lines = []
    for path, c in cells.items():
        d = c.get("made_data")
        if not d:
            continue
        data, detail = methods.get(c["method"]).made_data(d)
        lines.append(f"| {path} | {inert(data)} | {inert(detail)} |")
    if not lines:
        return ""
    return "\n".join(["| cell | data | detail |", "|---|---|---|", *lines])


def ai_quality_table(cells: dict[str, dict]) -> str:
    rows = [(path, c["ai_feedback"], c["feedback_split"]) for path, c in cells.items() if c.get("ai_feedback")]
    if not rows:
        return ""
    lines = ["| cell | AI annotator | AI records | agreement | Cohen's κ | contradicts gold | states a right answer: "
             "all / incorrect verdicts | dropped by the filter |", "|---|---|---:|---:|---:|---:|---:|---:|"]
    for path, q, split in rows:
        lines.append(f"| {path} | {', '.join(q['annotators'])} | {q['items']} | {q['agreement']:.3f} | "
                     f"{q['cohen_kappa']:.3f} | {q['contradicts_gold']:.3f} | {q['states_answer']:.3f} / "
                     f"{q['states_answer_incorrect']:.3f} | {split.get('filtered', '-')} |")  # fmt: skip
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
        out.append(f"**{inert(r['question'])}** — gold: {inert(gold)}")
        out.append("")
        out += [f"- {m}: {inert(a) if a else '(abstains)'}" for m, a in r["answers"].items()]
        who = methods.get(r["predicted_by"]).display
        out.append(f"- {inert(who)}'s predicted feedback on its own answer: {inert(r['predicted_feedback'])}")
        out.append("")
    return "\n".join(out)


def inert(text: str) -> str:
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


def layout_words(layout: dict[str, Any]) -> str:
    """The headroom probe's prompt (H.json "layout", train.sdft_teacher_prompt) in words."""
    if layout["prompt"] == "qa":
        return f"the {layout['shots']}-shot QA prompt as sdft's `qa` teacher reads it"
    return "the refinement prompt"


def headroom_table(h: dict[str, Any]) -> str:
    rows = ["| source | annotators | kappa | questions | abstain on every question | first | no_feedback | "
            "verdict_only | no_answer_sentence | feedback | headroom (feedback - no_feedback) |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for source, s in h.items():
        f1, d = s["f1"], s["headroom"]
        rows.append(f"| {source} | {', '.join(s['annotators'])} | {s['cohen_kappa']:.3f} | {s['questions']} | "
                    f"{s['abstain_f1']:.1f} | "
                    + " | ".join(f"{f1[c]:.1f}" for c in ("first", "no_feedback", "verdict_only",
                                                            "no_answer_sentence", "feedback"))
                    + f" | {d['f1']:+.1f} (95 % CI {100 * d['ci_low']:+.1f} to {100 * d['ci_high']:+.1f}, "
                      f"p = {d['p_value']:.3f}) |")  # fmt: skip
    return "\n".join(rows)


def abstain_vs_untrained(s: Summary) -> dict[str, float] | None:
    """The paired test of the untrained model (base) against abstaining on every question, from any size's tests."""
    untrained = [g["method"] for g in s.groups if not g["size"] and not g["method"].endswith(CALIBRATED)]
    name = f"{untrained[0]} vs abstain" if untrained else None
    return next((tests[name] for tests in s.paired.values() if name in tests), None)


def gain_table(rows: list[dict], abstain: dict[str, float] | None = None) -> str:
    """The gain-vs-headroom rows; first, when `abstain` (base vs abstain) is given, abstaining on every question's
    gain over base, the sign of that test turned."""
    lines = ["| method | n | seeds | feedback | headroom (95 % CI) | feedback - first (95 % CI) "
             "| gain over base F1 (95 % CI) | p |", "|---|---:|---:|---|---:|---:|---:|---:|"]  # fmt: skip
    if abstain is not None:
        lines.append(f"| abstain on every question | - | - | - | - | - | {-abstain['mean_diff']:+.1f} "
                     f"({-abstain['ci_high']:+.1f} to {-abstain['ci_low']:+.1f}) | {abstain['p_value']:.3f} |")
    for r in rows:
        (hl, hh), (fl, fh), (gl, gh) = r["headroom_ci95"], r["feedback_vs_first_ci95"], r["gain_ci95"]
        lines.append(f"| {r['method']} | {r['size']} | {r['seeds']} | {r['source']} | {r['headroom']:+.1f} "
                     f"({hl:+.1f} to {hh:+.1f}) | {r['feedback_vs_first']:+.1f} ({fl:+.1f} to {fh:+.1f}) | "
                     f"{r['gain']:+.1f} ({gl:+.1f} to {gh:+.1f}) | {r['p_value']:.3f} |")  # fmt: skip
    return "\n".join(lines)


def comparisons_table(paired: dict[str, dict[str, float]]) -> str:
    """Markdown table of paired bootstrap tests: F1 difference, its 95 % interval and p-value."""
    lines = ["| comparison | F1 difference | 95% CI | p |", "|---|---:|---:|---:|"]
    for name, r in paired.items():
        lines.append(f"| {name} | {r['mean_diff']:+.1f} | {r['ci_low']:+.1f} to {r['ci_high']:+.1f} | "
                     f"{r['p_value']:.3f} |")  # fmt: skip
    return "\n".join(lines)
