"""What autograd keeps for backward in laffi's loss, by dtype and shape. Not a timed test; no real weights needed.

A random model shaped like the bundled SmolLM2-135M (hidden 576, 9 heads / 3 KV heads, MLP 1536, vocab 49152) but
with --layers decoder layers, bf16, LoRA all-linear r16, one micro-batch of --batch x --length tokens (the last 60 of
each carry loss). Compares PEFT's default (fp32 LoRA weights, layer inputs cast to fp32) with laffi's bf16 LoRA
branch, with and without LoRA dropout. Per-layer bytes x 30 layers is what the real model keeps without checkpointing.

    .venv/bin/python bench/saved_tensors.py --layers 2 --batch 4 --length 512
"""

from __future__ import annotations

import argparse
import collections
import contextlib
from typing import Any


def saved_bytes(layers: int, batch: int, length: int, dropout: float, bf16_lora: bool) -> tuple[int, Any]:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    from laffi.training.loop import _lora_in_base_dtype
    from laffi.training.loss import completion_loss_sum

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=layers,
                      num_attention_heads=9, num_key_value_heads=3, tie_word_embeddings=True,
                      max_position_embeddings=2048)  # fmt: skip
    model = LlamaForCausalLM(cfg).to(torch.bfloat16)
    lora = LoraConfig(r=16, lora_alpha=32, lora_dropout=dropout, target_modules="all-linear", task_type="CAUSAL_LM")
    model = get_peft_model(model, lora)
    context = _lora_in_base_dtype(model) if bf16_lora else contextlib.nullcontext()
    rows = [{"input_ids": list(range(100, 100 + length)), "completion_mask": [0] * (length - 60) + [1] * 60}] * batch
    seen: dict[int, int] = {}
    by_kind: collections.Counter = collections.Counter()

    def pack(t):
        storage = t.untyped_storage()
        if storage.data_ptr() not in seen:  # count each buffer once (views share it)
            seen[storage.data_ptr()] = storage.nbytes()
            by_kind[(str(t.dtype).replace("torch.", ""), tuple(t.shape))] += storage.nbytes()
        return t

    with context, torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        completion_loss_sum(model, rows, 0)
    return sum(seen.values()), by_kind


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--length", type=int, default=512)
    args = p.parse_args()
    print(f"{args.layers} layers, micro-batch {args.batch} x {args.length} tokens; MiB saved for backward")
    for bf16_lora in (False, True):
        for dropout in (0.05, 0.0):
            total, by_kind = saved_bytes(args.layers, args.batch, args.length, dropout, bf16_lora)
            one, _ = saved_bytes(args.layers + 1, args.batch, args.length, dropout, bf16_lora)
            per_layer = one - total
            name = f"{'bf16 LoRA branch' if bf16_lora else 'PEFT default (fp32 cast)'}, lora_dropout={dropout}"
            top = ", ".join(f"{dt}{list(shape)} {b / 2**20:.0f}" for (dt, shape), b in by_kind.most_common(4))
            print(f"{name:42s} {per_layer / 2**20:6.1f} per layer -> {30 * per_layer / 2**30:4.2f} GiB for 30 layers"
                  f"  (largest: {top})")  # fmt: skip


if __name__ == "__main__":
    main()
