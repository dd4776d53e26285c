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
    workers: int = 1,
) -> list[list[int]] | None:
    """Greedy continuations of every prompt as token ids (ending with the stop token if one came, as `model.generate`
    returns them), or None when this model's cache is not a plain per-layer key/value cache (the caller then falls
    back to the plain path).

    Continuous batching: up to `batch_size` rows decode together; when half of them have stopped, queued prompts
    join (their suffixes prefilled over their cached prefixes, their caches appended to the batch). Answers are short
    and their lengths vary a lot (most stop within a few tokens, a few run to `max_new_tokens`), so a fixed batch
    would spend most decode steps on one or two long rows. `on_batch(indices, tokens)` reports rows as they stop.

    `workers` > 1: the passages are shared out between that many threads, each decoding its share with its own batch
    and an equal share of torch's threads. Decode steps are small, so one decoder leaves cores idle between and
    within its operators; on 2 cores, 2 workers of 1 thread answered ~1.2x faster than 1 worker of 2 threads."""
    import threading

    import torch

    level0, groups = plan(encoded)
    if level0 < 1:
        return None
    with torch.inference_mode():
        prefix_kv = _prefill(model, encoded[0][:level0], None, 0)
    if prefix_kv is None:
        return None
    outputs: list[list[int]] = [[] for _ in encoded]
    lock = threading.Lock()

    def report(finished: list[int]) -> None:
        if on_batch is not None:
            with lock:  # callers write files and progress bars
                on_batch(finished, [outputs[i] for i in finished])

    parts = _share_out(groups, encoded, workers)
    args = (model, encoded, level0, prefix_kv, max_new_tokens, batch_size, set(stops), pad_id, outputs, report)
    if len(parts) == 1:
        _decode_groups(parts[0], *args)
        return outputs
    from concurrent.futures import ThreadPoolExecutor

    threads = torch.get_num_threads()

    def work(part: list[Group]) -> None:
        torch.set_num_threads(max(1, threads // len(parts)))
        _decode_groups(part, *args)

    try:
        with ThreadPoolExecutor(len(parts)) as pool:
            for future in [pool.submit(work, part) for part in parts]:
                future.result()  # re-raises a worker's exception here
    finally:
        torch.set_num_threads(threads)
    return outputs


def _share_out(groups: list[Group], encoded: list[list[int]], workers: int) -> list[list[Group]]:
    """Whole passages (groups) per worker, balancing the tokens to prefill (longest first, to the lightest share)."""
    parts: list[list[Group]] = [[] for _ in range(max(1, min(workers, len(groups))))]
    load = [0] * len(parts)

    def cost(g: Group) -> int:
        return g.prefix_len + sum(len(encoded[i]) - g.prefix_len for i in g.members)

    for g in sorted(groups, key=cost, reverse=True):
        k = load.index(min(load))
        parts[k].append(g)
        load[k] += cost(g)
    return [p for p in parts if p]


def _decode_groups(
    groups: list[Group],
    model: Any,
    encoded: list[list[int]],
    level0: int,
    prefix_kv: list[tuple[Any, Any]],
    max_new_tokens: int,
    batch_size: int,
    stops: set[int],
    pad_id: int,
    outputs: list[list[int]],
    report: Callable[[list[int]], None],
) -> None:
    """The continuous-batching loop over these groups' prompts (see `greedy_ids`); writes into `outputs`."""
    import torch

    queue = [(i, g) for g in groups for i in g.members]
    segments: dict[int, list[tuple[Any, Any]]] = {}
    unadmitted = {id(g): len(g.members) for g in groups}
    todo = len(queue)
    live: _Rows | None = None
    with torch.inference_mode():  # per thread
        while todo:
            room = batch_size - (live.n if live else 0)
            if queue and room >= batch_size - batch_size // 2:
                admit, queue = queue[:room], queue[room:]
                for _, g in admit:
                    if id(g) not in segments:
                        ids = encoded[g.members[0]][level0 : g.prefix_len]
                        segments[id(g)] = _prefill(model, ids, prefix_kv, level0) if ids else []
                new = _start_rows(model, encoded, admit, level0, prefix_kv, segments, pad_id)
                for _, g in admit:
                    unadmitted[id(g)] -= 1
                    if unadmitted[id(g)] == 0:
                        del segments[id(g)]  # every question on this passage holds its own copy now
                finished = new.record(outputs, stops, max_new_tokens)  # their first tokens
                live = new if live is None else live.join(new)
            else:
                assert live is not None
                live.step(model)
                finished = live.record(outputs, stops, max_new_tokens)
            if finished:
                todo -= len(finished)
                report(finished)
                gone = set(finished)
                live = live.keep([r for r, i in enumerate(live.rows) if i not in gone])


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


@dataclass
class _Rows:
    """The rows decoding together: prompt indices, their key/value cache (one row each), 2-D attention mask over the
    cache's columns, the position id of each row's next token, and each row's last chosen token (its next input)."""

    rows: list[int]
    cache: Any
    attention: Any
    next_pos: Any
    chosen: list[int]

    @property
    def n(self) -> int:
        return len(self.rows)

    def step(self, model: Any) -> None:
        """One greedy decode step of every row."""
        import torch

        self.attention = torch.cat([self.attention, torch.ones((self.n, 1), dtype=torch.long)], dim=1)
        out = model(input_ids=torch.tensor(self.chosen)[:, None], cache=self.cache, attention_mask=self.attention,
                    position_ids=self.next_pos[:, None], use_cache=True, logits_to_keep=1)  # fmt: skip
        self.cache = out.cache
        self.next_pos = self.next_pos + 1
        self.chosen = out.logits[:, -1].argmax(dim=-1).tolist()

    def record(self, outputs: list[list[int]], stops: set[int], max_new_tokens: int) -> list[int]:
        """Append each row's chosen token to its output; returns the prompt indices that have stopped."""
        finished = []
        for i, token in zip(self.rows, self.chosen, strict=True):
            outputs[i].append(token)
            if token in stops or len(outputs[i]) >= max_new_tokens:
                finished.append(i)
        return finished

    def keep(self, rows: list[int]) -> _Rows | None:
        """These rows only (positions in this batch), or None when none is left."""
        import torch

        if not rows:
            return None
        if len(rows) < self.n:
            index = torch.tensor(rows)
            self.cache.batch_select_indices(index)
            self.attention, self.next_pos = self.attention[index], self.next_pos[index]
            self.rows, self.chosen = [self.rows[r] for r in rows], [self.chosen[r] for r in rows]
        return self

    def join(self, other: _Rows) -> _Rows:
        """Both batches' rows in one: the narrower cache is padded with masked columns on the left (every token
        keeps its position id, so where its column is does not matter)."""
        import torch
        from transformers.cache_utils import DynamicCache

        width = max(self.attention.shape[1], other.attention.shape[1])

        def left_pad(t: Any, dim: int) -> Any:
            missing = width - t.shape[dim]
            if not missing:
                return t
            shape = list(t.shape)
            shape[dim] = missing
            return torch.cat([t.new_zeros(shape), t], dim=dim)

        kv = [(torch.cat([left_pad(a.keys, 2), left_pad(b.keys, 2)]),
               torch.cat([left_pad(a.values, 2), left_pad(b.values, 2)]))
              for a, b in zip(self.cache.layers, other.cache.layers, strict=True)]  # fmt: skip
        attention = torch.cat([left_pad(self.attention, 1), left_pad(other.attention, 1)])
        return _Rows(rows=self.rows + other.rows, cache=DynamicCache(ddp_cache_data=kv), attention=attention,
                     next_pos=torch.cat([self.next_pos, other.next_pos]), chosen=self.chosen + other.chosen)


def _start_rows(
    model: Any,
    encoded: list[list[int]],
    batch: list[tuple[int, Group]],
    level0: int,
    prefix_kv: list[tuple[Any, Any]],
    segments: dict[int, list[tuple[Any, Any]]],
    pad_id: int,
) -> _Rows:
    """Prefill each row's suffix over its cached prefix; the rows with their first chosen token.

    Column layout of row r: [level 0][pad][its group's segment][pad][its suffix], so every row's last token sits in
    the same column. Padding is masked; position ids count real tokens only."""
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
    out = model(input_ids=input_ids, cache=DynamicCache(ddp_cache_data=kv), attention_mask=attention,
                position_ids=positions, use_cache=True, logits_to_keep=1)  # fmt: skip
    return _Rows(rows=[i for i, _ in batch], cache=out.cache, attention=attention, next_pos=positions[:, -1] + 1,
                 chosen=out.logits[:, -1].argmax(dim=-1).tolist())  # fmt: skip
