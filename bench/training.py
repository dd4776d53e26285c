"""Side-by-side: TRL's SFTTrainer vs laffi's training loop on the same LoRA work. Not a timed test.

Both train the bundled model (bf16 weights, LoRA fp32) on the same tokenized LaFFi examples from the pool, in the
same order (laffi's seeded schedule; TRL reads them sequentially), with the same LoRA settings, batch and
micro-batch sizes, learning rate and number of steps. Each runs in its own process, so peak RSS is its own. Prints
non-padding tokens/s, the ratio, MFU (model FLOPs per second over the bf16 matmul peak measured in this run), peak
RSS, the final loss of both and their largest per-step loss difference (same work: the losses must be close).
A third process, "bare f+b", runs only the frozen model's forward and backward on the same micro-batches: the MFU
that no LoRA loop can exceed on this machine.

    .venv/bin/python bench/training.py --examples 200 --steps 8 --batch 4 --micro 4 --max-length 512

Model FLOPs per non-padding token: 4 x (decoder-layer parameters) + attention (forward 2N, backward 2N for the
activation gradients; the frozen base needs no weight gradients, LoRA's are negligible), plus the LM head on the
positions that carry loss. Recomputation under gradient checkpointing is not counted (it is overhead, not work).

Shared-prefix training (`train.shared_prefix`) against one example per row, side by side in one run
(`--compare-shared-prefix`): both sides train the same examples (`--method sft|laffi`) from the pool's training
articles (the article split of `data.eval_articles: 1`, seed 0) with laffi's defaults otherwise, each in its own
process; prints tokens computed (padding excluded), wall seconds, their ratios, the last step's loss and the loss of
each trained adapter on the whole sample (mean per completion token, packed, no dropout):

    .venv/bin/python bench/training.py --compare-shared-prefix --method sft --sample passages --passages 12
    .venv/bin/python bench/training.py --compare-shared-prefix --method laffi --sample random --questions 300 --steps 12

`--with-trl` adds TRL's `SFTTrainer` as a third process on the same examples in the order of one example per row
(laffi's batch, micro-batch, learning rate, LoRA and max length; completion-only loss).

`--sample passages`: every question of `--passages` passages drawn at random (seed 0), the structure of passage-dense
data; `--sample random`: `--questions` questions drawn at random (few share a passage). `--steps N` trains the first N
optimizer steps on each side instead of one epoch and extrapolates wall seconds to the epoch (steps per epoch / N).

LAFFI_BENCH_KEEP_FREED_MEMORY=1 applies engines/allocator.py's malloc settings on every side (they are for answering:
they made both trainers slower or bigger here).
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
    from laffi.methods import build_examples
    from laffi.models import load_tokenizer

    qs = sample_questions(load_squad(POOL), n, seed=0)
    feedback = [reference.annotate(q, "") for q in qs]  # feedback on abstentions: realistic for the base model
    return build_examples("laffi", qs, feedback, load_tokenizer(MODEL), shots=2, seed=0)


def sample_examples(args):
    """`--compare-shared-prefix`: examples of `--method` on the `--sample` of the pool's training articles."""
    import random

    from laffi.data import load_squad, sample_questions, split_by_article
    from laffi.feedback import reference
    from laffi.methods import build_examples
    from laffi.models import load_tokenizer

    train_qs, _ = split_by_article(load_squad(POOL), 1, 0)
    if args.sample == "all":
        qs = train_qs
    elif args.sample == "passages":
        contexts = sorted({q.context for q in train_qs})
        picked = set(random.Random(0).sample(contexts, args.passages))
        qs = [q for q in train_qs if q.context in picked]
    else:
        qs = sample_questions(train_qs, args.questions, seed=0)
    feedback = [reference.annotate(q, "") for q in qs]
    return build_examples(args.method, qs, feedback, load_tokenizer(MODEL), shots=2, seed=0)


