"""The loss: summed cross-entropy over the tokens that carry loss (`completion_mask`), on padded token rows.

Shared by the single-process loop (laffi/training/loop.py) and data-parallel training (laffi/training/distributed.py),
which runs `loss_sum_of_batch` as DDP's forward.
"""

from __future__ import annotations

from typing import Any


def completion_loss_sum(model: Any, rows: list[dict[str, list[int]]], pad_id: int) -> Any:
    """Summed next-token cross-entropy over completion tokens of one right-padded micro-batch.

    The LM head (a 49k-vocabulary matmul for SmolLM2) runs only on the positions that predict a completion token,
    never on the prompt: that is most of the sequence here, and full logits dominate memory on long passages.
    """
    from laffi.models import model_device

    return loss_sum_of_batch(model, *batch_tensors(rows, pad_id, model_device(model)))


def batch_tensors(rows: list[dict[str, list[int]]], pad_id: int, device: Any = "cpu") -> tuple[Any, Any, Any]:
    """(input ids, attention mask, completion mask) of one right-padded micro-batch, on `device` (the model's):
    padded as lists, each made a tensor once."""
    import torch

    width = max(len(r["input_ids"]) for r in rows)
    pad = [width - len(r["input_ids"]) for r in rows]
    ids = torch.tensor([r["input_ids"] + [pad_id] * p for r, p in zip(rows, pad, strict=True)], dtype=torch.long,
                       device=device)  # fmt: skip
    attention = torch.tensor([[1] * len(r["input_ids"]) + [0] * p for r, p in zip(rows, pad, strict=True)],
                             dtype=torch.long, device=device)  # fmt: skip
    target_mask = torch.tensor([list(r["completion_mask"]) + [0] * p for r, p in zip(rows, pad, strict=True)],
                               dtype=torch.bool, device=device)  # fmt: skip
    return ids, attention, target_mask


def loss_sum_of_batch(model: Any, ids: Any, attention: Any, target_mask: Any) -> Any:
    """`completion_loss_sum` on tensors made by `batch_tensors` (training.distributed runs it as DDP's forward)."""
    import torch.nn.functional as F

    causal_lm = model.get_base_model()
    body = getattr(causal_lm, causal_lm.base_model_prefix)
    hidden = body(input_ids=ids, attention_mask=attention, use_cache=False).last_hidden_state  # training: no cache
    # Position t predicts token t+1: take hidden states just before each completion token.
    predict_from = target_mask[:, 1:]
    h = hidden[:, :-1][predict_from]
    targets = ids[:, 1:][predict_from]
    logits = causal_lm.get_output_embeddings()(h).float()
    return F.cross_entropy(logits, targets, reduction="sum")
