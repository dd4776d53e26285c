"""Data-parallel training under `accelerate launch` (or torchrun): the optimizer step's micro-batches are shared out.

laffi's training loop (laffi/training.py) accumulates the gradient of sum(loss) / n_loss over an optimizer step's
micro-batches, where n_loss is the step's number of completion tokens. With N processes, process r runs micro-batches
r, r+N, r+2N, ... of each step; DDP (set up by `accelerate.Accelerator`) all-reduces the gradients on each process's
last micro-batch (the others run under `no_sync`). DDP averages over processes, so each loss is scaled by N: the
all-reduced gradient is then exactly the single-process one (up to float summation order), the step's global n_loss
is the same on every process (each tokenizes the whole data set), and the logged loss is the all-reduced sum / n_loss.
Clipping and the AdamW step then see identical gradients everywhere and keep the replicas in lockstep.

Only the main process writes checkpoints, the adapter and the log. Single-process runs never come here (see
`launched`), so they are unchanged bit for bit. LoRA dropout draws different random numbers than one process would,
so N processes match one exactly only with `train.lora_dropout=0` (as in tests/test_distributed.py).
"""

from __future__ import annotations

import os
from typing import Any

import torch

from laffi.errors import LaffiError

# Engines that take over steps the loop does itself (clipping, the optimizer step, saving sharded weights).
UNSUPPORTED = {"FSDP": "its sharded gradients need clipping and saving through accelerate",
               "DEEPSPEED": "its engine owns backward, clipping and the optimizer step"}  # fmt: skip


def launched() -> bool:
    """True under a multi-process launcher (torchrun, accelerate launch: WORLD_SIZE > 1), and under `accelerate
    launch` with one process (it sets ACCELERATE_MIXED_PRECISION): then the loop runs on accelerate's device (a GPU)
    with its mixed precision. A plain `laffi train` is neither, and runs the unchanged single-process loop."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 or "ACCELERATE_MIXED_PRECISION" in os.environ


class CompletionLoss(torch.nn.Module):
    """The loop's loss as a module's forward, so DDP sees the forward pass (it prepares the gradient all-reduce
    there; calling the inner model directly would bypass it)."""

    def __init__(self, model: Any) -> None:
        super().__init__()
        self.model = model

    def forward(self, ids: Any, attention: Any, target_mask: Any) -> Any:
        from laffi.training import loss_sum_of_batch

        return loss_sum_of_batch(self.model, ids, attention, target_mask)


class DataParallel:
    """One process of a data-parallel run: which micro-batches it runs, and the all-reduces."""

    def __init__(self, model: Any) -> None:
        from accelerate import Accelerator

        # cpu=True where there is no accelerator: only then does accelerate set up gloo for torchrun's processes.
        self.accelerator = Accelerator(cpu=not torch.accelerator.is_available())
        if self.accelerator.num_processes != int(os.environ.get("WORLD_SIZE", "1")):
            raise LaffiError(f"WORLD_SIZE is {os.environ.get('WORLD_SIZE')} but accelerate set up "
                             f"{self.accelerator.num_processes} process(es) ({self.accelerator.distributed_type})")
        kind = str(self.accelerator.distributed_type).split(".")[-1]
        if kind in UNSUPPORTED:
            raise LaffiError(f"accelerate config: distributed_type {kind} is not supported by laffi train yet "
                             f"({UNSUPPORTED[kind]}); use MULTI_GPU (configs/accelerate/multi_gpu_ddp.yaml)")
        if self.accelerator.mixed_precision == "fp16":
            # fp16 needs a loss scaler between backward, clipping and the step, which this loop does not have.
            raise LaffiError("accelerate config: mixed_precision fp16 is not supported by laffi train; use bf16 or no")
        self.rank = self.accelerator.process_index
        self.world = self.accelerator.num_processes
        self.is_main = self.accelerator.is_main_process
        self.device = self.accelerator.device
        model.to(self.device)
        self.loss = self.accelerator.prepare(CompletionLoss(model))

    def step(self, micro_batches: list[list[int]], rows: list[dict], n_loss: int, pad_id: int, autocast: Any) -> float:
        """Forward and backward of this process's share of one optimizer step; returns the step's summed loss over
        all processes. Gradients are all-reduced when it returns."""
        from laffi.training import batch_tensors

        mine = micro_batches[self.rank :: self.world]
        # A process with no micro-batch this step (a short last step) still joins the all-reduce, with a zero-weight
        # pass over the step's first micro-batch: DDP needs every process to run the same number of synced backwards.
        weight = 1.0
        if not mine:
            mine, weight = micro_batches[:1], 0.0
        total = torch.zeros((), dtype=torch.float64, device=self.device)
        for k, mb in enumerate(mine):
            tensors = [t.to(self.device) for t in batch_tensors([rows[i] for i in mb], pad_id)]
            last = k == len(mine) - 1
            with self._sync(last):
                with autocast:
                    loss_sum = self.loss(*tensors)
                self.accelerator.backward(loss_sum * (weight * self.world / n_loss))
            total += loss_sum.detach().double() * weight
        return self.accelerator.reduce(total, reduction="sum").item()

    def _sync(self, last: bool) -> Any:
        import contextlib

        return contextlib.nullcontext() if last else self.accelerator.no_sync(self.loss)

    def wait(self) -> None:
        self.accelerator.wait_for_everyone()

    def end(self) -> None:
        self.accelerator.end_training()