def eval_loss(examples, adapter: Path) -> float:
    """Mean loss per completion token of the adapter on `examples` (packed: the same numbers as one per row)."""
    import torch

    from laffi.models import load_adapter, load_model, load_tokenizer
    from laffi.training.examples import tokenize_example
    from laffi.training.packing import group_keys, pack, pack_step, packed_loss

    tok = load_tokenizer(MODEL)
    model = load_adapter(load_model(MODEL, dtype="bfloat16"), str(adapter))
    model.eval()
    rows = [tokenize_example(e, tok, 1024) for e in examples]
    total = 0.0
    with torch.no_grad():
        for mb in pack_step(rows, group_keys(examples), list(range(len(rows))), 2048):
            total += packed_loss(model, [pack(rows, members) for members in mb], tok.pad_token_id).item()
    return total / sum(sum(r["completion_mask"]) for r in rows)


def laffi_config(args):
    from dataclasses import replace

    from laffi.config import TrainConfig

    if args.compare_shared_prefix:  # laffi's defaults, one epoch (or --steps)
        cfg = TrainConfig(epochs=1, max_steps=args.steps or -1)
    else:
        cfg = TrainConfig(max_steps=args.steps, batch_size=args.batch, micro_batch_size=args.micro, warmup_ratio=0,
                          max_length=args.max_length)  # fmt: skip
    for setting in args.laffi_set:  # key=value, typed like the field's default
        key, value = setting.split("=", 1)
        default = getattr(cfg, key)
        typed = value.lower() == "true" if isinstance(default, bool) else type(default)(value)
        cfg = replace(cfg, **{key: typed})
    return cfg


def consumed(args) -> list[dict]:
    """The tokenized examples laffi's loop trains on, in its order (its seeded shuffle, `step_schedule`). TRL is given
    the same examples in the same order, so both sides do exactly the same work and their losses are comparable.
    With --compare-shared-prefix: the sample's examples in the order of one example per row (shared_prefix=false)."""
    from dataclasses import replace

    from laffi.models import load_tokenizer
    from laffi.training.examples import tokenize_example
    from laffi.training.loop import step_schedule

    tok = load_tokenizer(MODEL)
    cfg = laffi_config(args)
    if args.compare_shared_prefix:
        cfg = replace(cfg, shared_prefix=False)
        rows = [tokenize_example(e, tok, cfg.max_length) for e in sample_examples(args)]
    else:
        rows = [tokenize_example(e, tok, args.max_length) for e in examples(args.examples)]
    steps = step_schedule(rows, cfg)
    if args.compare_shared_prefix and args.steps:
        steps = steps[: args.steps]
    return [rows[i] for step in steps for mb in step for i in mb]


def run_laffi(args, out: Path) -> dict:
    from laffi import models
    from laffi.training.loop import TRAIN_LOG, train

    # Time from the end of model loading, as TRL's side is timed from trainer.train() (its model is loaded before).
    loaded = {}
    load = models.load_model

    def timed_load(*a, **k):
        model = load(*a, **k)
        loaded["at"] = time.perf_counter()
        return model

    models.load_model = timed_load
    exs = sample_examples(args) if args.compare_shared_prefix else examples(args.examples)
    info = train(MODEL, "bfloat16", exs, laffi_config(args), out, progress=False)
    seconds = time.perf_counter() - loaded["at"]
    models.load_model = load
    losses = [json.loads(line)["loss"] for line in (out / TRAIN_LOG).read_text().splitlines()]
    result = {"seconds": seconds, "losses": losses, "tokens_computed": info["tokens_computed"], "steps": info["steps"],
              "examples": len(exs), "passages": len({e.group for e in exs})}  # fmt: skip
    if args.compare_shared_prefix and not args.steps:  # a whole epoch: both sides trained on the same examples
        result["eval_loss"] = eval_loss(exs, out)
    return result


