"""Side-by-side: answering pool questions with a naive loop vs laffi's generation path. Not a timed test.

(a) naive: one `model.generate` call per question, batch 1; (b) plain: laffi's batched path without prefix reuse
(`reuse_prefix=False`, length-sorted left-padded batches); (c) laffi: the default path (answer settings' defaults:
batch 16, 2 workers, 2 draft tokens), which reuses the key/value cache of the shots prefix and of each passage
(prefix_cache.py), keeps one copy of the shots' keys/values for all rows (engines/prefix_attention.py) and checks
prompt-lookup guesses in each decode step. Same prompts (`prompts.qa_messages`), greedy,
same stop tokens and max_new_tokens, one process, one model. Prints questions/s, the ratio to naive, the share of
answers identical to naive, SQuAD 2.0 F1 of each, and achieved FLOP/s against the matmul peak measured in this run.

    .venv/bin/python bench/generation.py --questions 200
    .venv/bin/python bench/generation.py --questions 200 --skip-plain --batch 8,16 --workers 1,2 --draft-tokens 0,2
    .venv/bin/python bench/generation.py --questions 50 --passage long --skip-plain
    .venv/bin/python bench/generation.py --questions 200 --skip-plain --reference-dtype float32

Both paths run with the malloc settings laffi's commands apply at start (laffi/engines/allocator.py); `--default-malloc`
leaves glibc's defaults.

`--passage short|medium|long` keeps questions whose passage is in that third of the pool's passage lengths; the
questions are taken in pool order (SQuAD groups questions by passage, as a real answer stage sees them).
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
POOL = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "squad_v2" / "squad_v2_pool.json"
# Smoke-test a bench quickly with another model (e.g. a tiny random one): LAFFI_BENCH_MODEL=DIR.
MODEL = os.environ.get("LAFFI_BENCH_MODEL", "bundled")


def pick_questions(n: int, passage: str) -> list:
    from laffi.data import load_squad

    questions = load_squad(POOL)
    if passage != "any":
        lengths = sorted({len(q.context) for q in questions})
        third = len(lengths) // 3
        lo, hi = {"short": (0, third), "medium": (third, 2 * third), "long": (2 * third, len(lengths) - 1)}[passage]
        questions = [q for q in questions if lengths[lo] <= len(q.context) <= lengths[hi]]
    return questions[:n]


def matmul_peak(dtype) -> float:
    """FLOP/s of the best of a few matmuls shaped like the model's (tokens x hidden x intermediate), this dtype."""
    import torch

    best = 0.0
    for m, k, n in ((512, 576, 1536), (1024, 1024, 1024), (2048, 576, 1536)):
        a, b = torch.randn(m, k, dtype=dtype), torch.randn(k, n, dtype=dtype)
        for _ in range(3):
            a @ b
        reps = 20
        start = time.perf_counter()
        for _ in range(reps):
            a @ b
        best = max(best, 2 * m * k * n * reps / (time.perf_counter() - start))
    return best


class FlopCounter:
    """Model FLOPs actually executed (padding included): 2 x layer parameters per token through the decoder body,
    4 x layers x attention width x visible context per token for attention, 2 x vocab x hidden per logits row."""

    def __init__(self, model):
        cfg = model.config
        body = getattr(model, model.base_model_prefix)
        self.layer_params = sum(p.numel() for p in body.layers.parameters())
        head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        self.attn = 4 * cfg.num_hidden_layers * cfg.num_attention_heads * head_dim
        self.head = 2 * cfg.vocab_size * cfg.hidden_size
        self.flops = 0.0
        self.decode_steps = self.decode_rows = 0  # decode forward passes (one step of every live row), their rows
        body.register_forward_pre_hook(self._body, with_kwargs=True)
        model.get_output_embeddings().register_forward_hook(self._head)
        from laffi.engines import prefix_cache

        step = prefix_cache._Rows.step

        def counted(rows, *args, **kwargs):  # laffi's decode steps (of one or more tokens per row: drafts)
            self.decode_steps += 1
            self.decode_rows += rows.n
            return step(rows, *args, **kwargs)

        prefix_cache._Rows.step = counted

    def _body(self, module, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        if ids is None:
            return
        b, t = ids.shape
        mask = kwargs.get("attention_mask")
        ctx = mask.shape[1] if mask is not None else t
        # Attention: each new token sees about ctx - t/2 earlier tokens on average (causal within the new block).
        self.flops += b * t * (2 * self.layer_params + self.attn * (ctx - t / 2))

    def _head(self, module, args, output):
        self.flops += output.numel() / output.shape[-1] * self.head


def naive(model, tokenizer, texts: list[str], max_new: int) -> list[str]:
    import torch

    from laffi.engines.generation import stop_token_ids

    stops = stop_token_ids(tokenizer, model)
    out = []
    for text in texts:
        ids = torch.tensor([tokenizer(text, add_special_tokens=False)["input_ids"]])
        with torch.inference_mode():
            gen = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new,
                                 do_sample=False, eos_token_id=stops, pad_token_id=tokenizer.pad_token_id)  # fmt: skip
        out.append(tokenizer.decode(gen[0, ids.shape[1] :], skip_special_tokens=True).strip())
    return out


