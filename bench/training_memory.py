"""Where training memory goes: peak RSS and step time of laffi's loop under a few settings, each in its own process.
Not a timed test.

Every variant trains the bundled model (bf16, LoRA all-linear r16) for a few steps on the longest LaFFi examples of
the pool, cut to --max-length, in micro-batches of --batch (so each forward holds about batch x max-length tokens).

    .venv/bin/python bench/training_memory.py --max-length 512 --batch 4 --steps 3
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import threading
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
POOL = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "squad_v2" / "squad_v2_pool.json"
# Smoke-test a bench quickly with another model (e.g. a tiny random one): LAFFI_BENCH_MODEL=DIR.
MODEL = os.environ.get("LAFFI_BENCH_MODEL", "bundled")

# name -> (gradient checkpointing, LoRA branch in bf16, fixed malloc threshold)
VARIANTS = {
    "before: fp32 LoRA inputs, glibc malloc": (False, False, False),
    "no checkpointing, malloc threshold": (False, False, True),
    "no checkpointing, malloc, bf16 LoRA branch": (False, True, True),
    "checkpointing only": (True, False, False),
    "checkpointing, bf16 LoRA branch (laffi default)": (True, True, False),
    "all three": (True, True, True),
}


def longest_examples(n: int, max_length: int):
    from laffi.data import load_squad
    from laffi.feedback import reference
    from laffi.methods import build_examples
    from laffi.models import load_tokenizer
    from laffi.training.examples import tokenize_example

    tok = load_tokenizer(MODEL)
    qs = sorted(load_squad(POOL), key=lambda q: -len(q.context))[: 4 * n]
    exs = build_examples("laffi", qs, [reference.annotate(q, "") for q in qs], tok, shots=2, seed=0)
    lengths = [len(tokenize_example(e, tok, max_length)["input_ids"]) for e in exs]
    return exs[:n], sum(lengths[:n])


def child(args) -> None:
    import contextlib

    from laffi.config import TrainConfig
    from laffi.training import loop as training

    checkpointing, bf16_lora, malloc = VARIANTS[args.variant]
    if not bf16_lora:  # PEFT's default: LoRA weights fp32, each layer's input cast to fp32 for them
        training._lora_in_base_dtype = lambda model: contextlib.nullcontext()
    if malloc:  # tried and dropped from laffi: a fixed 1 MiB mmap threshold (less RSS, much slower)
        import ctypes

        ctypes.CDLL("libc.so.6").mallopt(-3, 1 << 20)
    exs, tokens = longest_examples(args.batch * args.steps, args.max_length)
    cfg = TrainConfig(max_steps=args.steps, batch_size=args.batch, micro_batch_size=args.batch,
                      max_length=args.max_length, warmup_ratio=0, gradient_checkpointing=checkpointing)  # fmt: skip
    peak = [0]

    def sample() -> None:  # RSS now, every 20 ms (ru_maxrss below is the kernel's own high-water mark)
        while True:
            with open("/proc/self/statm") as f:
                peak[0] = max(peak[0], int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE"))
            time.sleep(0.02)

    threading.Thread(target=sample, daemon=True).start()
    start = time.perf_counter()
    info = training.train(MODEL, "bfloat16", exs, cfg, Path(args.out) / "adapter", progress=False)
    seconds = time.perf_counter() - start
    print(json.dumps({"seconds": seconds, "tokens": tokens, "loss": info["final_loss"],
                      "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
                      "sampled_peak_gib": peak[0] / 2**30}))  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--max-length", type=int, default=512)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--variant", choices=list(VARIANTS))
    p.add_argument("--only", default="", help="comma-separated substrings: run only variants whose name has one")
    p.add_argument("--out", default="/tmp/laffi-bench-training-memory")
    args = p.parse_args()
    if args.variant:
        child(args)
        return
    wanted = [v for v in VARIANTS if not args.only or any(s in v for s in args.only.split(","))]
    print(f"{args.steps} steps, micro-batch = batch = {args.batch}, max length {args.max_length}")
    for name in wanted:
        cmd = [sys.executable, __file__, "--variant", name, "--max-length", str(args.max_length), "--batch",
               str(args.batch), "--steps", str(args.steps), "--out", args.out]  # fmt: skip
        r = json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.splitlines()[-1])
        print(f"{name:44s} peak RSS {r['peak_rss_gib']:5.2f} GiB  {r['tokens'] / r['seconds']:6.1f} tokens/s  "
              f"final loss {r['loss']:.4f}")


if __name__ == "__main__":
    main()
