"""Experiment plots (matplotlib, no display needed). Each function writes one PNG atomically."""

from __future__ import annotations

import json
import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: these machines have no screen
import matplotlib.pyplot as plt  # noqa: E402

from laffi.grid import Cell  # noqa: E402
from laffi.report.summary import Summary  # noqa: E402
from laffi.rundir import RunDir  # noqa: E402


def _save(fig, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp.png")
    fig.tight_layout()
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)


def _abstain_line(ax, f1: float) -> None:
    ax.axhline(f1, color="grey", linestyle="--", linewidth=1, label=f"abstain on every question ({f1:.1f})")


def methods(rows: list[dict], abstain_f1: float, path: Path, title: str) -> None:
    """Bars: each method's mean F1 with its 95 % interval; dots: the single seeds."""
    fig, ax = plt.subplots(figsize=(1.4 * len(rows) + 2.5, 3.6))
    for i, g in enumerate(rows):
        lo, hi = g["f1_ci95"]
        ax.bar(i, g["f1_mean"], color="#4c72b0", alpha=0.8)
        ax.errorbar(i, g["f1_mean"], yerr=[[g["f1_mean"] - lo], [hi - g["f1_mean"]]], color="black", capsize=4)
        ax.scatter([i] * len(g["f1_by_seed"]), g["f1_by_seed"], color="black", s=10, zorder=3)
    _abstain_line(ax, abstain_f1)
    ax.set_xticks(range(len(rows)), [g["method"].replace(" (calibrated)", "\n(calibrated)") for g in rows], fontsize=8)
    ax.set_ylabel("F1")
    ax.set_title(title)
    ax.legend(loc="lower right", fontsize=8)
    _save(fig, path)


def sizes(groups: list[dict], abstain: dict, path: Path) -> None:
    """F1, HasAns F1 and NoAns F1 against the number of training questions, one line per method (F1's error bars:
    95 % interval over questions); calibrated rows dashed in their method's colour; abstaining as a grey line."""
    fig, axes = plt.subplots(1, 3, figsize=(14, 3.8), sharex=True)
    methods = list(dict.fromkeys(g["method"].removesuffix(" (calibrated)") for g in groups if g["size"]))
    colours = {m: f"C{i}" for i, m in enumerate(methods)}
    for ax, key, title in zip(axes, ("f1_mean", "HasAns_f1_mean", "NoAns_f1_mean"), ("F1", "HasAns F1", "NoAns F1"),
                              strict=True):  # fmt: skip
        for method in dict.fromkeys(g["method"] for g in groups if g["size"]):
            pts = sorted((g["size"], g[key], *g["f1_ci95"]) for g in groups if g["method"] == method)
            xs, ys = [p[0] for p in pts], [p[1] for p in pts]
            plain = method.removesuffix(" (calibrated)")
            style = {"color": colours[plain], "linestyle": "--" if plain != method else "-", "marker": "o"}
            if key == "f1_mean":
                err = [[p[1] - p[2] for p in pts], [p[3] - p[1] for p in pts]]
                ax.errorbar(xs, ys, yerr=err, capsize=3, label=method, **style)
            else:
                ax.plot(xs, ys, label=method, **style)
        reference = {"f1_mean": abstain["f1"], "HasAns_f1_mean": 0.0, "NoAns_f1_mean": 100.0}[key]
        _abstain_line(ax, reference)
        ax.set_xscale("log")
        ax.set_xlabel("training questions")
        ax.set_title(title)
    axes[0].legend(fontsize=7)
    _save(fig, path)


