"""The annotator comparison of docs/results.md in one command: few-shot, learned and reference annotators judging the
same answers, each against the reference annotator's verdict (gold answers, F1 >= 0.8). Not a timed test.

    .venv/bin/python bench/annotators.py --work runs/annotators [--annotators learned,few-shot] \
        [--verdict generate|score] [--learn-epochs 1] [--learn-learning-rate 5e-4]

What it does, every step cached in --work (a re-run reuses what is there; another setting is another file):
1. TRAIN300.json: 300 questions of the pool's training articles (`split_by_article(pool, 2, 0)[0]`, then
   `random.Random(0).sample(..., 300)`, as `laffi experiment configs/pool.yaml` draws them).
2. BASE.json: the base model's answers to them (`laffi answer`, the default 2-shot prompt).
3. HUMAN.jsonl: simulated-human feedback on the seeded 25 % human share (`laffi.feedback.mix.human_share`); no
   people annotated here. REST.json: a seeded 100 of the other 225, the held-out items every annotator judges, and
   REST_PREDS.json their answers.
4. REF.jsonl: the reference annotator on REST.json; then each annotator asked for, taught by HUMAN.jsonl only.
5. Prints `laffi annotators-compare` on REST.json and writes compare.json; each annotator's wall time is printed.
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
LAFFI = [sys.executable, "-m", "laffi"]


def run(args: list[str]) -> float:
    """Run one laffi command; returns its wall time."""
    print("$ laffi " + " ".join(args), flush=True)
    start = time.perf_counter()
    subprocess.run(LAFFI + args, check=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    return time.perf_counter() - start


def prepare(work: Path, human_fraction: float, held_out: int) -> None:
    from laffi.data import load_squad, split_by_article, write_squad
    from laffi.feedback.mix import human_share
    from laffi.feedback.simulated import simulated_human_feedback
    from laffi.files import write_jsonl

    work.mkdir(parents=True, exist_ok=True)
    train300 = work / "TRAIN300.json"
    if not train300.exists():
        pool_train = split_by_article(load_squad(POOL), 2, 0)[0]
        write_squad(random.Random(0).sample(pool_train, 300), train300)
    base = work / "BASE.json"
    if not base.exists():
        print(f"base answers: {run(['answer', '--data', str(train300), '--out', str(base)]):.0f} s")
    questions = load_squad(train300)
    preds = json.loads(base.read_text())
    human_ids = set(human_share([q.id for q in questions], human_fraction, 0))
    rest = [q for q in questions if q.id not in human_ids]
    write_jsonl(work / "HUMAN.jsonl", simulated_human_feedback([q for q in questions if q.id in human_ids], preds, 0))
    held = random.Random(0).sample(rest, held_out)
    write_squad(held, work / "REST.json")
    (work / "REST_PREDS.json").write_text(json.dumps({q.id: preds[q.id] for q in held}, indent=1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--work", type=Path, default=ROOT / "runs" / "annotators")
    ap.add_argument("--annotators", default="learned,few-shot", help="Comma-separated: learned, few-shot.")
    ap.add_argument("--human-fraction", type=float, default=0.25)
    ap.add_argument("--held-out", type=int, default=100)
    ap.add_argument("--verdict", default="generate", choices=("generate", "score"))
    ap.add_argument("--learn-epochs", type=float, default=1.0)
    ap.add_argument("--learn-learning-rate", type=float, default=5e-4)
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--prepare-only", action="store_true")
    a = ap.parse_args()
    work = a.work
    prepare(work, a.human_fraction, a.held_out)
    if a.prepare_only:
        return
    base, rest, human = work / "REST_PREDS.json", work / "REST.json", work / "HUMAN.jsonl"
    common = ["--data", str(rest), "--predictions", str(base), "--examples", str(human), "--batch-size", "8",
              "--max-new-tokens", str(a.max_new_tokens), "--verdict", a.verdict]  # fmt: skip
    run(["annotate", "--annotator", "reference", "--data", str(rest), "--predictions", str(base),
         "--out", str(work / "REF.jsonl")])  # fmt: skip
    compared = ["reference=" + str(work / "REF.jsonl")]
    for name in [n.strip() for n in a.annotators.split(",") if n.strip()]:
        if name == "learned":
            tag = f"learned-e{a.learn_epochs:g}-lr{a.learn_learning_rate:g}-{a.verdict}"
            extra = ["--learn-from-examples", "--learn-epochs", str(a.learn_epochs),
                     "--learn-learning-rate", str(a.learn_learning_rate)]  # fmt: skip
        elif name == "few-shot":
            tag, extra = f"few-shot-{a.verdict}", []
        else:
            raise SystemExit(f"--annotators: unknown annotator '{name}' (known: learned, few-shot)")
        out = work / f"{tag}.jsonl"
        seconds = run(["annotate", "--annotator", "llm", *common, *extra, "--out", str(out)])
        print(f"{tag}: {seconds:.0f} s", flush=True)
        compared.append(f"{tag}={out}")
    args = ["annotators-compare", "--ids-from", str(rest), "--out", str(work / "compare.json")]
    for c in compared:
        args += ["--feedback", c]
    run(args)


if __name__ == "__main__":
    main()
