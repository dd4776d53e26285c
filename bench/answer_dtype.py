"""Side-by-side: answering speed and agreement of the bundled model in float32 vs bfloat16. Not a timed test.

Answers the same pool questions with the same 2-shot prompt in both dtypes, in one process, and prints questions/s,
the ratio, the share of identical answers and the SQuAD F1 of each.

    .venv/bin/python bench/answer_dtype.py --questions 48
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
POOL = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "squad_v2" / "squad_v2_pool.json"


def main() -> None:
    from laffi.data import load_squad
    from laffi.engines.generation import DecodeSettings, answer_questions
    from laffi.metrics import squad_v2_scores
    from laffi.models import load_model, load_tokenizer

    p = argparse.ArgumentParser()
    p.add_argument("--questions", type=int, default=48)
    p.add_argument("--shots", type=int, default=2)
    args = p.parse_args()
    questions = load_squad(POOL)[: args.questions]
    tokenizer = load_tokenizer("bundled")
    answers, speed = {}, {}
    for dtype in ("float32", "bfloat16"):
        model = load_model("bundled", dtype=dtype)
        start = time.perf_counter()
        gens = answer_questions(model, tokenizer, questions, args.shots, DecodeSettings(32, 8))
        speed[dtype] = len(questions) / (time.perf_counter() - start)
        answers[dtype] = {g.id: g.answer for g in gens}
        f1 = squad_v2_scores(questions, answers[dtype])["f1"]
        print(f"{dtype:9s} {speed[dtype]:.2f} questions/s  F1 {f1:.1f}")
    same = sum(answers["float32"][q.id] == answers["bfloat16"][q.id] for q in questions) / len(questions)
    ratio = speed["bfloat16"] / speed["float32"]
    print(f"bfloat16 / float32 speed: {ratio:.2f}x; identical answers: {100 * same:.0f}%")


if __name__ == "__main__":
    main()