def main() -> None:
    import torch

    from laffi import prompts
    from laffi.engines.generation import DecodeSettings, generate
    from laffi.metrics import squad_v2_scores
    from laffi.models import load_model, load_tokenizer, torch_dtype

    p = argparse.ArgumentParser()
    p.add_argument("--questions", type=int, default=200)
    p.add_argument("--passage", choices=["any", "short", "medium", "long"], default="any")
    p.add_argument("--shots", type=int, default=2)
    p.add_argument("--batch", default="16", help="rows decoded together by the batched paths; a comma-separated list "
                   "runs laffi's path once per value, side by side (e.g. 8,16,32)")
    p.add_argument("--workers", default="2", help="decoding threads of laffi's path (answer.workers); a "
                   "comma-separated list runs each batch size with each value")
    p.add_argument("--draft-tokens", default="2", help="answer.draft_tokens of laffi's path (guessed tokens checked "
                   "per decode step; 0 = one token per step); a comma-separated list runs each value")
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--skip-plain", action="store_true", help="leave out (b), the batched path without prefix reuse")
    p.add_argument("--reference-dtype", default="", help="also answer with the naive loop in this dtype (e.g. "
                   "float32) and print how many answers of each path agree with it: how far bf16 rounding alone "
                   "moves greedy answers")
    p.add_argument("--default-malloc", action="store_true", help="leave glibc's malloc as it is (laffi's commands "
                   "apply engines/allocator.py's settings at start; here both paths get them unless this is given)")
    args = p.parse_args()
    if not args.default_malloc:
        from laffi.engines.allocator import keep_freed_memory

        print(f"malloc keeps freed memory (laffi/engines/allocator.py): {keep_freed_memory()}")

    questions = pick_questions(args.questions, args.passage)
    tokenizer = load_tokenizer(MODEL)
    model = load_model(MODEL, dtype=args.dtype)
    counter = FlopCounter(model)
    texts = [prompts.render(prompts.qa_messages(q, args.shots), tokenizer) for q in questions]
    prompt_tokens = [len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts]
    print(f"{len(questions)} questions on {len({q.context for q in questions})} passages, {args.shots} shots, "
          f"prompt {min(prompt_tokens)}-{max(prompt_tokens)} tokens (mean {sum(prompt_tokens) / len(texts):.0f}), "
          f"{args.dtype}, {torch.get_num_threads()} threads")  # fmt: skip
    peak = matmul_peak(torch_dtype(args.dtype))
    print(f"matmul peak ({args.dtype}, measured now): {peak / 1e9:.1f} GFLOP/s")

    runs = {"naive": lambda: naive(model, tokenizer, texts, args.max_new_tokens)}
    batches = [int(b) for b in args.batch.split(",")]
    if not args.skip_plain:
        plain = DecodeSettings(args.max_new_tokens, batches[0], reuse_prefix=False)
        runs["plain"] = lambda: generate(model, tokenizer, texts, plain)
    workers = [int(w) for w in args.workers.split(",")]
    drafts = [int(d) for d in args.draft_tokens.split(",")]
    for b in batches:
        for w in workers:
            for d in drafts:
                name = "laffi" + "".join(f"-{k}{v}" for k, v, vs in (("b", b, batches), ("w", w, workers),
                                                                    ("d", d, drafts)) if len(vs) > 1)  # fmt: skip
                settings = DecodeSettings(args.max_new_tokens, b, workers=w, draft_tokens=d)
                runs[name] = lambda settings=settings: generate(model, tokenizer, texts, settings)
    results = {}
    for name, fn in runs.items():
        counter.flops = 0.0
        counter.decode_steps = counter.decode_rows = 0
        start = time.perf_counter()
        raws = fn()
        seconds = time.perf_counter() - start
        answers = {q.id: prompts.parse_answer(r, q.context) for q, r in zip(questions, raws, strict=True)}
        results[name] = (seconds, raws, counter.flops)
        same = sum(a == b for a, b in zip(raws, results["naive"][1], strict=True)) / len(raws)
        f1 = squad_v2_scores(questions, answers)["f1"]
        print(f"{name:12s} {len(questions) / seconds:6.2f} questions/s  {results['naive'][0] / seconds:5.2f}x naive  "
              f"identical to naive {100 * same:5.1f}%  F1 {f1:5.1f}  "
              f"{counter.flops / seconds / 1e9:6.1f} GFLOP/s = {100 * counter.flops / seconds / peak:4.1f}% of peak  "
              f"({counter.flops / 1e12:.2f} TFLOP in {seconds:.1f} s)")  # fmt: skip
        if name not in ("naive", "plain"):
            # speed-up = (work the naive loop does / work this path does) x (this path's FLOP/s / naive's FLOP/s)
            naive_s, _, naive_flops = results["naive"]
            work = naive_flops / counter.flops
            rate = (counter.flops / seconds) / (naive_flops / naive_s)
            rows = counter.decode_rows / max(1, counter.decode_steps)
            print(f"{'':12s} = {work:.2f}x less work x {rate:.2f}x the naive loop's FLOP/s; "
                  f"{counter.decode_steps} decode steps of {rows:.1f} rows on average")
        elif name == "plain":
            print(f"{'':12s} = {results['naive'][2] / counter.flops:.2f}x less work x "
                  f"{(counter.flops / seconds) / (results['naive'][2] / results['naive'][0]):.2f}x the naive loop's "
                  "FLOP/s")
    if args.reference_dtype:
        # Greedy answers flip where two tokens' logits are within rounding of each other: the same loop in another
        # dtype shows how many answers rounding alone moves, naive loop included.
        reference = naive(load_model(MODEL, dtype=args.reference_dtype), tokenizer, texts, args.max_new_tokens)
        for name, (_, raws, _) in results.items():
            same = sum(a == b for a, b in zip(raws, reference, strict=True))
            print(f"{name:12s} agrees with the naive loop in {args.reference_dtype}: {same}/{len(raws)} "
                  f"({100 * same / len(raws):.1f}%)")


if __name__ == "__main__":
    main()
