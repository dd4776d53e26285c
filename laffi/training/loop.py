"""The LoRA training loop: token rows of `Example`s (laffi/training/examples.py) -> a saved PEFT adapter.

A plain PyTorch loop (see `train` for why not TRL's SFTTrainer): micro-batches of similar length, the LM head only on
positions that carry loss, loss weighted by completion tokens per optimizer step, resumable checkpoints. Which examples
a method trains on is decided in `laffi.methods`, never here.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
from collections import Counter
from dataclasses import asdict
from pathlib import Path
from typing import Any

from laffi import prompts
from laffi.config import TrainConfig
from laffi.errors import LaffiError
from laffi.files import write_json
from laffi.training.examples import Example, tokenize_example
from laffi.training.loss import completion_loss_sum
from laffi.training.packing import attention_tokens, group_keys, group_order, pack, pack_step, packed_loss, packed_width
from laffi.training.targets import check_target_modules

TRAIN_LOG = "train_log.jsonl"
TRAIN_INFO = "laffi_train.json"


def lora_config(cfg: TrainConfig) -> Any:
    from peft import LoraConfig

    targets: Any = cfg.target_modules
    if targets != "all-linear":
        targets = [t.strip() for t in targets.split(",") if t.strip()]
    return LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                      target_modules=targets, task_type="CAUSAL_LM")  # fmt: skip


def train(
    model_name: str,
    dtype: str,
    examples: list[Example],
    cfg: TrainConfig,
    out: Path,
    progress: bool = True,
    tokenizer: Any = None,
    answer_prefix: str = "",
    device: str = "cpu",
) -> dict[str, Any]:
    """LoRA-train on `examples` on `device` and save a PEFT adapter to `out` (atomically), with the loss per step.
    Under a launcher (`distributed.launched`) the model is read on the CPU and accelerate places it, on its device.

    `answer_prefix`: text the method's adapter expects after every QA prompt (recorded in laffi_train.json, read at
    answer time by `laffi.engines.generation.answer_prefix`).

    A plain PyTorch loop rather than TRL's SFTTrainer: on this 2-core CPU, at seq 512 and batch 4, TRL at its
    defaults ran at 0.71x this loop's tokens/s with 3.46 vs 1.86 GiB peak RSS (`bench/training.py`; both checkpoint
    activations; this loop also runs the LoRA branch in bf16, see docs/performance.md). Here the LM head runs only
    on the positions that carry loss, micro-batches group examples of similar length, and each optimizer step weights
    the loss by its number of completion tokens. State is checkpointed to `out` + ".partial/" every `save_steps`
    steps and a re-run resumes from it, bit for bit.
    """
    import torch
    from peft import get_peft_model

    from laffi.models import empty_model, load_model, load_tokenizer, peft_quietly, resolve_device, resolve_dtype
    from laffi.training import distributed

    if not examples:
        raise LaffiError("train: no training examples")
    if cfg.batch_size % cfg.micro_batch_size:
        raise LaffiError(f"train.batch_size ({cfg.batch_size}) must be a multiple of micro_batch_size "
                         f"({cfg.micro_batch_size})")  # fmt: skip
    keep = _keep_names(cfg.checkpoint_keep)
    launched = distributed.launched()
    device = "cpu" if launched else resolve_device(device)
    dtype = resolve_dtype(dtype, distributed.target_device() if launched else device)
    if dtype == "float16":
        # fp16 gradients underflow without a loss scaler between backward, clipping and the step; this loop has none.
        raise LaffiError("train: dtype float16 is not supported for training (no gradient scaler); use bfloat16 "
                         "(or auto) on GPUs with bf16, else float32")  # fmt: skip
    torch.manual_seed(cfg.seed)
    tokenizer = tokenizer if tokenizer is not None else load_tokenizer(model_name)
    if distributed.rank0_loading() and distributed.rank() != 0:
        base = empty_model(model_name, dtype)  # its shards come from rank 0 (FSDP's CPU-RAM-efficient loading)
    else:
        base = load_model(model_name, dtype=dtype, trainable=True, device=device)
    check_target_modules(base, cfg.target_modules)  # one line naming the setting, not PEFT's traceback
    with peft_quietly():
        model = get_peft_model(base, lora_config(cfg))
    for module in model.modules():
        if any(p.requires_grad and p.is_meta for p in module.parameters(recurse=False)):
            # LoRA weights of an empty model (rank-0 loading) get real storage, whose values rank 0 sends: accelerate
            # maps the optimizer to the sharded parameters by storage address, which meta tensors lack.
            module.to_empty(device="cpu", recurse=False)
    if cfg.fast_dropout:
        _use_fast_dropout(model)
    if cfg.gradient_checkpointing:
        # Non-reentrant checkpointing needs no gradient on the inputs (PEFT's enable_input_require_grads is for the
        # reentrant kind): without it the backward pass skips the gradient into the embeddings.
        _enable_checkpointing(model, cfg.checkpoint_every, _keep_policy(keep, model))
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=0.0)
    # Under `accelerate launch` / torchrun: data-parallel on accelerate's engine (training/distributed.py); else None.
    parallel = _data_parallel(model, optimizer, cfg)
    optimizer = parallel.optimizer if parallel is not None else optimizer
    is_main = parallel is None or parallel.is_main
    autocast = _lora_in_base_dtype(model)
    model.train()
    # Examples with a teacher prompt (sdft) train by on-policy self-distillation: the student samples each completion
    # during the step and the loss is its divergence from the teacher (laffi/methods/sdft.py), not cross-entropy.
    distill = _self_distillation(model, tokenizer, examples, cfg, parallel)
    rows = distill.rows if distill is not None else [tokenize_example(ex, tokenizer, cfg.max_length) for ex in examples]
    keys = group_keys(examples) if cfg.shared_prefix and distill is None else None
    schedule = step_schedule(rows, cfg, keys)
    # Shared-prefix training in this process: each step's examples as micro-batches of packed rows (packing.py); an
    # example that shares nothing in its step is batched as `schedule` batches it (micro_batch_size examples).
    # Launched data-parallel runs keep the group order but train one example per row.
    plans = None
    if keys is not None and parallel is None and packs_with_masks(model):
        attention = attention_tokens(model.get_base_model().config)
        plans = [pack_step(rows, keys, [i for mb in step for i in mb], cfg.micro_batch_tokens, attention,
                           cfg.micro_batch_size) for step in schedule]  # fmt: skip
    warmup = int(cfg.warmup_ratio * len(schedule))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: _linear(s, warmup, len(schedule)))
    work = out.with_name(out.name + ".partial")
    log, start = _resume(work, model, optimizer, scheduler, parallel, distill)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    bar = _progress_bar(len(schedule), start, progress and is_main)
    board = _tensorboard(cfg, work) if is_main else None
    for step in range(start, len(schedule)):
        micro_batches = schedule[step]
        n_loss = sum(sum(rows[i]["completion_mask"]) for mb in micro_batches for i in mb)
        loss_tokens = n_loss
        if distill is not None:  # the loss is a mean over the step's examples (each a mean over its tokens)
            n_loss, total, loss_tokens, positions = sum(len(mb) for mb in micro_batches), 0.0, 0, 0
            for mb in micro_batches:
                with autocast:
                    loss_sum, tokens, computed = distill.loss_sum(mb)
                (loss_sum / n_loss).backward()
                total, loss_tokens, positions = total + loss_sum.item(), loss_tokens + tokens, positions + computed
            grad_norm = torch.nn.utils.clip_grad_norm_(params, 1.0).item()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            distill.after_step(step + 1)
        elif parallel is not None:
            total = parallel.step(micro_batches, rows, n_loss, pad_id, autocast)
            grad_norm = parallel.clip_and_step(1.0)
        else:
            total = 0.0
            for mb in plans[step] if plans is not None else micro_batches:
                with autocast:
                    if plans is not None and any(len(members) > 1 for members in mb):  # packed rows
                        loss_sum = packed_loss(model, [pack(rows, members) for members in mb], pad_id)
                    elif plans is not None:  # rows of one example each: the plain causal path
                        loss_sum = completion_loss_sum(model, [rows[members[0]] for members in mb], pad_id)
                    else:  # a list of examples
                        loss_sum = completion_loss_sum(model, [rows[i] for i in mb], pad_id)
                (loss_sum / n_loss).backward()
                total += loss_sum.item()
            grad_norm = torch.nn.utils.clip_grad_norm_(params, 1.0).item()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        scheduler.step()
        if cfg.trim_memory:
            _trim_heap()
        log.append({"step": step + 1, "loss": total / n_loss, "lr": scheduler.get_last_lr()[0],
                    "grad_norm": grad_norm, "loss_tokens": loss_tokens})  # fmt: skip
        if distill is not None:
            log[-1]["positions"] = positions
        if board is not None:
            for name in ("loss", "lr", "grad_norm"):
                board.add_scalar(f"train/{name}", log[-1][name], step + 1)
            board.flush()
        bar.update(1)
        bar.set_postfix(loss=f"{total / n_loss:.3f}")
        if (step + 1) % cfg.save_steps == 0 and step + 1 < len(schedule):
            extra = distill.state() if distill is not None else None
            _checkpoint(work, model, optimizer, scheduler, log, parallel, extra)
    bar.close()
    if board is not None:
        board.close()
    info = _summary(cfg, examples, rows, log, answer_prefix)
    info["tokens_computed"] = _tokens_computed(rows, schedule, plans)
    if distill is not None:  # prompts and sampled completions, student and teacher (generation not counted)
        info["tokens_computed"] = sum(e["positions"] for e in log)
        info["loss_tokens"] = sum(e["loss_tokens"] for e in log)
        info[cfg.method] = distill.summary()  # what the distillation ran with (as refine records its data)
    if parallel is not None:  # provenance: which engine trained it, on how many processes
        info["distributed"] = {"type": parallel.kind, "processes": parallel.world}
    # Sharded engines: every process takes part in gathering the adapter; the main process writes it.
    state = parallel.adapter_state() if parallel is not None else None
    if is_main:
        _save_adapter(model, tokenizer, out, log, info, state)
        shutil.rmtree(work, ignore_errors=True)
    if parallel is not None:
        parallel.wait()  # the adapter is complete on disk before any process returns
        parallel.end()
    return info


# Attention implementations that take the additive 4-D masks of packed rows (packing.packed_tensors).
MASKED_ATTENTION = ("eager", "sdpa")


def packs_with_masks(model: Any) -> bool:
    """Whether shared-prefix packing can run on `model`: its packed rows need a 4-D attention mask (a question
    attends to its passage and to itself, not to the other questions after the same passage), which flash-attention
    kernels cannot take, and their variable-length path (position ids) only separates whole sequences. Otherwise the
    loop trains one example per row, with one warning line."""
    import sys

    implementation = getattr(model.get_base_model().config, "_attn_implementation", None)
    if implementation in MASKED_ATTENTION or implementation is None:
        return True
    print(f"laffi: warning: train.shared_prefix: attention '{implementation}' cannot take packed rows' masks; "
          "training one example per row", file=sys.stderr, flush=True)  # fmt: skip
    return False


def step_schedule(rows: list[dict[str, list[int]]], cfg: TrainConfig,
                  keys: list[Any] | None = None) -> list[list[list[int]]]:  # fmt: skip
    """Optimizer steps, each a list of micro-batches of example indices. Seeded shuffle per epoch (with `keys`, one per
    example: of the groups, each group's examples kept together, `packing.group_order`); within a step, examples are
    sorted by length before being cut into micro-batches so each pads only to its own longest."""
    per_epoch = math.ceil(len(rows) / cfg.batch_size)
    n_steps = cfg.max_steps if cfg.max_steps > 0 else max(1, math.ceil(cfg.epochs * per_epoch))
    steps: list[list[list[int]]] = []
    epoch = 0
    while len(steps) < n_steps:
        if keys is not None:
            order = group_order(keys, cfg.seed * 1000 + epoch)
        else:
            order = list(range(len(rows)))
            random.Random(cfg.seed * 1000 + epoch).shuffle(order)
        for b in range(0, len(order), cfg.batch_size):
            batch = sorted(order[b : b + cfg.batch_size], key=lambda i: len(rows[i]["input_ids"]))
            steps.append([batch[m : m + cfg.micro_batch_size] for m in range(0, len(batch), cfg.micro_batch_size)])
            if len(steps) == n_steps:
                break
        epoch += 1
    return steps


def _tokens_computed(rows: list[dict[str, list[int]]], schedule: list[list[list[int]]],
                     plans: list[list[list[list[int]]]] | None) -> int:  # fmt: skip
    """Token positions the forward passes compute over the whole run, padding excluded."""
    if plans is None:
        return sum(len(rows[i]["input_ids"]) for step in schedule for mb in step for i in mb)
    return sum(packed_width(rows, members) for plan in plans for mb in plan for members in mb)


def _self_distillation(model: Any, tokenizer: Any, examples: list[Example], cfg: TrainConfig, parallel: Any) -> Any:
    """laffi.training.distill.SelfDistillation when the examples carry teacher prompts, else None."""
    if all(ex.teacher_prompt is None for ex in examples):
        return None
    if parallel is not None:
        raise LaffiError(f"train.method: '{cfg.method}' samples from the model while training: one process only "
                         "(not under accelerate launch / torchrun)")  # fmt: skip
    from laffi.training.distill import SelfDistillation

    return SelfDistillation(model, tokenizer, examples, cfg)


def _data_parallel(model: Any, optimizer: Any, cfg: TrainConfig) -> Any:
    """A `laffi.training.distributed.DataParallel` when started by a launcher, else None (the plain loop)."""
    from laffi.training import distributed

    return distributed.DataParallel(model, optimizer, cfg) if distributed.launched() else None


def _lora_in_base_dtype(model: Any) -> Any:
    """Context for the forward pass that runs the LoRA branches in the base model's bf16 (None-op otherwise).

    PEFT keeps LoRA weights in fp32 (right for the optimizer: bf16 updates would round away) and casts each layer's
    input to fp32 for them; those fp32 copies of every projection's input are most of what autograd keeps (about 2/3
    of the saved bytes per layer, measured with saved-tensor hooks). Under bf16 autocast with that cast turned off,
    the LoRA matmuls read the bf16 input and a bf16 copy of the weights, while weights and gradients stay fp32.
    The LoRA output is added to a bf16 base output anyway, so it was rounded to bf16 already.
    """
    import contextlib

    import torch

    param = next(model.parameters())
    if param.dtype != torch.bfloat16:
        return contextlib.nullcontext()
    for module in model.modules():
        if hasattr(module, "lora_A"):
            module.cast_input_dtype_enabled = False
    return torch.autocast(param.device.type, dtype=torch.bfloat16)


def _use_fast_dropout(model: Any) -> None:
    """Swap PEFT's LoRA dropout modules for `training.dropout.FastDropout` (same probability, masks from numpy)."""
    import torch

    from laffi.training.dropout import FastDropout

    for module in model.modules():
        drop = getattr(module, "lora_dropout", None)
        if isinstance(drop, torch.nn.ModuleDict):
            for name, d in drop.items():
                if isinstance(d, torch.nn.Dropout) and d.p > 0:
                    drop[name] = FastDropout(d.p)


