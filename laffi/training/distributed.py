"""Data-parallel training under `accelerate launch` (or torchrun): the optimizer step's micro-batches are shared out.

laffi's training loop (laffi/training/loop.py) accumulates the gradient of sum(loss) / n_loss over an optimizer step's
micro-batches, where n_loss is the step's number of completion tokens. With N processes, process r runs micro-batches
r, r+N, r+2N, ... of each step. Everything engine-specific goes through accelerate's documented loop API, so the same
code runs DDP (MULTI_GPU, or MULTI_CPU with gloo), FSDP 2 and DeepSpeed ZeRO as the accelerate config says:
`prepare(model, optimizer)`, `accumulate` (which skips the all-reduce, or tells DeepSpeed it is not at a gradient
accumulation boundary, on all but a step's last pass), `backward`, `clip_grad_norm_`, the prepared optimizer's `step`.

Every process runs the same number of passes per step, k = ceil(micro-batches per step / N), as accelerate's
gradient accumulation and DeepSpeed's engine need: a process with fewer micro-batches in a step (a short last step)
runs zero-weight passes over the step's shortest micro-batch. accelerate (or DeepSpeed) divides each pass's loss by k
and the all-reduce averages over the N processes, so each loss is scaled by k * N / n_loss: the reduced gradient is
then exactly the single-process one (up to float summation order), the step's global n_loss is the same on every
process (each tokenizes the whole data set), and the logged loss is the all-reduced sum / n_loss.

Only the main process writes the adapter and the log. With replicated state (DDP) it also writes the resumable
checkpoint as the single-process loop does; with sharded state (FSDP, DeepSpeed) every process writes its shard
through `accelerator.save_state`. Single-process runs never come here (see `launched`), so they are unchanged bit
for bit. LoRA dropout draws different random numbers than one process would, so N processes match one exactly only
with `train.lora_dropout=0` (as in tests/test_distributed.py).
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import torch

from laffi.errors import LaffiError
from laffi.files import printable

SHARDED = ("FSDP", "DEEPSPEED")
STATE_DIR = "accelerate_state"  # inside the run's .partial/ directory, for sharded engines


def launched() -> bool:
    """True under a multi-process launcher (torchrun, accelerate launch: WORLD_SIZE > 1), and under `accelerate
    launch` with one process (it sets ACCELERATE_MIXED_PRECISION): then the loop runs on accelerate's device (a GPU)
    with its mixed precision. A plain `laffi train` is neither, and runs the unchanged single-process loop.
    The launcher's variables are checked first (`world_size`)."""
    return world_size() > 1 or "ACCELERATE_MIXED_PRECISION" in os.environ


LAUNCH_HINT = "start laffi under accelerate launch or torchrun, or unset WORLD_SIZE, RANK and LOCAL_RANK"


def world_size() -> int:
    """WORLD_SIZE (1 when unset), after checking what a launcher sets: WORLD_SIZE, RANK and LOCAL_RANK whole numbers,
    the ranks below WORLD_SIZE, and with WORLD_SIZE > 1 the rendezvous address (MASTER_ADDR, MASTER_PORT) that every
    launcher sets. Left in the environment without a launcher, or garbage, they are a one-line `LaffiError` rather
    than a traceback or a wait for processes that never come."""
    values = {}
    for name, default in (("WORLD_SIZE", 1), ("RANK", 0), ("LOCAL_RANK", 0)):
        text = os.environ.get(name)
        if text is None:
            values[name] = default
        elif text.strip().isascii() and text.strip().isdigit() and len(text.strip()) <= 9:
            values[name] = int(text)
        else:
            shown = printable(text if len(text) <= 40 else text[:40] + "...")
            raise LaffiError(f"{name}='{shown}': not a process count or rank (a whole number); {LAUNCH_HINT}")
    world = values["WORLD_SIZE"]
    if world < 1:
        raise LaffiError(f"WORLD_SIZE={world}: must be at least 1; {LAUNCH_HINT}")
    for name in ("RANK", "LOCAL_RANK"):
        if values[name] >= world:
            raise LaffiError(f"{name}={values[name]}: not below WORLD_SIZE={world}; {LAUNCH_HINT}")
    missing = [name for name in ("MASTER_ADDR", "MASTER_PORT") if not os.environ.get(name, "").strip()]
    if world > 1 and missing:
        raise LaffiError(f"WORLD_SIZE={world} but {' and '.join(missing)} unset: no launcher to meet the other "
                         f"processes; {LAUNCH_HINT}")  # fmt: skip
    return world


