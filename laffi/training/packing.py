"""Shared-prefix training (`train.shared_prefix`): questions on one passage are trained in one row that computes the
prompt start they share once.

Order: the examples of one group (same `Example.kind` and `Example.group`, set by the method to the passage) are
kept together: each epoch shuffles the groups, and the examples within each group, with the run's seed
(`group_order`), so an optimizer step's examples mostly share a passage.

Rows: within a step, a group's token sequences (each exactly its unpacked row, truncation included) are laid out as a
prefix tree (`pack`): a token shared by several sequences at the same depth after the same tokens is computed once. A
4-D attention mask lets each token attend to the tokens on its own path from the root (its sequence's earlier tokens)
and to nothing else, and its position id is its index in its own sequence. Every sequence therefore computes exactly
the hidden states it would compute alone, and the loss is taken on the same target tokens (each predicted from the
position before it on its path). For the QA prompt the shared part is system + shots + passage; for the feedback
prompt system + passage; the rest (question, completion) is each example's own.

Rows (`pack_step`) are bounded by tokens, not examples. The examples of a step go, group by group, into the row
where they add the least compute (linear layers per token plus the dense attention of the row's width,
`attention_tokens`), or into a new row when that is cheaper: a passage's questions share a row, and passages share
one where the tokens they have in common (the shots of the QA prompt) pay for the wider attention. No row exceeds
`train.micro_batch_tokens` (a single sequence longer than it is a row of its own).

Micro-batches: only rows that share a prefix (two examples or more) are packed; they are sorted by length and cut so
that rows x longest row (padding included) stays within `train.micro_batch_tokens`. An example that shares nothing
worth packing with another example of its step is a row of its own, and those rows are batched exactly as the loop
without shared prefixes batches a step: sorted by length, `train.micro_batch_size` examples per micro-batch, the
plain causal path (no 4-D mask). A step where nothing is shared (sparse data: questions on different passages) is
therefore trained as one example per row trains it; rows of one example in micro-batches of 2,048 tokens had run at
0.90-0.93x its speed (docs/performance.md). The loss of a step is still divided by its completion tokens.

Exactness: in float32 the per-example losses and LoRA gradients equal one example per row to float rounding
(tests/test_shared_prefix.py); LoRA dropout draws other masks for another layout.
"""

from __future__ import annotations

import random
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Any

from laffi.training.examples import Example

Row = dict[str, list[int]]


def group_keys(examples: Sequence[Example]) -> list[Hashable]:
    """One key per example: (kind, group); an example without a group is a group of its own."""
    return [(ex.kind, ex.group) if ex.group else (ex.kind, "", i) for i, ex in enumerate(examples)]


def group_order(keys: Sequence[Hashable], seed: int) -> list[int]:
    """Example indices for one epoch: the groups in a random order, each group's examples together in a random order,
    both drawn from `seed` (groups are listed in the order of their first example, so the result is deterministic)."""
    groups: dict[Hashable, list[int]] = {}
    for i, key in enumerate(keys):
        groups.setdefault(key, []).append(i)
    rng = random.Random(seed)
    members = list(groups.values())
    rng.shuffle(members)
    order: list[int] = []
    for group in members:
        group = list(group)
        rng.shuffle(group)
        order += group
    return order


@dataclass
class Packed:
    """One packed row: tokens in tree order, each with its position id and the token before it on its path."""

    input_ids: list[int]
    positions: list[int]
    parents: list[int]  # index in this row of the token before it on its sequence (-1: a sequence's first token)
    predict: list[int]  # for each target token: the index in this row of the hidden state that predicts it
    targets: list[int]
    owners: list[int]  # for each target token: the example (index into the rows) whose loss it is