def _linear(step: int, warmup: int, total: int) -> float:
    if step < warmup:
        return (step + 1) / (warmup + 1)
    return max(0.0, (total - step) / max(1, total - warmup))


def _enable_checkpointing(model: Any, every: int = 1, policy: Any = None) -> None:
    """Recompute activations in the backward pass (every `every`-th layer), under transformers 5's name when it has
    it (the old name warns and has no `every_n_layers`); `policy`: what to keep instead of recomputing."""
    kwargs: dict[str, Any] = {"use_reentrant": False}
    if policy is not None:
        from functools import partial

        from torch.utils.checkpoint import create_selective_checkpoint_contexts

        kwargs["context_fn"] = partial(create_selective_checkpoint_contexts, policy)
    enable = getattr(model, "activation_checkpointing_enable", None)
    if enable is not None:
        enable(activation_checkpointing_kwargs=kwargs, every_n_layers=every)
    elif every == 1:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    else:
        raise LaffiError("train.checkpoint_every: needs transformers >= 5 (activation_checkpointing_enable)")


KEEP_CHOICES = ("attention", "down")


def _keep_names(keep: str) -> list[str]:
    names = [k.strip() for k in keep.split(",") if k.strip()]
    unknown = [k for k in names if k not in KEEP_CHOICES]
    if unknown:
        raise LaffiError(f"train.checkpoint_keep: unknown {unknown[0]!r} (choose from {', '.join(KEEP_CHOICES)})")
    return names


