"""Results tables (markdown). Every table shows the trivial baseline "abstain on every question"."""

from __future__ import annotations

from typing import Any

COLUMNS = [("EM", "exact"), ("F1", "f1"), ("HasAns F1", "HasAns_f1"), ("NoAns F1", "NoAns_f1")]


def results_table(results: dict[str, dict[str, Any]], f1_ci: dict[str, Any] | None = None) -> str:
    """Markdown table: one row per method (the abstain baseline first), SQuAD 2.0 scores in percent, and the 95 %
    bootstrap interval of F1 when given."""
    names = [name for name, _ in COLUMNS] + (["F1 95% CI"] if f1_ci else []) + ["questions"]
    lines = ["| method | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    order = ["abstain"] + [m for m in results if m != "abstain"]
    for method in order:
        s = results[method]
        cells = [f"{s[key]:.1f}" if key in s else "-" for _, key in COLUMNS]
        if f1_ci:
            lo, hi = f1_ci[method]
            cells.append(f"{lo:.1f}–{hi:.1f}")
        label = "abstain (every question)" if method == "abstain" else method
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {s['total']} |")
    return "\n".join(lines)


def comparisons_table(paired: dict[str, dict[str, float]]) -> str:
    """Markdown table of paired bootstrap tests: F1 difference, its 95 % interval and p-value."""
    lines = ["| comparison | F1 difference | 95% CI | p |", "|---|---:|---:|---:|"]
    for name, r in paired.items():
        lines.append(f"| {name} | {r['mean_diff']:+.1f} | {r['ci_low']:+.1f} to {r['ci_high']:+.1f} | "
                     f"{r['p_value']:.3f} |")  # fmt: skip
    return "\n".join(lines)
