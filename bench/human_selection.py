"""Random against uncertain human selection (docs/results.md, "Where the human budget goes"): the simulated human is
the people, the learned annotator writes every item no person got, and the mixed feedback is judged against the
reference annotator's rule (gold answers, F1 >= 0.8). Not a timed test.

    .venv/bin/python bench/human_selection.py --work runs/selection [--questions 100] [--fractions 0.1,0.25,0.5] \
        [--seeds 0] [--selections random,uncertain] [--learn-epochs 5] [--selection-rounds 2] [--first-round 0.5]

Every step is cached in --work (a re-run reuses it; another setting is another file):
1. TRAIN.json: the first --questions of a seeded 300 of the pool's training articles (`split_by_article(pool, 2, 0)[0]`,
   `random.Random(0).sample(..., 300)`, as bench/annotators.py draws them); evaluation articles are never read.
2. BASE.json: the base model's answers (`laffi answer`, the default 2-shot prompt).
3. HUMAN.jsonl: simulated-human feedback on every question (the people: each chosen item takes its record).
4. Per seed, human share and selection: the human ids (`laffi.feedback.mix.human_share`, or the uncertain rounds of
   `laffi.pipeline.cells.uncertain_selection`), the learned annotator fine-tuned on them annotating the rest
   (`stages.annotate_learning`, as `learned_ai_stage` does), the mix (`mix_feedback`), and its summary
   (`annotator_summary`): verdict agreement and kappa with the reference rule, contradictions, stated right answers.
Writes results.json and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
POOL = ROOT.parent / "shared" / "data" / "squad_v2" / "squad_v2_pool.json"


def prepare(work: Path, n: int) -> None:
    from laffi.data import load_squad, split_by_article, write_squad
    from laffi.feedback.simulated import simulated_human_feedback
    from laffi.files import write_jsonl

    work.mkdir(parents=True, exist_ok=True)
    train = work / "TRAIN.json"
    if not train.exists():
        pool_train = split_by_article(load_squad(POOL), 2, 0)[0]
        write_squad(random.Random(0).sample(pool_train, 300)[:n], train)
    base = work / "BASE.json"
    if not base.exists():
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "laffi", "answer", "--data", str(train), "--out", str(base),
                        "--no-progress"], check=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})  # fmt: skip
        print(f"base answers: {time.perf_counter() - start:.0f} s", flush=True)
    human = work / "HUMAN.jsonl"
    if not human.exists():
        write_jsonl(human, simulated_human_feedback(load_squad(train), json.loads(base.read_text()), 0))


def arm(work: Path, cfg, selection: str, fraction: float, seed: int) -> dict:
    from laffi.data import load_squad
    from laffi.feedback.llm import failures_path, read_failures
    from laffi.feedback.mix import human_share, mix_feedback
    from laffi.feedback.report import annotator_summary
    from laffi.files import write_json, write_jsonl
    from laffi.pipeline import stages
    from laffi.records import read_feedback

    questions = load_squad(work / "TRAIN.json")
    preds = json.loads((work / "BASE.json").read_text())
    human = read_feedback(work / "HUMAN.jsonl")
    tag = f"{selection}-f{fraction:g}-seed{seed}-e{cfg.learn_epochs:g}"
    if selection == "uncertain":
        tag += f"-r{cfg.selection_rounds}-first{cfg.first_round:g}"
    directory = work / tag
    directory.mkdir(exist_ok=True)
    if (directory / "result.json").exists():
        return json.loads((directory / "result.json").read_text())
    start = time.perf_counter()
    if selection == "random":
        chosen, rounds = human_share([r.id for r in human], fraction, seed), None
    else:
        from laffi.pipeline.cells import uncertain_selection

        sel = uncertain_selection(cfg, questions, preds, human, fraction, seed, directory / "rounds", False)
        chosen, rounds = sel["human_ids"], sel
    share = [r for r in human if r.id in set(chosen)]
    out = directory / "ai.jsonl"
    ai = stages.annotate_learning(questions, preds, share, out, cfg, False, adapter=directory / "adapter")
    records, split = mix_feedback(human, ai, fraction, seed, human_ids=chosen)
    write_jsonl(directory / "mix.jsonl", records)
    s = annotator_summary(records, len(read_failures(failures_path(out))))
    result = {"selection": selection, "fraction": fraction, "seed": seed, "human": split["human"],
              "ai": split["ai"], "unparsed": s.get("failures"), "items": s["items"], "agreement": s["agreement"],
              "kappa": s["cohen_kappa"], "contradicts_gold": s["contradicts_gold"],
              "states_answer": s["states_answer"], "seconds": round(time.perf_counter() - start, 1),
              "ai_only": annotator_summary(ai)}  # fmt: skip
    if rounds is not None:
        result["rounds"] = [{k: v for k, v in r.items() if k != "ids"} | {"n": len(r["ids"])} for r in rounds["rounds"]]
    write_json(directory / "result.json", result)
    print(json.dumps({k: v for k, v in result.items() if k != "ai_only"}), flush=True)
    return result


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--work", type=Path, default=Path("runs/selection"))
    p.add_argument("--questions", type=int, default=100)
    p.add_argument("--fractions", default="0.1,0.25,0.5")
    p.add_argument("--seeds", default="0")
    p.add_argument("--selections", default="random,uncertain")
    p.add_argument("--learn-epochs", type=float, default=5.0)
    p.add_argument("--selection-rounds", type=int, default=2)
    p.add_argument("--first-round", type=float, default=0.5)
    p.add_argument("--arms", default="", help="selection:fraction,... in this order (default: every selection at "
                   "every fraction, seed by seed); a finished arm is read back from its result.json")
    a = p.parse_args()
    from laffi.config import AnnotateConfig

    prepare(a.work, a.questions)
    results = []
    seeds = [int(s) for s in a.seeds.split(",")]
    if a.arms:
        arms = [(sel, float(f), seed) for seed in seeds for sel, f in (x.split(":") for x in a.arms.split(","))]
    else:
        arms = [(sel, float(f), seed) for seed in seeds for f in a.fractions.split(",")
                for sel in a.selections.split(",")]  # fmt: skip
    for selection, fraction, seed in arms:
        extra = ({"human_selection": "uncertain", "selection_rounds": a.selection_rounds,
                  "first_round": a.first_round} if selection == "uncertain" else {})  # fmt: skip
        cfg = AnnotateConfig(annotator="llm", learn_from_examples=True, learn_epochs=a.learn_epochs,
                             learn_learning_rate=5e-4, verdict="score", batch_size=8, max_new_tokens=48,
                             **extra)  # fmt: skip
        results.append(arm(a.work, cfg, selection, fraction, seed))
    (a.work / "results.json").write_text(json.dumps(results, indent=1))
    print("| selection | human share | human / AI records | verdict agreement | κ | contradicts gold | states a right "
          "answer | seconds |")
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['selection']} | {r['fraction']:.0%} | {r['human']} / {r['ai']} | {r['agreement']:.3f} | "
              f"{r['kappa']:.3f} | {r['contradicts_gold']:.3f} | {r['states_answer']:.3f} | {r['seconds']:.0f} |")


if __name__ == "__main__":
    main()