def _keep_policy(names: list[str], model: Any) -> Any:
    """Selective checkpointing (torch.utils.checkpoint): the ops whose outputs `train.checkpoint_keep` names are
    saved in the forward pass and replayed, not recomputed, in the backward pass; everything else is recomputed.

    'attention': the fused attention kernels (their output is one hidden-size row per token, their recompute costs
    ~10 % of a layer on CPU). 'down': matmuls whose inner dimension is larger than the hidden size, i.e. the MLP's
    down projection (and its LoRA A): per byte kept they save intermediate/hidden times more recompute than any other
    projection. Returns None for no names (recompute everything)."""
    import torch
    from torch.utils.checkpoint import CheckpointPolicy

    if not names:
        return None
    aten = torch.ops.aten
    attention = {getattr(aten, name).default for name in (
        "_scaled_dot_product_flash_attention_for_cpu", "_scaled_dot_product_flash_attention",
        "_scaled_dot_product_efficient_attention", "_scaled_dot_product_cudnn_attention") if hasattr(aten, name)}
    hidden = model.get_base_model().config.hidden_size

    def policy(ctx: Any, op: Any, *args: Any, **kwargs: Any) -> Any:
        if "attention" in names and op in attention:
            return CheckpointPolicy.MUST_SAVE
        if "down" in names and op is aten.mm.default and args[0].shape[-1] > hidden:
            return CheckpointPolicy.MUST_SAVE
        return CheckpointPolicy.PREFER_RECOMPUTE

    return policy