def _common(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def pack(rows: Sequence[Row], members: Sequence[int]) -> Packed:
    """The prefix tree of the members' token sequences as one row. Sequences are sorted, so each one shares with its
    predecessor the longest prefix it shares with any earlier one; only the rest of it is added."""
    out = Packed([], [], [], [], [], [])
    previous: Sequence[int] = []
    path: list[int] = []
    for i in sorted(members, key=lambda m: (rows[m]["input_ids"], m)):
        seq, mask = rows[i]["input_ids"], rows[i]["completion_mask"]
        path = path[: _common(previous, seq)]
        for depth in range(len(path), len(seq)):
            out.parents.append(path[-1] if path else -1)
            path.append(len(out.input_ids))
            out.input_ids.append(seq[depth])
            out.positions.append(depth)
        for t in range(1, len(seq)):
            if mask[t]:  # position t - 1 predicts token t, as in the unpacked loss
                out.predict.append(path[t - 1])
                out.targets.append(seq[t])
                out.owners.append(i)
        previous = seq
    return out


def packed_width(rows: Sequence[Row], members: Sequence[int]) -> int:
    """Tokens in the packed row of `members` (without building it)."""
    seqs = sorted(rows[m]["input_ids"] for m in members)
    return sum(len(s) for s in seqs) - sum(_common(a, b) for a, b in zip(seqs, seqs[1:], strict=False))


def attention_tokens(config: Any) -> float:
    """Row width at which dense attention costs as much per token as the linear layers, from a Llama-like model
    config: (per-layer weights) / (2 x hidden size), ~3,070 tokens for SmolLM2-135M. The forward pass of a row of w
    tokens costs about w x (linear layers per token) x (1 + w / this)."""
    d = config.hidden_size
    heads = config.num_attention_heads
    kv = getattr(config, "num_key_value_heads", None) or heads
    inner = getattr(config, "intermediate_size", None) or 4 * d
    head_dim = getattr(config, "head_dim", None) or d // heads
    weights = 2 * d * heads * head_dim + 2 * d * kv * head_dim + 3 * d * inner
    return weights / (2 * d)


def pack_step(rows: Sequence[Row], keys: Sequence[Hashable], step: Sequence[int], budget: int,
              attention: float = 0.0, micro_batch_size: int = 0) -> list[list[list[int]]]:  # fmt: skip
    """One optimizer step's examples as micro-batches of packed rows (each row: the example indices it holds).

    Examples are taken group by group. Each goes into the row (of at most `budget` tokens) where it adds the least
    cost, or starts a new row when that costs less, a row of w tokens costing w x (1 + w / `attention`): linear
    layers per token plus dense attention per pair of tokens (`attention_tokens`). So the questions of a passage share
    a row, and rows of several passages form where they share enough (the shots of the QA prompt) to pay for the
    wider attention. `attention` = 0: a row holds one group only.

    Packed rows (two examples or more), shortest first, are cut into micro-batches of at most `budget` tokens counting
    padding. Rows of one example come first, in micro-batches of their own: with `micro_batch_size`, sorted by length
    in the order of `step` and cut into micro-batches of that many examples, which is exactly how the loop without
    shared prefixes cuts a step (`loop.step_schedule`, whose steps are sorted so): a step where nothing is shared is
    laid out as there. `micro_batch_size` = 0: cut by `budget` tokens like packed rows."""
    groups: dict[Hashable, list[int]] = {}
    for i in step:
        groups.setdefault(keys[i], []).append(i)

    def cost(width: int) -> float:
        return width * (1 + width / attention) if attention else width

    held: list[list[int]] = []
    widths: list[int] = []
    for i in (i for members in groups.values() for i in members):
        seq = rows[i]["input_ids"]
        candidates = range(len(held)) if attention else [len(held) - 1] if held and keys[held[-1][0]] == keys[i] else []
        best, best_add, best_delta = -1, 0, 0.0
        for r in candidates:
            add = len(seq) - max(_common(rows[j]["input_ids"], seq) for j in held[r])
            if widths[r] + add > budget:
                continue
            delta = cost(widths[r] + add) - cost(widths[r])
            if best < 0 or delta < best_delta:
                best, best_add, best_delta = r, add, delta
        if best < 0 or best_delta >= cost(len(seq)):
            held.append([i])
            widths.append(len(seq))
        else:
            held[best].append(i)
            widths[best] += best_add
    # Rows of one example and packed rows go to separate micro-batches: a micro-batch of single examples runs the
    # plain causal path (no 4-D mask), as one example per row does.
    micro_batches: list[list[list[int]]] = []
    if micro_batch_size:  # single rows as the loop without shared prefixes batches them: by examples
        where = {i: n for n, i in enumerate(step)}
        singles = sorted((members[0] for members in held if len(members) == 1),
                         key=lambda i: (len(rows[i]["input_ids"]), where[i]))  # fmt: skip
        micro_batches += [[[i] for i in singles[m : m + micro_batch_size]]
                          for m in range(0, len(singles), micro_batch_size)]  # fmt: skip
    for single in (True, False) if not micro_batch_size else (False,):
        current_mb: list[list[int]] = []
        rows_here = sorted((wr for wr in zip(widths, held, strict=True) if (len(wr[1]) == 1) == single),
                           key=lambda wr: wr[0])  # fmt: skip
        for width, members in rows_here:  # widths ascending: the new row is the widest
            if current_mb and (len(current_mb) + 1) * width > budget:
                micro_batches.append(current_mb)
                current_mb = []
            current_mb.append(members)
        if current_mb:
            micro_batches.append(current_mb)
    return micro_batches


def allowed(packed: Packed, width: int) -> Any:
    """(width, width) numpy bool matrix: True where the token of the row may attend to the token of the column (its
    own path); padding positions attend to themselves only."""
    import numpy as np

    mask = np.zeros((width, width), dtype=bool)
    idx = np.arange(width)
    mask[idx, idx] = True
    for t, parent in enumerate(packed.parents):  # a parent comes before its child: its row is complete
        if parent >= 0:
            mask[t, : parent + 1] = mask[parent, : parent + 1]
    return mask


def packed_tensors(packed: Sequence[Packed], pad_id: int, dtype: Any,
                   device: Any = "cpu") -> tuple[Any, Any, Any, Any, Any]:  # fmt: skip
    """(input ids, additive 4-D attention mask in `dtype`, position ids, flat predict indices, targets) of packed rows,
    right-padded to the longest, on `device` (the model's). The mask is 0 where attention is allowed and dtype's
    lowest value elsewhere, the form both eager and SDPA attention add to the scores; it is worked out in numpy on
    the CPU and copied once."""
    import numpy as np
    import torch

    width = max(len(p.input_ids) for p in packed)
    ok = np.zeros((len(packed), 1, width, width), dtype=bool)
    predict: list[int] = []
    targets: list[int] = []
    for b, p in enumerate(packed):
        ok[b, 0] = allowed(p, width)
        predict += [b * width + i for i in p.predict]
        targets += p.targets
    pad = [width - len(p.input_ids) for p in packed]
    ids = torch.tensor([list(p.input_ids) + [pad_id] * n for p, n in zip(packed, pad, strict=True)], dtype=torch.long,
                       device=device)  # fmt: skip
    positions = torch.tensor([list(p.positions) + [0] * n for p, n in zip(packed, pad, strict=True)],
                             dtype=torch.long, device=device)  # fmt: skip
    blocked = ~torch.from_numpy(ok).to(device)
    mask = torch.zeros(ok.shape, dtype=dtype, device=device).masked_fill_(blocked, torch.finfo(dtype).min)
    return (ids, mask, positions, torch.tensor(predict, dtype=torch.long, device=device),
            torch.tensor(targets, dtype=torch.long, device=device))


def packed_loss(model: Any, packed: Sequence[Packed], pad_id: int, per_token: bool = False) -> Any:
    """Summed next-token cross-entropy over the target tokens of packed rows (per target token with `per_token`, in
    the order of the rows' `targets`). `model`: a PEFT model; the LM head runs on the predicting positions only."""
    import torch.nn.functional as F

    causal_lm = model.get_base_model()
    body = getattr(causal_lm, causal_lm.base_model_prefix)
    weight = body.get_input_embeddings().weight
    ids, mask, positions, predict, targets = packed_tensors(packed, pad_id, weight.dtype, weight.device)
    hidden = body(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=False).last_hidden_state
    h = hidden.reshape(-1, hidden.shape[-1])[predict]
    logits = causal_lm.get_output_embeddings()(h).float()
    return F.cross_entropy(logits, targets, reduction="none" if per_token else "sum")
