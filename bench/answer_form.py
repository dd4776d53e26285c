"""The form of a run's answers and its first-token no-answer scores, by answerability. Not a timed test.

Reads a `laffi experiment` run directory (it runs no model) and prints two tables:

- per cell, its evaluation answers: abstentions, answers longer than 10 words, the median length in words, and the
  mean first-token no-answer score (`eval_answers.na_prob.json`: the probability of the abstention phrase) on the
  unanswerable and the answerable questions;
- per headroom probe (`headroom: true`), the same mean score on its training questions in each condition: `first`
  (the base model's training answers, the student's prompt) and each generated condition (the probe's prompt).

It shows what a method changes in how readily the model abstains, e.g. what sdft's teacher reads into the feedback
(docs/results.md, "sdft with the teacher in the student's own prompt").

    .venv/bin/python bench/answer_form.py runs/sdft-qa
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def mean(values: list[float]) -> str:
    return f"{statistics.fmean(values):.3f}" if values else "-"


def scores_by_kind(scores: dict[str, float], impossible: dict[str, bool], ids: list[str]) -> tuple[str, str]:
    """(mean on the unanswerable questions, mean on the answerable ones) among `ids`."""
    return (mean([scores[i] for i in ids if impossible[i]]), mean([scores[i] for i in ids if not impossible[i]]))


def main(run: Path) -> None:
    from laffi.data import load_squad
    from laffi.rundir import RunDir

    rd = RunDir(run)
    impossible = {q.id: q.is_impossible for path in (rd.eval, rd.train) for q in load_squad(path)}
    print(f"{run}: evaluation answers")
    print("| cell | questions | abstentions | longer than 10 words | median words | no-answer score, unanswerable "
          "| no-answer score, answerable |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for answers in sorted((run / "cells").glob("**/eval_answers.json")):
        preds = json.loads(answers.read_text())
        words = [len(a.split()) for a in preds.values()]
        na_file = answers.with_suffix(".na_prob.json")
        na = scores_by_kind(json.loads(na_file.read_text()), impossible, list(preds)) if na_file.exists() else \
            ("-", "-")  # fmt: skip
        cell = answers.parent.relative_to(run / "cells")
        print(f"| {cell} | {len(preds)} | {sum(1 for a in preds.values() if not a.strip())} | "
              f"{sum(1 for w in words if w > 10)} | {statistics.median(words):g} | {na[0]} | {na[1]} |")
    first_file = rd.train_answers().with_suffix(".na_prob.json")
    for h_file in sorted((run / "headroom").glob("*/H.json")):
        h = json.loads(h_file.read_text())
        layout = h.get("layout", {"prompt": "refinement", "shots": 0})
        ids = list(json.loads((h_file.parent / "H.first.json").read_text()))
        print(f"\nheadroom/{h_file.parent.name} ({len(ids)} training questions, {sum(impossible[i] for i in ids)} "
              f"unanswerable; probe prompt {layout['prompt']}, {layout['shots']} shots): mean no-answer score")
        print("| condition | unanswerable | answerable |")
        print("|---|---:|---:|")
        sources = {"first": first_file, **{c: h_file.parent / f"H.{c}.na_prob.json" for c in h["conditions"]
                                            if c != "first"}}  # fmt: skip
        for condition, path in sources.items():
            if path.exists():
                u, a = scores_by_kind(json.loads(path.read_text()), impossible, ids)
                print(f"| {condition} | {u} | {a} |")


if __name__ == "__main__":
    if len(sys.argv) != 2 or not Path(sys.argv[1]).is_dir():
        sys.exit("usage: bench/answer_form.py RUN_DIR (a `laffi experiment` run directory)")
    main(Path(sys.argv[1]))
