"""Side-by-side: a LoRA training step alone and beside a competing torch process, with OpenMP's waiting threads
spinning (`OMP_WAIT_POLICY=ACTIVE`), libgomp's default, a short spin (`GOMP_SPINCOUNT=10000`) and sleeping at once
(`PASSIVE`). Not a timed test.

On a machine with as many cores as threads, spinning threads of two processes steal each other's cores: each waits
for a peer that is not running. Each side runs in its own process (the policy is read when torch starts); the
competitor is a plain 2-thread torch matmul loop with the same policy as the side it competes with, started before
the timed steps and stopped after them.

    .venv/bin/python bench/contention.py --steps 3

Prints seconds per step (the median of the timed steps after one warm-up step) alone and contended, and their ratio,
for each policy.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
POOL = ROOT.parent / "shared" / "data" / "squad_v2" / "squad_v2_pool.json"
MODEL = os.environ.get("LAFFI_BENCH_MODEL", "bundled")

COMPETITOR = "import torch; torch.set_num_threads(2); a = torch.randn(768, 768)\nwhile True: a = (a @ a).tanh()"


def steps(n_steps: int, threads: int) -> None:
    """The child: time `n_steps` + 1 training steps of the bundled model on pool examples; prints seconds per step."""
    import torch

    torch.set_num_threads(threads)
    from peft import get_peft_model

    from laffi.config import TrainConfig
    from laffi.data import load_squad, sample_questions
    from laffi.feedback import reference
    from laffi.methods import build_examples
    from laffi.models import load_model, load_tokenizer
    from laffi.training.examples import tokenize_example
    from laffi.training.loop import _lora_in_base_dtype, lora_config
    from laffi.training.loss import completion_loss_sum

    tok = load_tokenizer(MODEL)
    qs = sample_questions(load_squad(POOL), 4 * (n_steps + 1), seed=0)
    exs = build_examples("laffi", qs, [reference.annotate(q, "") for q in qs], tok, shots=2, seed=0)
    rows = [tokenize_example(e, tok, 384) for e in exs]
    model = get_peft_model(load_model(MODEL, dtype="bfloat16", trainable=True), lora_config(TrainConfig()))
    model.train()
    autocast = _lora_in_base_dtype(model)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4)
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    times = []
    for s in range(n_steps + 1):
        start = time.perf_counter()
        batch = rows[4 * s: 4 * s + 4]
        for mb in (batch[:2], batch[2:]):
            with autocast:
                loss = completion_loss_sum(model, mb, pad) / 100
            loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - start)
    print(statistics.median(times[1:]))


# name -> OpenMP settings of both processes. GOMP_SPINCOUNT: how long a waiting thread spins before it sleeps
# (libgomp's default under ACTIVE is 30 billion, i.e. forever; 300,000 when unset).
POLICIES = {
    "ACTIVE": {"OMP_WAIT_POLICY": "ACTIVE"},
    "default": {},
    "GOMP_SPINCOUNT=10000": {"GOMP_SPINCOUNT": "10000"},
    "PASSIVE": {"OMP_WAIT_POLICY": "PASSIVE"},
}


def run(policy: str, contended: bool, n_steps: int) -> float:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    env |= {**POLICIES[policy], "HF_HUB_OFFLINE": "1"}
    rival = subprocess.Popen([sys.executable, "-c", COMPETITOR], env=env) if contended else None
    try:
        if rival is not None:
            time.sleep(2)  # the competitor is running before the first step
        out = subprocess.run([sys.executable, __file__, "--child", "--steps", str(n_steps)], env=env, check=True,
                             capture_output=True, text=True).stdout  # fmt: skip
        return float(out.strip().splitlines()[-1])
    finally:
        if rival is not None:
            rival.kill()
            rival.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        steps(args.steps, args.threads)
        return
    print(f"load average before: {os.getloadavg()[0]:.2f}; {os.cpu_count()} cores")
    print("| OpenMP wait policy | alone (s/step) | beside a 2-thread torch process (s/step) | ratio |")
    print("|---|---:|---:|---:|")
    for policy in POLICIES:
        alone = run(policy, False, args.steps)
        shared = run(policy, True, args.steps)
        print(f"| {policy} | {alone:.2f} | {shared:.2f} | {shared / alone:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