def rank0_loading() -> bool:
    """FSDP with `fsdp_cpu_ram_efficient_loading` (configs/accelerate/fsdp.yaml): rank 0 alone reads the weights;
    the other processes build the model with its parameters on `meta` (`laffi.models.empty_model`), and accelerate
    sends rank 0's state (weights and LoRA initialisation) to every process's shards after sharding."""
    flag = os.environ.get("FSDP_CPU_RAM_EFFICIENT_LOADING", "false").lower() in ("1", "true")
    return flag and os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true" and launched()


def rank() -> int:
    value = os.environ.get("RANK", "0").strip()
    return int(value) if value.isdigit() else 0


def target_device() -> str:
    """The device a launched process trains on (accelerate's choice: its local rank's GPU, else the CPU), for
    resolving dtype 'auto' before the model is read."""
    if torch.cuda.is_available():
        rank = os.environ.get("LOCAL_RANK", "0").strip()
        return f"cuda:{int(rank) if rank.isdigit() else 0}"
    return "cpu"


class CompletionLoss(torch.nn.Module):
    """The loop's loss as a module's forward, so the engine sees the forward pass: DDP prepares the gradient
    all-reduce there, FSDP gathers the root's parameters (embeddings, LM head) there, DeepSpeed runs its hooks."""

    def __init__(self, model: Any) -> None:
        super().__init__()
        self.model = model
        # FSDP's transformer auto-wrap policy reads the decoder layer class from here.
        self._no_split_modules = getattr(model.get_base_model(), "_no_split_modules", None)

    def forward(self, ids: Any, attention: Any, target_mask: Any) -> Any:
        from laffi.training.loss import loss_sum_of_batch

        return loss_sum_of_batch(self.model, ids, attention, target_mask)