def _trim_heap() -> None:
    """Give freed heap memory back to the OS (glibc's malloc_trim). PyTorch on CPU frees tensors to malloc, which
    keeps the pages: without this, each step's peak adds to the last one's leftovers. No-op without glibc."""
    import ctypes
    import ctypes.util

    global _LIBC
    if _LIBC is None:
        name = ctypes.util.find_library("c")
        lib = ctypes.CDLL(name) if name else None
        _LIBC = lib if lib is not None and hasattr(lib, "malloc_trim") else False
    if _LIBC:
        _LIBC.malloc_trim(0)


_LIBC: Any = None


def _progress_bar(total: int, start: int, enabled: bool) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=start, desc="train", unit="step", disable=not enabled)


def _checkpoint(work: Path, model: Any, optimizer: Any, scheduler: Any, log: list[dict], parallel: Any,
                extra: Any = None) -> None:
    """Resumable state in `work`: one file from the main process when every process holds the whole state (one
    process, DDP); accelerate's sharded save from every process under FSDP / DeepSpeed, plus the log. `extra`: the
    sdft step's own state (its EMA teacher), in the one file."""
    import torch
    from peft import get_peft_model_state_dict

    if parallel is not None and parallel.sharded:
        parallel.save_state(work)  # the scheduler was registered with it in _resume
        if parallel.is_main:
            write_json(work / "log.json", {"log": log})
        parallel.wait()
        return
    if parallel is None or parallel.is_main:
        state = {
            "adapter": get_peft_model_state_dict(model),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "log": log,
            "torch_rng": torch.get_rng_state(),
            # Dropout masks on a GPU come from its own generators: a resume restores them too, or it is not exact.
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        }
        if extra is not None:
            state["distill"] = extra
        work.mkdir(parents=True, exist_ok=True)
        tmp = work / "state.pt.tmp"
        torch.save(state, tmp)
        os.replace(tmp, work / "state.pt")
    if parallel is not None:
        parallel.wait()