def ablation(rows: list[dict], abstain_f1: float, path: Path) -> None:
    """F1 against the share of human-written feedback (error bars: 95 % interval; dots: seeds)."""
    rows = sorted(rows, key=lambda g: g["human_fraction"])
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    xs = [g["human_fraction"] for g in rows]
    ys = [g["f1_mean"] for g in rows]
    err = [[g["f1_mean"] - g["f1_ci95"][0] for g in rows], [g["f1_ci95"][1] - g["f1_mean"] for g in rows]]
    ax.errorbar(xs, ys, yerr=err, marker="o", capsize=3, label=rows[0]["method"])
    for g in rows:
        ax.scatter([g["human_fraction"]] * len(g["f1_by_seed"]), g["f1_by_seed"], color="black", s=10, zorder=3)
    _abstain_line(ax, abstain_f1)
    ax.set_xlabel("share of training questions with human feedback")
    ax.set_ylabel("F1")
    ax.legend(fontsize=8)
    _save(fig, path)


def losses(logs: dict[str, list[dict]], path: Path) -> None:
    """Training loss per optimizer step, one line per trained cell."""
    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    for name, log in logs.items():
        ax.plot([e["step"] for e in log], [e["loss"] for e in log], label=name, linewidth=1)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("training loss (loss tokens only)")
    ax.legend(fontsize=6, ncol=2)
    _save(fig, path)


def gain_vs_headroom(rows: list[dict], path: Path) -> None:
    """Each method's gain over base (F1, 95 % interval) against the headroom of the feedback it trained on (left) and
    against feedback - first, the gap between sdft's teacher and student prompts (right)."""
    fig, axes = plt.subplots(1, 2, figsize=(10.0, 4.2), sharey=True)
    gaps = [("headroom", "headroom: feedback - no_feedback (F1)"), ("feedback_vs_first", "feedback - first (F1)")]
    for ax, (key, label) in zip(axes, gaps, strict=True):
        for i, r in enumerate(rows):
            (gl, gh), (xl, xh) = r["gain_ci95"], r[f"{key}_ci95"]
            ax.errorbar(r[key], r["gain"], xerr=[[r[key] - xl], [xh - r[key]]],
                        yerr=[[r["gain"] - gl], [gh - r["gain"]]], fmt="o", capsize=3)  # fmt: skip
            # Methods trained on the same feedback share an x: their labels are stacked, not drawn over each other.
            ax.annotate(f"{r['method']} n={r['size']} ({r['source']})", (r[key], r["gain"]), fontsize=7,
                        xytext=(4, 4 + 9 * (i % 3)), textcoords="offset points")  # fmt: skip
        ax.axhline(0, color="grey", linestyle="--", linewidth=1, label="no gain over base")
        ax.set_xlabel(f"{label}, base model's training answers")
    axes[0].set_ylabel("gain over base: F1 (evaluation questions)")
    axes[0].legend(fontsize=7)
    _save(fig, path)


def write_plots(run: RunDir, s: Summary, cells: list[Cell]) -> list[str]:
    """The report's plots under plots/: F1 by method, by training size, by human share, and the training losses."""
    directory = run.plots
    directory.mkdir(exist_ok=True)
    made = []
    if s.groups:
        largest = max([g["size"] for g in s.groups])
        rows = [g for g in s.groups if g["size"] in (0, largest)]
        methods(rows, s.abstain["f1"], directory / "methods.png", f"F1 by method, n={largest}")
        made.append("methods")
    if len({g["size"] for g in s.groups if g["size"]}) > 1:
        sizes(s.groups, s.abstain, directory / "sizes.png")
        made.append("sizes")
    if len(s.ablation) > 1:
        ablation(s.ablation, s.abstain["f1"], directory / "ablation.png")
        made.append("ablation")
    if s.gain_vs_headroom:
        gain_vs_headroom(s.gain_vs_headroom, directory / "gain_vs_headroom.png")
        made.append("gain_vs_headroom")
    logs = {c.path: _train_log(run, c) for c in cells if c.size and c.trained() == c}
    logs = {k: v for k, v in logs.items() if v}
    if logs:
        losses(logs, directory / "loss.png")
        made.append("loss")
    return made


def _train_log(run: RunDir, cell: Cell) -> list[dict]:
    path = run.train_log(cell)
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