def passes_per_step(cfg: Any, world: int) -> int:
    """k: micro-batches each process runs per optimizer step (the longest share of a full step)."""
    return math.ceil(cfg.batch_size // cfg.micro_batch_size / world)


class DataParallel:
    """One process of a data-parallel run: the engine, which micro-batches it runs, and the all-reduces."""

    def __init__(self, model: Any, optimizer: Any, cfg: Any) -> None:
        from accelerate import Accelerator
        from accelerate.utils import GradientAccumulationPlugin, InitProcessGroupKwargs

        world = world_size()
        self.k = passes_per_step(cfg, world)
        # sync_with_dataloader=False: steps are counted by the loop's passes (no prepared dataloader here).
        plugin = GradientAccumulationPlugin(num_steps=self.k, sync_with_dataloader=False)
        cpu, handlers = not torch.accelerator.is_available(), []
        if cpu and _deepspeed_requested():
            # cpu=True would turn DeepSpeed off (MULTI_CPU); without it accelerate counts the processes right on CPU
            # only when told the backend (DeepSpeed's CPU accelerator communicates over gloo).
            cpu, handlers = False, [InitProcessGroupKwargs(backend="gloo")] if world > 1 else []
        # Otherwise cpu=True where there is no accelerator: only then does accelerate set up gloo (MULTI_CPU).
        self.accelerator = Accelerator(cpu=cpu, gradient_accumulation_plugin=plugin, kwargs_handlers=handlers)
        acc = self.accelerator
        if acc.num_processes != world:
            raise LaffiError(f"WORLD_SIZE is {world} but accelerate set up {acc.num_processes} process(es) "
                             f"({acc.distributed_type})")  # fmt: skip
        if acc.mixed_precision == "fp16":
            # fp16 needs a loss scaler between backward, clipping and the step, which this loop does not have.
            raise LaffiError("accelerate config: mixed_precision fp16 is not supported by laffi train; use bf16 or no")
        self.kind = str(acc.distributed_type).split(".")[-1]
        self.sharded = self.kind in SHARDED
        if self.kind == "DEEPSPEED":
            _fill_deepspeed_config(acc, cfg, self.k)
        self.rank, self.world, self.is_main = acc.process_index, acc.num_processes, acc.is_main_process
        self.device = acc.device
        self.model = model
        if self.kind not in SHARDED:
            # DeepSpeed's engine places (and casts) the model itself; FSDP 2's `fully_shard` moves each shard to this
            # process's device as it shards (accelerate's fsdp2_prepare_model): moving first would put the whole
            # model on every GPU.
            model.to(self.device)
        self.loss, self.optimizer = acc.prepare(CompletionLoss(model), optimizer)

    def step(self, micro_batches: list[list[int]], rows: list[dict], n_loss: int, pad_id: int, autocast: Any) -> float:
        """Forward and backward of this process's share of one optimizer step; returns the step's summed loss over
        all processes. Gradients are reduced when it returns (for DeepSpeed, the engine has also stepped)."""
        from laffi.training.loss import batch_tensors

        mine = [(mb, 1.0) for mb in micro_batches[self.rank :: self.world]]
        mine += [(micro_batches[0], 0.0)] * (self.k - len(mine))
        total = torch.zeros((), dtype=torch.float64, device=self.device)
        for mb, weight in mine:
            tensors = batch_tensors([rows[i] for i in mb], pad_id, self.device)
            with self.accelerator.accumulate(self.loss):
                with autocast:
                    loss_sum = self.loss(*tensors)
                self.accelerator.backward(loss_sum * (weight * self.k * self.world / n_loss))
            total += loss_sum.detach().double() * weight
        return self.accelerator.reduce(total, reduction="sum").item()

    def clip_and_step(self, max_norm: float) -> float:
        """Clip the reduced gradients and step the optimizer; returns the gradient norm before clipping.
        DeepSpeed clips (`gradient_clipping`, set to `max_norm`) and steps inside `backward`; its norm is read back."""
        norm = self.accelerator.clip_grad_norm_(self.loss.parameters(), max_norm)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if hasattr(norm, "full_tensor"):  # FSDP 2 returns a DTensor
            norm = norm.full_tensor()
        return float(norm) if norm is not None else float("nan")

    def adapter_state(self) -> dict[str, Any]:
        """The trainable (LoRA) weights, whole and in float32 on the CPU, keyed as in `model.state_dict()`.
        Every process must call it (FSDP gathers the shards); only the main process's copy is used."""
        out = {}
        for name, p in self.model.named_parameters():
            if not p.requires_grad:
                continue
            if self.kind == "DEEPSPEED":
                from deepspeed.utils import safe_get_full_fp32_param

                t = safe_get_full_fp32_param(p)  # the fp32 master copy, not the bf16 working weights
            else:
                t = p.full_tensor() if hasattr(p, "full_tensor") else p
            out[name] = t.detach().float().cpu()
        return out

    def save_state(self, work: Path) -> None:
        """Sharded engines: every process writes its part of model, optimizer and RNG state."""
        self.accelerator.save_state(str(work / STATE_DIR))

    def load_state(self, work: Path) -> bool:
        path = work / STATE_DIR
        if not path.is_dir():
            return False
        self.accelerator.load_state(str(path))
        return True

    def register(self, scheduler: Any) -> None:
        self.accelerator.register_for_checkpointing(scheduler)

    def wait(self) -> None:
        self.accelerator.wait_for_everyone()

    def end(self) -> None:
        self.accelerator.end_training()


def _deepspeed_requested() -> bool:
    return os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true"


def _fill_deepspeed_config(acc: Any, cfg: Any, k: int) -> None:
    """Values DeepSpeed needs and accelerate can only infer from a prepared dataloader (laffi has none), and the
    loop's clipping: a config that sets them otherwise is refused rather than silently trained differently."""
    ds = acc.state.deepspeed_plugin.deepspeed_config
    wanted = {"train_micro_batch_size_per_gpu": cfg.micro_batch_size, "gradient_accumulation_steps": k,
              "gradient_clipping": 1.0}  # fmt: skip
    for key, value in wanted.items():
        if ds.get(key, "auto") not in ("auto", value):
            raise LaffiError(f"accelerate config: deepspeed {key} is {ds[key]}, but laffi train needs {value} "
                             f"(from train.batch_size / micro_batch_size and the number of processes); set it to auto")
        ds[key] = value
    ds.pop("train_batch_size", None)  # derived by DeepSpeed from the two above and the world size
    acc.gradient_accumulation_steps = k