def _resume(work: Path, model: Any, optimizer: Any, scheduler: Any, parallel: Any = None,
            distill: Any = None) -> tuple[list[dict], int]:  # fmt: skip
    import torch
    from peft import set_peft_model_state_dict

    if parallel is not None and parallel.sharded:
        parallel.register(scheduler)
        if not (work / "log.json").exists():
            return [], 0
        try:
            if not parallel.load_state(work):
                return [], 0
            log = json.loads((work / "log.json").read_text())["log"]
            if not isinstance(log, list):
                raise ValueError("log.json holds no list of steps")
        except Exception as e:  # a sharded checkpoint cut short, or one of other shapes
            raise LaffiError(f"{work}: checkpoint cannot be resumed ({_reason(e)}); remove it (laffi train: add "
                             "--restart) to train afresh") from None  # fmt: skip
        return log, len(log)
    path = work / "state.pt"
    if not path.exists():
        return [], 0
    try:
        # On the CPU first (a checkpoint written on another device loads anywhere); loading the state dicts below
        # copies each tensor to its parameter's device. Plain tensors and containers only: no pickled code runs.
        state = torch.load(path, map_location="cpu", weights_only=True)
        log = state["log"]
        set_peft_model_state_dict(model, state["adapter"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if distill is not None:
            distill.load_state(state.get("distill"))
        torch.set_rng_state(state["torch_rng"])
        if state.get("cuda_rng") is not None and torch.cuda.is_available():
            # One state per device; a machine with fewer devices than the one that saved restores those it has.
            torch.cuda.set_rng_state_all(state["cuda_rng"][: torch.cuda.device_count()])
    except Exception as e:  # truncated, not a checkpoint, or one of another model or LoRA shape
        raise LaffiError(f"{path}: checkpoint cannot be resumed ({_reason(e)}); remove {work} (laffi train: add "
                         "--restart) to train afresh") from None  # fmt: skip
    return log, len(log)


def _reason(e: Exception) -> str:
    """The first line of an error, short: what was wrong with a checkpoint."""
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    text = f"{type(e).__name__}: {lines[0]}" if lines else type(e).__name__
    return text if len(text) <= 160 else text[:157] + "..."


def _summary(cfg: TrainConfig, examples: list[Example], rows: list[dict], log: list[dict],
             answer_prefix: str) -> dict[str, Any]:
    return {
        "config": asdict(cfg),
        "examples": len(examples),
        "examples_by_kind": dict(Counter(e.kind for e in examples)),
        # Read at answer time (laffi.engines.generation.answer_prefix): text that ends every QA prompt for this adapter.
        "answer_prefix": answer_prefix,
        "template_versions": {"qa": prompts.QA_TEMPLATE_VERSION, "feedback": prompts.FEEDBACK_TEMPLATE_VERSION,
                              "coh": prompts.COH_TEMPLATE_VERSION, "refine": prompts.REFINE_TEMPLATE_VERSION},
        "tokens": sum(len(r["input_ids"]) for r in rows),
        "loss_tokens": sum(sum(r["completion_mask"]) for r in rows),
        "steps": len(log),
        "final_loss": log[-1]["loss"] if log else None,
    }


def _save_adapter(model: Any, tokenizer: Any, out: Path, log: list[dict], info: dict, state: Any = None) -> None:
    """Write the adapter atomically; `state`: its weights gathered from a sharded engine (else read from `model`)."""
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(str(tmp), state_dict=state)
    _sort_target_modules(tmp / "adapter_config.json")
    tokenizer.save_pretrained(str(tmp))
    with open(tmp / TRAIN_LOG, "w", encoding="utf-8") as f:
        for entry in log:
            f.write(json.dumps(entry) + "\n")
    write_json(tmp / TRAIN_INFO, info)
    events = out.with_name(out.name + ".partial") / "runs"
    if events.is_dir():  # train.report_to: tensorboard
        shutil.copytree(events, tmp / "runs")
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)


def _sort_target_modules(config_file: Path) -> None:
    """PEFT writes an expanded `all-linear` target list in set order, which changes with each process's hash seed:
    sorted, the same training writes the same bytes, so cache keys made from adapter files agree between processes."""
    data = json.loads(config_file.read_text(encoding="utf-8"))
    if isinstance(data.get("target_modules"), list):
        data["target_modules"] = sorted(data["target_modules"])
        write_json(config_file, data)


def _tensorboard(cfg: TrainConfig, work: Path) -> Any:
    """A TensorBoard writer when `train.report_to` is 'tensorboard': events go to `<out>.partial/runs/` while training
    (a resumed run adds a file beside the first) and end up in `<out>/runs/` (`tensorboard --logdir OUT/runs`)."""
    if cfg.report_to != "tensorboard":
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise LaffiError("train.report_to: 'tensorboard' needs the tensorboard package (pip install tensorboard)") \
            from None
    return SummaryWriter(log_dir=str(work / "runs"))
