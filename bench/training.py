"""Side-by-side: TRL's SFTTrainer vs laffi's training loop on the same LoRA work. Not a timed test.

Both train the bundled model (bf16 weights, LoRA fp32) on the same tokenized LaFFi examples from the pool, with the
same LoRA settings, batch and micro-batch sizes, learning rate and number of steps. Each runs in its own process, so
peak RSS is its own. Prints non-padding tokens/s, the ratio, MFU (model FLOPs per second over the bf16 matmul peak
measured in this run), peak RSS and the final loss of both.

    .venv/bin/python bench/training.py --examples 200 --steps 8 --batch 4 --micro 4 --max-length 512

Model FLOPs per non-padding token: 4 x (decoder-layer parameters) + attention (forward 2N, backward 2N for the
activation gradients; the frozen base needs no weight gradients, LoRA's are negligible), plus the LM head on the
positions that carry loss. Recomputation under gradient checkpointing is not counted (it is overhead, not work).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
POOL = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "squad_v2" / "squad_v2_pool.json"
# Smoke-test a bench quickly with another model (e.g. a tiny random one): LAFFI_BENCH_MODEL=DIR.
MODEL = os.environ.get("LAFFI_BENCH_MODEL", "bundled")


def examples(n: int):
    from laffi.data import load_squad, sample_questions
    from laffi.feedback import reference
    from laffi.models import load_tokenizer
    from laffi.training import build_examples

    qs = sample_questions(load_squad(POOL), n, seed=0)
    feedback = [reference.annotate(q, "") for q in qs]  # feedback on abstentions: realistic for the base model
    return build_examples("laffi", qs, feedback, load_tokenizer(MODEL), shots=2, seed=0)


def run_laffi(args, out: Path) -> dict:
    from laffi.config import TrainConfig
    from laffi.training import train

    cfg = TrainConfig(max_steps=args.steps, batch_size=args.batch, micro_batch_size=args.micro, warmup_ratio=0,
                      max_length=args.max_length, checkpoint_every=args.checkpoint_every)  # fmt: skip
    exs = examples(args.examples)
    start = time.perf_counter()
    info = train(MODEL, "bfloat16", exs, cfg, out, progress=False)
    return {"seconds": time.perf_counter() - start, "final_loss": info["final_loss"]}


def run_trl(args, out: Path) -> dict:
    import torch
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    from laffi.config import TrainConfig
    from laffi.models import load_model, load_tokenizer
    from laffi.training import lora_config, tokenize_example

    tok = load_tokenizer(MODEL)
    rows = [tokenize_example(e, tok, args.max_length) for e in examples(args.examples)]
    cfg = TrainConfig(batch_size=args.batch, micro_batch_size=args.micro)
    sft_args = SFTConfig(
        output_dir=str(out), per_device_train_batch_size=args.micro,
        gradient_accumulation_steps=args.batch // args.micro,
        learning_rate=cfg.learning_rate, max_steps=args.steps, lr_scheduler_type="linear", logging_steps=1,
        save_strategy="no", report_to=[], use_cpu=True, seed=0, max_length=args.max_length, completion_only_loss=True,
        disable_tqdm=True,
    )  # fmt: skip
    torch.manual_seed(0)
    model = load_model(MODEL, dtype="bfloat16", trainable=True)
    trainer = SFTTrainer(model=model, args=sft_args, train_dataset=Dataset.from_list(rows), processing_class=tok,
                         peft_config=lora_config(cfg))  # fmt: skip
    start = time.perf_counter()
    trainer.train()
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    return {"seconds": time.perf_counter() - start, "final_loss": float(losses[-1])}


def tokens_trained(args) -> tuple[int, float]:
    """Non-padding tokens the steps consume (both sides see the same examples per step count), and model FLOPs."""
    from transformers import AutoConfig

    from laffi.models import load_tokenizer, resolve_model
    from laffi.training import tokenize_example

    tok = load_tokenizer(MODEL)
    rows = [tokenize_example(e, tok, args.max_length) for e in examples(args.examples)]
    cfg = AutoConfig.from_pretrained(resolve_model(MODEL))
    d, layers, vocab = cfg.hidden_size, cfg.num_hidden_layers, cfg.vocab_size
    kv = cfg.num_key_value_heads * d // cfg.num_attention_heads
    layer_params = layers * (2 * d * d + 2 * d * kv + 3 * d * cfg.intermediate_size)
    flops = 0.0
    for r in rows:
        n, loss = len(r["input_ids"]), sum(r["completion_mask"])
        attention = layers * 4 * d * n * (n + 1) / 2  # QK^T and AV, causal
        flops += 2 * (2 * layer_params * n + attention + 2 * vocab * d * loss)  # forward + activation gradients
    scale = args.batch * args.steps / len(rows)
    return int(sum(len(r["input_ids"]) for r in rows) * scale), flops * scale


def bf16_matmul_peak() -> float:
    import torch

    best = 0.0
    for m, k, n in ((2048, 576, 1536), (2048, 1536, 576), (1024, 1024, 1024)):
        a, b = torch.randn(m, k, dtype=torch.bfloat16), torch.randn(k, n, dtype=torch.bfloat16)
        for _ in range(3):
            a @ b
        start = time.perf_counter()
        for _ in range(10):
            a @ b
        best = max(best, 2 * m * k * n * 10 / (time.perf_counter() - start))
    return best


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--examples", type=int, default=200)
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--micro", type=int, default=4)
    p.add_argument("--max-length", type=int, default=512)
    p.add_argument("--which", choices=["laffi", "trl"])
    p.add_argument("--out", default="/tmp/laffi-bench-training")
    p.add_argument("--checkpoint-every", type=int, default=1, help="laffi side: train.checkpoint_every")
    p.add_argument("--laffi-variants", default="", help="Also run laffi with these checkpoint_every values, e.g. 2,3")
    args = p.parse_args()
    if args.which:  # child process: one side only
        result = (run_laffi if args.which == "laffi" else run_trl)(args, Path(args.out) / args.which)
        result["peak_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
        print(json.dumps(result))
        return
    tokens, flops = tokens_trained(args)
    peak = bf16_matmul_peak()
    results = {}
    runs = [("trl", "trl", []), ("laffi", "laffi", [])]
    runs += [(f"laffi/ckpt{n}", "laffi", ["--checkpoint-every", n]) for n in args.laffi_variants.split(",") if n]
    for name, which, extra in runs:
        cmd = [sys.executable, __file__, "--which", which, *sys.argv[1:], *extra]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=True)
        results[name] = json.loads(proc.stdout.splitlines()[-1])
    print(f"bf16 matmul peak (measured now): {peak / 1e9:.1f} GFLOP/s")
    for which, r in results.items():
        mfu = flops / r["seconds"] / peak
        print(f"{which:11s} {tokens / r['seconds']:7.1f} tokens/s  MFU {100 * mfu:4.1f}%  "
              f"peak RSS {r['peak_rss_gib']:.2f} GiB  final loss {r['final_loss']:.4f}  "
              f"({r['seconds']:.1f} s for {args.steps} steps)")  # fmt: skip
    for name in [n for n in results if n.startswith("laffi/")]:
        print(f"ratio {name} / trl: {results['trl']['seconds'] / results[name]['seconds']:.2f}x")
    print(f"ratio laffi / trl: {results['trl']['seconds'] / results['laffi']['seconds']:.2f}x "
          f"(~{tokens} non-padding tokens, {args.steps} steps of {args.batch} examples, micro-batch {args.micro}, "
          f"max length {args.max_length})")


if __name__ == "__main__":
    main()
