"""Results tables (markdown). Every table shows the trivial baseline "abstain on every question"."""

from __future__ import annotations

from typing import Any

COLUMNS = [("EM", "exact"), ("F1", "f1"), ("HasAns F1", "HasAns_f1"), ("NoAns F1", "NoAns_f1")]


def results_table(results: dict[str, dict[str, Any]]) -> str:
    """Markdown table: one row per method (the abstain baseline first), SQuAD 2.0 scores in percent."""
    header = "| method | " + " | ".join(name for name, _ in COLUMNS) + " | questions |"
    rule = "|---|" + "---:|" * (len(COLUMNS) + 1)
    lines = [header, rule]
    order = ["abstain"] + [m for m in results if m != "abstain"]
    for method in order:
        s = results[method]
        cells = [f"{s[key]:.1f}" if key in s else "-" for _, key in COLUMNS]
        label = "abstain (every question)" if method == "abstain" else method
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {s['total']} |")
    return "\n".join(lines)