def run_bare(args, out: Path) -> dict:
    """The ceiling: forward and backward of the frozen bf16 model on the same micro-batches (gradients for the
    activations only, no LoRA, no checkpointing, LM head on the loss positions as laffi does). A LoRA loop does this
    work plus its own, so its MFU cannot exceed this one's on the same machine."""
    import torch

    from laffi.models import load_model
    from laffi.training.loss import batch_tensors

    rows = consumed(args)
    model = load_model(MODEL, dtype="bfloat16")
    model.requires_grad_(False)
    body, head = getattr(model, model.base_model_prefix), model.get_output_embeddings()
    start = time.perf_counter()
    for b in range(0, len(rows), args.micro):
        ids, attention, target = batch_tensors(rows[b : b + args.micro], 0)
        embeds = body.get_input_embeddings()(ids).detach().requires_grad_(True)
        hidden = body(inputs_embeds=embeds, attention_mask=attention).last_hidden_state
        logits = head(hidden[:, :-1][target[:, 1:]]).float()
        torch.nn.functional.cross_entropy(logits, ids[:, 1:][target[:, 1:]]).backward()
    return {"seconds": time.perf_counter() - start, "losses": [float("nan")]}


def run_trl(args, out: Path) -> dict:
    import torch
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    from laffi.config import TrainConfig
    from laffi.models import load_model, load_tokenizer
    from laffi.training.loop import lora_config

    tok = load_tokenizer(MODEL)
    if args.compare_shared_prefix:  # laffi's training defaults, as its side uses them
        cfg = TrainConfig()
        rows = consumed(args)
        steps, max_length = len(rows) // cfg.batch_size + bool(len(rows) % cfg.batch_size), cfg.max_length
    else:
        cfg = TrainConfig(batch_size=args.batch, micro_batch_size=args.micro)
        rows, steps, max_length = consumed(args), args.steps, args.max_length
    sft_args = SFTConfig(
        output_dir=str(out), per_device_train_batch_size=cfg.micro_batch_size,
        gradient_accumulation_steps=cfg.batch_size // cfg.micro_batch_size,
        learning_rate=cfg.learning_rate, max_steps=steps, lr_scheduler_type="linear", logging_steps=1,
        save_strategy="no", report_to=[], use_cpu=True, seed=0, max_length=max_length, completion_only_loss=True,
        disable_tqdm=True,
        # Not a speed setting: the examples arrive already in laffi's order (see `consumed`), so both do the same work.
        train_sampling_strategy="sequential",
    )  # fmt: skip
    torch.manual_seed(0)
    model = load_model(MODEL, dtype="bfloat16", trainable=True)
    trainer = SFTTrainer(model=model, args=sft_args, train_dataset=Dataset.from_list(rows),
                         processing_class=tok, peft_config=lora_config(cfg))  # fmt: skip
    start = time.perf_counter()
    trainer.train()
    losses = [float(e["loss"]) for e in trainer.state.log_history if "loss" in e]
    tokens = sum(len(r["input_ids"]) for r in rows)  # TRL pads each micro-batch: padding not counted, as laffi's
    return {"seconds": time.perf_counter() - start, "losses": losses, "tokens_computed": tokens, "steps": steps,
            "examples": len(rows), "passages": 0}


