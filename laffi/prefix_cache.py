"""Greedy decoding that computes each shared prompt prefix once and reuses its key/value cache.

Prompts put the shared part first (prompts.py): instructions and shots are the same for every question, and
questions on the same passage share everything up to the question. On a CPU the prefill of that prefix dominates
the cost of answering, so instead of prefilling every prompt in full we:

1. tokenize every full prompt and take the longest common token prefix of all of them (level 0: system + shots);
2. group prompts whose token ids share a longer prefix (same passage) and prefill that segment once per group, on
   top of level 0 (level 1);
3. decode rows in batches: each row's cache is level 0 + its group's segment, only its own suffix (the question) is
   prefilled, then greedy steps; a row leaves the batch as soon as it ends, so finished rows cost nothing.

Prefixes are cut from each full prompt's own token ids, so the cached tokens are exactly the tokens the plain path
feeds (a separately tokenized prefix could merge differently at its boundary; this cannot). Rows of a batch have
segments and suffixes of different lengths: the gaps are masked padding and every token gets its true position id,
so each row computes what its prompt alone would, up to float rounding.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

# A group's own shared segment must be at least this many tokens to be worth a separate prefill.
MIN_GROUP_TOKENS = 16


@dataclass
class Group:
    prefix_len: int  # tokens of every member's prompt covered by level 0 + this group's segment
    members: list[int]  # indices into the prompt list


def common_prefix_len(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def plan(encoded: list[list[int]], min_group_tokens: int = MIN_GROUP_TOKENS) -> tuple[int, list[Group]]:
    """(level-0 length, groups). Every prompt keeps at least one uncached token (its logits start the answer).

    Sorting the token ids lexicographically puts prompts with long common prefixes next to each other; walking that
    order, a prompt joins the current group while it shares >= `min_group_tokens` more than level 0 with the group.
    """
    level0 = min(len(e) for e in encoded) - 1
    for e in encoded[1:]:
        level0 = min(level0, common_prefix_len(encoded[0], e))
    order = sorted(range(len(encoded)), key=lambda i: encoded[i])
    groups: list[Group] = []
    for i in order:
        if groups:
            g = groups[-1]
            shared = common_prefix_len(encoded[g.members[0]], encoded[i])
            shared = min(shared, g.prefix_len, len(encoded[i]) - 1)
            if shared >= level0 + min_group_tokens:
                g.members.append(i)
                g.prefix_len = shared
                continue
        groups.append(Group(prefix_len=len(encoded[i]) - 1, members=[i]))
    for g in groups:
        if len(g.members) == 1:  # nobody to share a segment with: prefill it with the suffix
            g.prefix_len = level0
    return level0, groups


def greedy_ids(
    model: Any,
    encoded: list[list[int]],
    max_new_tokens: int,
    batch_size: int,
    stops: list[int],
    pad_id: int,
    on_batch: Callable[[list[int], list[list[int]]], None] | None = None,
) -> list[list[int]] | None:
    """Greedy continuations of every prompt as token ids (ending with the stop token if one came, as `model.generate`
    returns them), or None when this model's cache is not a plain per-layer key/value cache (the caller then falls
    back to the plain path)."""
    import torch

    level0, groups = plan(encoded)
    if level0 < 1:
        return None
    with torch.inference_mode():
        prefix_kv = _prefill(model, encoded[0][:level0], None, 0)
        if prefix_kv is None:
            return None
        rows = [(i, g) for g in groups for i in g.members]
        segments: dict[int, list[tuple[Any, Any]]] = {}
        remaining = {id(g): len(g.members) for g in groups}
        outputs: list[list[int]] = [[] for _ in encoded]
        for start in range(0, len(rows), batch_size):
            batch = rows[start : start + batch_size]
            for _, g in batch:
                if id(g) not in segments:
                    ids = encoded[g.members[0]][level0 : g.prefix_len]
                    segments[id(g)] = _prefill(model, ids, prefix_kv, level0) if ids else []
            tokens = _decode_batch(model, encoded, batch, level0, prefix_kv, segments, max_new_tokens, stops, pad_id)
            for (i, g), out in zip(batch, tokens, strict=True):
                outputs[i] = out
                remaining[id(g)] -= 1
                if remaining[id(g)] == 0:
                    del segments[id(g)]  # free a passage's cache once all its questions are answered
            if on_batch is not None:
                on_batch([i for i, _ in batch], tokens)
    return outputs


def _prefill(model: Any, ids: list[int], past: list[tuple[Any, Any]] | None, offset: int) -> Any:
    """Key/values of `ids` (one row) at positions offset.., on top of `past` (which covers positions 0..offset-1).

    Returns only the new tokens' key/values per layer, or None if the model's cache has layers other than plain
    dynamic ones (sliding windows etc. would not survive the slicing done here)."""
    import torch
    from transformers.cache_utils import DynamicCache, DynamicLayer

    cache = DynamicCache(ddp_cache_data=past) if past else DynamicCache()
    input_ids = torch.tensor([ids])
    positions = torch.arange(offset, offset + len(ids))[None]
    attention = torch.ones((1, offset + len(ids)), dtype=torch.long)
    out = model(input_ids=input_ids, cache=cache, attention_mask=attention, position_ids=positions,
                use_cache=True, logits_to_keep=1)  # fmt: skip
    layers = out.cache.layers
    if any(type(layer) is not DynamicLayer for layer in layers):
        return None
    return [(layer.keys[:, :, offset:], layer.values[:, :, offset:]) for layer in layers]


def _decode_batch(
    model: Any,
    encoded: list[list[int]],
    batch: list[tuple[int, Group]],
    level0: int,
    prefix_kv: list[tuple[Any, Any]],
    segments: dict[int, list[tuple[Any, Any]]],
    max_new_tokens: int,
    stops: list[int],
    pad_id: int,
) -> list[list[int]]:
    """Prefill each row's suffix over its cached prefix, then greedy steps until every row has stopped.

    Column layout of row r: [level 0][pad][its group's segment][pad][its suffix][generated...], so every row's last
    token sits in the same column. Padding is masked; position ids count real tokens only."""
    import torch
    from transformers.cache_utils import DynamicCache

    n = len(batch)
    seg_lens = [g.prefix_len - level0 for _, g in batch]
    suffixes = [encoded[i][g.prefix_len :] for i, g in batch]
    seg_w, suf_w = max(seg_lens), max(len(s) for s in suffixes)
    attention = torch.zeros((n, level0 + seg_w + suf_w), dtype=torch.long)
    attention[:, :level0] = 1
    input_ids = torch.full((n, suf_w), pad_id, dtype=torch.long)
    positions = torch.zeros((n, suf_w), dtype=torch.long)
    for r, ((_, g), s) in enumerate(zip(batch, suffixes, strict=True)):
        attention[r, level0 + seg_w - seg_lens[r] : level0 + seg_w] = 1
        attention[r, level0 + seg_w + suf_w - len(s) :] = 1
        input_ids[r, suf_w - len(s) :] = torch.tensor(s)
        positions[r, suf_w - len(s) :] = torch.arange(g.prefix_len, g.prefix_len + len(s))
    kv = []
    for layer, (k0, v0) in enumerate(prefix_kv):
        keys = k0.new_zeros((n, k0.shape[1], level0 + seg_w, k0.shape[3]))
        values = v0.new_zeros((n, v0.shape[1], level0 + seg_w, v0.shape[3]))
        keys[:, :, :level0] = k0
        values[:, :, :level0] = v0
        for r, (_, g) in enumerate(batch):
            if seg_lens[r]:
                ks, vs = segments[id(g)][layer]
                keys[r, :, level0 + seg_w - seg_lens[r] : level0 + seg_w] = ks[0]
                values[r, :, level0 + seg_w - seg_lens[r] : level0 + seg_w] = vs[0]
        kv.append((keys, values))
    cache = DynamicCache(ddp_cache_data=kv)
    outputs: list[list[int]] = [[] for _ in batch]
    live = list(range(n))  # batch rows still generating, in cache row order
    next_pos = positions[:, -1] + 1
    stop_set = set(stops)
    for _ in range(max_new_tokens):
        out = model(input_ids=input_ids, cache=cache, attention_mask=attention, position_ids=positions,
                    use_cache=True, logits_to_keep=1)  # fmt: skip
        cache = out.cache
        chosen = out.logits[:, -1].argmax(dim=-1).tolist()
        keep = []
        for row, token in enumerate(chosen):
            outputs[live[row]].append(token)
            if token not in stop_set and len(outputs[live[row]]) < max_new_tokens:
                keep.append(row)
        if not keep:
            break
        if len(keep) < len(live):  # drop finished rows: later steps only compute the live ones
            index = torch.tensor(keep)
            cache.batch_select_indices(index)
            attention, next_pos = attention[index], next_pos[index]
            chosen = [chosen[k] for k in keep]
            live = [live[k] for k in keep]
        input_ids = torch.tensor(chosen)[:, None]
        positions = next_pos[:, None]
        next_pos = next_pos + 1
        attention = torch.cat([attention, torch.ones((len(live), 1), dtype=torch.long)], dim=1)
    return outputs