def tokens_trained(args) -> tuple[int, float]:
    """Non-padding tokens of the examples both sides train on (the same ones), and their model FLOPs."""
    from transformers import AutoConfig

    from laffi.models import resolve_model

    rows = consumed(args)
    cfg = AutoConfig.from_pretrained(resolve_model(MODEL))
    d, layers, vocab = cfg.hidden_size, cfg.num_hidden_layers, cfg.vocab_size
    kv = cfg.num_key_value_heads * d // cfg.num_attention_heads
    layer_params = layers * (2 * d * d + 2 * d * kv + 3 * d * cfg.intermediate_size)
    flops = 0.0
    for r in rows:
        n, loss = len(r["input_ids"]), sum(r["completion_mask"])
        attention = layers * 4 * d * n * (n + 1) / 2  # QK^T and AV, causal
        flops += 2 * (2 * layer_params * n + attention + 2 * vocab * d * loss)  # forward + activation gradients
    return sum(len(r["input_ids"]) for r in rows), flops


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
    p.add_argument("--steps", type=int, default=None, help="default 8; with --compare-shared-prefix one epoch")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--micro", type=int, default=4)
    p.add_argument("--max-length", type=int, default=512)
    p.add_argument("--which", choices=["laffi", "trl", "bare"])
    p.add_argument("--out", default="/tmp/laffi-bench-training")
    p.add_argument("--laffi-set", action="append", default=[], help="laffi side: a train setting, key=value")
    p.add_argument("--laffi-variants", default="", help="Also run laffi with other train settings: variants separated "
                   "by ';', settings within one by '+', e.g. 'checkpoint_every=2;checkpoint_keep=+trim_memory=false'")
    p.add_argument("--compare-shared-prefix", action="store_true", help="shared_prefix true vs false (module doc)")
    p.add_argument("--with-trl", action="store_true", help="with --compare-shared-prefix: TRL's SFTTrainer on the same "
                   "examples in the order of one example per row, laffi's training defaults, as a third side")
    p.add_argument("--method", choices=["sft", "laffi"], default="sft")
    p.add_argument("--sample", choices=["passages", "random", "all"], default="passages")
    p.add_argument("--plan-only", action="store_true", help="with --compare-shared-prefix: tokens per epoch only "
                   "(tokenize and plan the steps of both sides; no model, no training)")
    p.add_argument("--passages", type=int, default=12)
    p.add_argument("--questions", type=int, default=300)
    args = p.parse_args()
    if args.steps is None:
        args.steps = 0 if args.compare_shared_prefix else 8
    if args.compare_shared_prefix and not args.which:
        compare_shared_prefix(args)
        return
    if args.which:  # child process: one side only
        if os.environ.get("LAFFI_BENCH_KEEP_FREED_MEMORY") == "1":  # laffi/engines/allocator.py, on every side
            from laffi.engines.allocator import keep_freed_memory

            keep_freed_memory()
        run = {"laffi": run_laffi, "trl": run_trl, "bare": run_bare}[args.which]
        result = run(args, Path(args.out) / args.which)
        result["peak_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
        print(json.dumps(result))
        return
    tokens, flops = tokens_trained(args)
    peak = bf16_matmul_peak()
    results = {}
    runs = [("trl", "trl", []), ("laffi", "laffi", []), ("bare f+b", "bare", [])]
    for variant in [v for v in args.laffi_variants.split(";") if v]:
        settings = variant.split("+")
        runs.append((f"laffi/{variant}", "laffi", [a for kv in settings for a in ("--laffi-set", kv)]))
    for name, which, extra in runs:
        cmd = [sys.executable, __file__, "--which", which, *sys.argv[1:], *extra]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=True)
        results[name] = json.loads(proc.stdout.splitlines()[-1])
    print(f"bf16 matmul peak (measured now): {peak / 1e9:.1f} GFLOP/s")
    for which, r in results.items():
        mfu = flops / r["seconds"] / peak
        print(f"{which:11s}\n{'':11s} {tokens / r['seconds']:7.1f} tokens/s  MFU {100 * mfu:4.1f}%  "
              f"peak RSS {r['peak_rss_gib']:.2f} GiB  final loss {r['losses'][-1]:.4f}  "
              f"({r['seconds']:.1f} s for {args.steps} steps)")  # fmt: skip
    for name in [n for n in results if n.startswith("laffi")]:
        gap = max(abs(a - b) for a, b in zip(results[name]["losses"], results["trl"]["losses"], strict=True))
        print(f"{name}: largest per-step loss difference from TRL {gap:.4f} over {args.steps} steps")
    print("bare f+b: the frozen model's forward and backward alone on the same micro-batches: the MFU ceiling")
    for name in [n for n in results if n.startswith("laffi/")]:
        print(f"ratio {name} / trl: {results['trl']['seconds'] / results[name]['seconds']:.2f}x")
    print(f"ratio laffi / trl: {results['trl']['seconds'] / results['laffi']['seconds']:.2f}x "
          f"(~{tokens} non-padding tokens, {args.steps} steps of {args.batch} examples, micro-batch {args.micro}, "
          f"max length {args.max_length})")


def planned_tokens(args) -> None:
    """Tokens one epoch computes on each side, from the same schedule the loop builds (no model runs)."""
    from transformers import AutoConfig

    from laffi.config import TrainConfig
    from laffi.models import load_tokenizer, resolve_model
    from laffi.training.examples import tokenize_example
    from laffi.training.loop import _tokens_computed, step_schedule
    from laffi.training.packing import attention_tokens, group_keys, pack_step

    attention = attention_tokens(AutoConfig.from_pretrained(resolve_model(MODEL)))
    exs = sample_examples(args)
    tok = load_tokenizer(MODEL)
    rows = [tokenize_example(e, tok, 1024) for e in exs]
    tokens = {}
    for shared in (False, True):
        cfg = TrainConfig(epochs=1, shared_prefix=shared)
        keys = group_keys(exs) if shared else None
        steps = step_schedule(rows, cfg, keys)
        plans = [pack_step(rows, keys, [i for mb in s for i in mb], cfg.micro_batch_tokens, attention)
                 for s in steps] if shared else None  # fmt: skip
        tokens[shared] = _tokens_computed(rows, steps, plans)
    print(f"{args.method}, {args.sample}: {len(exs)} examples on {len({e.group for e in exs})} passages; tokens per "
          f"epoch: one example per row {tokens[False]}, shared prefix {tokens[True]}, "
          f"{tokens[False] / tokens[True]:.2f}x fewer")  # fmt: skip


def compare_shared_prefix(args) -> None:
    import math

    if args.plan_only:
        planned_tokens(args)
        return
    results = {}
    sides = [("false", ["--which", "laffi", "--laffi-set", "shared_prefix=false"]),
             ("true", ["--which", "laffi", "--laffi-set", "shared_prefix=true"])]  # fmt: skip
    if args.with_trl:
        sides.append(("trl", ["--which", "trl"]))
    for flag, extra in sides:
        cmd = [sys.executable, __file__, *sys.argv[1:], *extra]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=True)
        results[flag] = json.loads(proc.stdout.splitlines()[-1])
    r0 = results["false"]
    per_epoch = math.ceil(r0["examples"] / 8)  # laffi's default batch size
    scale = per_epoch / r0["steps"]
    print(f"{args.method}, {args.sample}: {r0['examples']} examples on {r0['passages']} passages, {r0['steps']} of "
          f"{per_epoch} steps per epoch measured (wall per epoch = measured x {scale:.2f})")  # fmt: skip
    names = {"false": "one example per row (shared_prefix=false)", "true": "shared prefix",
             "trl": "TRL SFTTrainer (same examples and order)"}  # fmt: skip
    for flag, name in names.items():
        if flag not in results:
            continue
        r = results[flag]
        print(f"{name:42s} tokens {r['tokens_computed']:7d}  {r['seconds']:7.1f} s ({r['seconds'] * scale:7.1f} s per "
              f"epoch)  {r['tokens_computed'] / r['seconds']:6.1f} tokens/s  peak RSS {r['peak_rss_gib']:.2f} GiB  "
              f"last step loss {r['losses'][-1]:.4f}  loss on the sample after training "
              f"{r.get('eval_loss', float('nan')):.4f}")
    r1 = results["true"]
    print(f"ratio: tokens {r0['tokens_computed'] / r1['tokens_computed']:.2f}x fewer, wall time "
          f"{r0['seconds'] / r1['seconds']:.2f}x faster")
    if "trl" in results:
        print(f"ratio to TRL: shared prefix {results['trl']['seconds'] / r1['seconds']:.2f}x faster, one example "
              f"per row {results['trl']['seconds'] / r0['seconds']:.2f}x")


if __name__ == "__main__":
    main()
