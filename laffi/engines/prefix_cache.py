"""Greedy decoding that computes each shared prompt prefix once and reuses its key/value cache.

Prompts put the shared part first (prompts.py): instructions and shots are the same for every question, and
questions on the same passage share everything up to the question. On a CPU the prefill of that prefix dominates
the cost of answering, so instead of prefilling every prompt in full we:

1. tokenize every full prompt and take the longest common token prefix of all of them (level 0: system + shots);
2. group prompts whose token ids share a longer prefix (same passage) and prefill that segment once per group, on
   top of level 0 (level 1); a prompt alone on its passage has all but its last token as its segment;
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

from laffi.engines import prefix_attention
from laffi.engines.steering import Steering
from laffi.models import model_device

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
    A prompt alone in its group keeps its whole prompt but the last token as its segment: prefilled as one unpadded
    row, instead of as a ~200-token suffix padded next to other rows' ~20-token questions (every row of a batch is
    padded to its longest suffix).
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
    draft_tokens: int = 0,
    steering: Steering | None = None,
) -> list[list[int]] | None:
    """Greedy continuations of every prompt as token ids (ending with the stop token if one came, as `model.generate`
    returns them), or None when this model cannot attend this way (`prefix_attention.supported`; the caller then
    falls back to the plain path).

    Continuous batching: up to `batch_size` rows decode together; when half of them have stopped, queued prompts
    join (their suffixes prefilled over their cached prefixes, their caches appended to the batch). Answers are short
    and their lengths vary a lot (most stop within a few tokens, a few run to `max_new_tokens`), so a fixed batch
    would spend most decode steps on one or two long rows. `on_batch(indices, tokens)` reports rows as they stop.

    Level 0's keys/values are kept once and shared by every row (`prefix_attention`); each row's cache holds its
    passage segment, question and answer only, in a buffer with room for the answer (`_SlabLayer`).

    `workers` > 1: that many threads decode, each with its own batch and an equal share of torch's threads, taking
    passages from a shared pool as they need rows (`_Pool`). Decode steps are small, so one decoder leaves cores idle
    between and within its operators; on 2 cores, 2 workers of 1 thread answered ~1.2x faster than 1 worker of 2
    threads. Each decoder admits its queued questions shortest first (`_by_suffix_length`), to pad less.

    `draft_tokens` > 0: prompt-lookup speculation. Answers are mostly spans of the passage, so each decode step
    guesses a row's next tokens as those that followed the latest earlier occurrence of its last tokens in its prompt
    (`draft`), and checks up to `draft_tokens` guesses in the same forward pass: the guesses that match the model's
    own greedy choices are kept, with the model's choice after the last of them. Output is greedy decoding's
    (up to float rounding); a step costs about the same (decode steps are bound by reading the weights), and fewer
    steps are needed.

    `steering` (steering.py): span constraints applied to every choice (guesses included) and the no-answer score
    of each prompt's first answer token, from the logits of its suffix's prefill.

    transformers internals this path relies on are checked first (`missing_internals`): when one is gone (another
    transformers version), it warns once on stderr and returns None, so the caller falls back to the plain path."""
    level0, groups = plan(encoded)
    if level0 < 1:
        return None
    missing = missing_internals(model)
    if missing:
        _warn_once(f"laffi: warning: answering on the plain path (no prefix reuse: slower, same answers): {missing} "
                   "is missing in this transformers version")  # fmt: skip
        return None
    if not prefix_attention.supported(model):
        return None
    with prefix_attention.using(model):
        return _greedy_ids(model, encoded, level0, groups, max_new_tokens, batch_size, stops, pad_id, on_batch, workers,
                           draft_tokens, steering)  # fmt: skip


_warned: set[str] = set()


def _warn_once(line: str) -> None:
    import sys

    if line not in _warned:
        _warned.add(line)
        print(line, file=sys.stderr, flush=True)


def missing_internals(model: Any) -> str | None:
    """The first transformers internal this path uses that is not there (None when all are): DynamicLayer (subclassed
    by `_SlabLayer`, with the methods it overrides), DynamicCache's `layers`, AttentionInterface,
    AttentionMaskInterface and sdpa_mask (prefix_attention.py), and the model's `set_attn_implementation` and
    `config._attn_implementation`."""
    try:
        import transformers
        from transformers import cache_utils, masking_utils
    except ImportError as e:  # pragma: no cover - transformers is a dependency
        return str(e)
    checks = [
        ("transformers.cache_utils.DynamicLayer", lambda: cache_utils.DynamicLayer),
        ("DynamicLayer.update/get_seq_length/get_mask_sizes/batch_select_indices",
         lambda: [getattr(cache_utils.DynamicLayer, m) for m in ("update", "get_seq_length", "get_mask_sizes",
                                                                  "batch_select_indices")]),
        ("DynamicCache().layers", lambda: cache_utils.DynamicCache().layers),
        ("transformers.AttentionInterface", lambda: transformers.AttentionInterface.register),
        ("transformers.masking_utils.AttentionMaskInterface", lambda: masking_utils.AttentionMaskInterface.register),
        ("transformers.masking_utils.sdpa_mask", lambda: masking_utils.sdpa_mask),
        ("the model's set_attn_implementation", lambda: model.set_attn_implementation),
        ("the model's config._attn_implementation", lambda: model.config._attn_implementation),
    ]  # fmt: skip
    for name, get in checks:
        try:
            get()
        except (AttributeError, ImportError, TypeError):
            return name
    return None


def _greedy_ids(
    model: Any,
    encoded: list[list[int]],
    level0: int,
    groups: list[Group],
    max_new_tokens: int,
    batch_size: int,
    stops: list[int],
    pad_id: int,
    on_batch: Callable[[list[int], list[list[int]]], None] | None,
    workers: int,
    draft_tokens: int,
    steering: Steering | None = None,
) -> list[list[int]]:
    import threading

    import torch

    with torch.inference_mode():
        shared = _prefill(model, encoded[0][:level0], None)
    outputs: list[list[int]] = [[] for _ in encoded]
    lock = threading.Lock()

    def report(finished: list[int]) -> None:
        if on_batch is not None:
            with lock:  # callers write files and progress bars
                on_batch(finished, [outputs[i] for i in finished])

    threads = torch.get_num_threads()
    pool = _Pool(groups, encoded, max(1, min(workers, len(groups))))
    args = (model, encoded, shared, max_new_tokens, batch_size, set(stops), pad_id, outputs, report, draft_tokens,
            steering)  # fmt: skip
    if pool.workers == 1:
        _decode_groups(pool, *args)
        return outputs
    from concurrent.futures import ThreadPoolExecutor

    def work() -> None:
        torch.set_num_threads(max(1, threads // pool.workers))
        try:
            _decode_groups(pool, *args)
        except BaseException:
            pool.failed = True  # the other decoders stop at their next step
            raise

    try:
        with ThreadPoolExecutor(pool.workers) as executor:
            for future in [executor.submit(work) for _ in range(pool.workers)]:
                future.result()  # re-raises a worker's exception here
    finally:
        torch.set_num_threads(threads)
    return outputs


class _Pool:
    """The passages (groups) no decoder has taken yet, shared by the decoding threads.

    Decoders take passages as they need rows, so they finish closer together: with a fixed share of passages each
    (balanced by tokens to prefill), one of two decoders idled for ~0.8 s of ~8.5 s on 200 pool questions. The
    biggest passages go first, so the last ones taken are small. What is left is the tail of the last answers, a
    few rows decoding to their end (~0.3-0.7 s); giving that decoder the other's threads made it slower."""

    def __init__(self, groups: list[Group], encoded: list[list[int]], workers: int) -> None:
        import threading

        def cost(g: Group) -> int:  # tokens to prefill
            return g.prefix_len + sum(len(encoded[i]) - g.prefix_len for i in g.members)

        self.groups = sorted(groups, key=cost, reverse=True)
        self.workers = workers
        self.failed = False  # a decoder raised: the others stop
        self.lock = threading.Lock()

    def take(self, prompts: int) -> list[Group]:
        """Whole passages, from the next ones, until they hold this many prompts, or fewer as the pool runs low: with
        several decoders, at most a 1/(2 x decoders) share of the prompts left, so that none is left with a long
        queue at the end."""
        taken: list[Group] = []
        with self.lock:
            if self.workers > 1:
                left = sum(len(g.members) for g in self.groups)
                prompts = min(prompts, -(-left // (2 * self.workers)))
            while self.groups and sum(len(g.members) for g in taken) < prompts:
                taken.append(self.groups.pop(0))
        return taken


def _decode_groups(
    pool: _Pool,
    model: Any,
    encoded: list[list[int]],
    shared: list[tuple[Any, Any]],
    max_new_tokens: int,
    batch_size: int,
    stops: set[int],
    pad_id: int,
    outputs: list[list[int]],
    report: Callable[[list[int]], None],
    draft_tokens: int,
    steering: Steering | None = None,
) -> None:
    """The continuous-batching loop over the pool's prompts (see `greedy_ids`); writes into `outputs`."""
    import torch

    level0 = shared[0][0].shape[2]
    queue: list[tuple[int, Group]] = []
    segments: dict[int, list[tuple[Any, Any]]] = {}
    unadmitted: dict[int, int] = {}
    live: _Rows | None = None
    with torch.inference_mode():  # per thread
        while not pool.failed:
            if len(queue) < batch_size:  # a few passages more
                taken = pool.take(4 * batch_size)
                unadmitted.update((id(g), len(g.members)) for g in taken)
                queue = _by_suffix_length(queue + [(i, g) for g in taken for i in g.members], encoded)
            if not queue and live is None:
                return
            room = batch_size - (live.n if live else 0)
            if queue and room >= batch_size - batch_size // 2:
                admit, queue = queue[:room], queue[room:]
                for _, g in admit:
                    if id(g) not in segments:
                        ids = encoded[g.members[0]][level0 : g.prefix_len]
                        segments[id(g)] = _prefill(model, ids, shared) if ids else []
                new = _start_rows(model, encoded, admit, shared, segments, pad_id, max_new_tokens, steering)
                for _, g in admit:
                    unadmitted[id(g)] -= 1
                    if unadmitted[id(g)] == 0:
                        del segments[id(g)]  # every question on this passage holds its own copy now
                finished = new.record(outputs, stops, max_new_tokens)  # their first tokens
                live = new if live is None else live.join(new, max_new_tokens)
            else:
                assert live is not None
                guesses = [draft(encoded[i], outputs[i], min(draft_tokens, max_new_tokens - len(outputs[i]) - 1))
                           for i in live.rows]  # fmt: skip
                if steering is not None and steering.constrained:
                    live.step(model, guesses, max_new_tokens, steering, outputs)
                else:
                    live.step(model, guesses, max_new_tokens)
                finished = live.record(outputs, stops, max_new_tokens)
            if finished:
                report(finished)
                gone = set(finished)
                live = live.keep([r for r, i in enumerate(live.rows) if i not in gone])


def _by_suffix_length(queue: list[tuple[int, Group]], encoded: list[list[int]]) -> list[tuple[int, Group]]:
    """Queued prompts, shortest suffix (question) first.

    Rows admitted together are padded to their longest suffix. In passage order that padding was 28 % of the
    question tokens prefilled on 200 pool questions; sorted, a few passages at a time (a decoder's queue), ~9 %, and
    answering took ~7 % less time. Only the queued passages' segments are kept meanwhile."""
    return sorted(queue, key=lambda item: len(encoded[item[0]]) - item[1].prefix_len)


def draft(prompt: list[int], output: list[int], k: int, longest: int = 3) -> list[int]:
    """Up to k guessed next tokens: what followed the latest earlier occurrence of the sequence's last n tokens
    (n = `longest` down to 1) in prompt + output so far; none if k < 1 or nothing matches."""
    if k < 1 or not output:
        return []
    seq = prompt + output
    for n in range(min(longest, len(seq) - 1), 0, -1):
        tail = seq[-n:]
        for start in range(len(seq) - n - 1, -1, -1):
            if seq[start : start + n] == tail:
                return seq[start + n : start + n + k]
    return []


def _prefill(model: Any, ids: list[int], shared: list[tuple[Any, Any]] | None) -> list[tuple[Any, Any]]:
    """Key/values (per layer, one row) of `ids` following the `shared` tokens (or starting the prompt)."""
    import torch

    offset = shared[0][0].shape[2] if shared else 0
    cache = _slab_cache([(None, None)] * model.config.get_text_config().num_hidden_layers, 0, offset)
    device = model_device(model)
    input_ids = torch.tensor([ids], device=device)
    positions = torch.arange(offset, offset + len(ids), device=device)[None]
    attention = torch.ones((1, offset + len(ids)), dtype=torch.long, device=device)
    out = model(input_ids=input_ids, cache=cache, attention_mask=attention, position_ids=positions,
                use_cache=True, logits_to_keep=1, shared_kv=shared)  # fmt: skip
    return [(layer.keys, layer.values) for layer in out.cache.layers]


def _slab_layer_class() -> type:
    """`_SlabLayer`, defined on first use so that importing this module does not import transformers."""
    global _SlabLayer
    if _SlabLayer is None:
        from transformers.cache_utils import DynamicLayer

        class SlabLayer(DynamicLayer):
            """A cache layer of fixed width after `shared` tokens kept elsewhere (prefix_attention): (rows, heads,
            width, dim) buffers whose first `filled` columns hold tokens; the rest is room for the tokens still to
            come, written in place. Without buffers (None), the first update's tokens become them.

            transformers' `DynamicLayer` concatenates on every update, copying every row's whole cache each decode
            step (`aten::cat` was ~40 % of answering time in torch.profiler). Attention sees the whole buffer,
            unfilled columns masked by the caller's attention mask (as wide as shared + buffer), so keys and values
            stay one contiguous block: CPU batched matmuls over a view of part of a buffer were several times slower
            than over a contiguous one."""

            def __init__(self, keys: Any, values: Any, filled: int, shared: int) -> None:
                super().__init__()
                self.is_initialized = True
                self.keys, self.values, self.filled, self.shared = keys, values, filled, shared

            def update(self, key_states: Any, value_states: Any, *args: Any, **kwargs: Any) -> tuple[Any, Any]:
                if self.keys is None:
                    self.keys, self.values = key_states, value_states
                    self.filled = key_states.shape[2]
                    return self.keys, self.values
                end = self.filled + key_states.shape[2]
                if end > self.keys.shape[2]:
                    raise RuntimeError(f"answering cache out of room ({end} > {self.keys.shape[2]} columns)")
                self.keys[:, :, self.filled : end] = key_states
                self.values[:, :, self.filled : end] = value_states
                self.filled = end
                return self.keys, self.values

            def get_seq_length(self) -> int:
                return self.shared + self.filled

            def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
                width = self.keys.shape[2] if self.keys is not None else query_length
                return self.shared + width, 0  # (kv length, offset): the mask covers shared + the whole buffer

            def batch_select_indices(self, indices: Any) -> None:
                self.keys, self.values = self.keys[indices], self.values[indices]

        _SlabLayer = SlabLayer
    return _SlabLayer


_SlabLayer: type | None = None


def _slab_cache(slabs: list[tuple[Any, Any]], filled: int, shared: int) -> Any:
    """A cache over per-layer (keys, values) buffers whose first `filled` columns hold the tokens after `shared`."""
    from transformers.cache_utils import DynamicCache

    cache = DynamicCache()
    cache.layers = [_slab_layer_class()(k, v, filled, shared) for k, v in slabs]
    return cache


@dataclass
class _Rows:
    """The rows decoding together: prompt indices, their own key/value cache (one row each, fixed width, after the
    `shared` tokens), the 2-D attention mask over shared + cache columns, the position id of each row's next token,
    and each row's last chosen token (its next input). The mask is 0 on unfilled columns until a step fills one."""

    rows: list[int]
    cache: Any
    attention: Any
    next_pos: Any
    chosen: list[int]
    shared: list[tuple[Any, Any]]
    accepted: list[list[int]] | None = None  # guessed tokens each row kept in the last step (before `chosen`)

    @property
    def n(self) -> int:
        return len(self.rows)

    def step(self, model: Any, guesses: list[list[int]], max_new_tokens: int, steering: Steering | None = None,
             outputs: list[list[int]] | None = None) -> None:
        """One greedy decode step of every row, checking each row's guessed next tokens (`draft`) on the way. Under
        a span constraint (`steering`), each choice is among the tokens allowed after the row's `outputs` so far
        and the guesses before it."""
        import torch

        q = 1 + max(len(g) for g in guesses)
        self._make_room(q, max_new_tokens)
        start = self.cache.get_seq_length()  # the column this step's first token is written to
        device = self.attention.device
        # Built as lists and made a tensor once, on the model's device: one copy, not one per row.
        rows = [[token, *g] + [self.chosen[0]] * (q - 1 - len(g))
                for token, g in zip(self.chosen, guesses, strict=True)]  # fmt: skip
        input_ids = torch.tensor(rows, dtype=torch.long, device=device)
        for r, g in enumerate(guesses):
            self.attention[r, start : start + 1 + len(g)] = 1  # the rest of the row's q columns stay masked
        positions = self.next_pos[:, None] + torch.arange(q, device=device)
        out = model(input_ids=input_ids, cache=self.cache, attention_mask=self.attention, position_ids=positions,
                    use_cache=True, logits_to_keep=q, shared_kv=self.shared)  # fmt: skip
        best = out.logits.argmax(dim=-1).tolist()  # (rows, q): the greedy choice after each input token
        if steering is not None and steering.constrained and outputs is not None:
            for r, (i, g) in enumerate(zip(self.rows, guesses, strict=True)):
                best[r][: 1 + len(g)] = [steering.pick(i, outputs[i] + g[:j], out.logits[r, j])
                                         for j in range(1 + len(g))]  # fmt: skip
        self.accepted, chosen = [], []
        for r, g in enumerate(guesses):
            kept = 0
            while kept < len(g) and g[kept] == best[r][kept]:
                kept += 1
            self.accepted.append(g[:kept])
            chosen.append(best[r][kept])
            self.attention[r, start + 1 + kept : start + q] = 0  # guesses after the first wrong one are not tokens
        self.next_pos = self.next_pos + 1 + torch.tensor([len(a) for a in self.accepted], device=device)
        self.chosen = chosen

    def _make_room(self, q: int, max_new_tokens: int) -> None:
        """Widen every layer's buffer (and the mask) when fewer than q columns are free: rejected guesses use up
        columns that a plain step would not."""
        import torch

        layers = self.cache.layers
        free = layers[0].keys.shape[2] - layers[0].filled
        if free >= q:
            return
        extra = (0, 0, 0, max(q, max_new_tokens))
        for layer in layers:
            layer.keys = torch.nn.functional.pad(layer.keys, extra)
            layer.values = torch.nn.functional.pad(layer.values, extra)
        self.attention = torch.nn.functional.pad(self.attention, (0, extra[-1]))

    def record(self, outputs: list[list[int]], stops: set[int], max_new_tokens: int) -> list[int]:
        """Append each row's new tokens (kept guesses, then its chosen token) to its output, up to and including a
        stop token or the `max_new_tokens`-th token; returns the prompt indices that have stopped."""
        finished = []
        accepted = self.accepted or [[] for _ in self.rows]
        for i, kept, token in zip(self.rows, accepted, self.chosen, strict=True):
            for t in [*kept, token]:
                outputs[i].append(t)
                if t in stops or len(outputs[i]) >= max_new_tokens:
                    finished.append(i)
                    break
        return finished

    def keep(self, rows: list[int]) -> _Rows | None:
        """These rows only (positions in this batch), or None when none is left."""
        import torch

        if not rows:
            return None
        if len(rows) < self.n:
            index = torch.tensor(rows, device=self.attention.device)
            self.cache.batch_select_indices(index)
            self.attention, self.next_pos = self.attention[index], self.next_pos[index]
            self.rows, self.chosen = [self.rows[r] for r in rows], [self.chosen[r] for r in rows]
            if self.accepted is not None:
                self.accepted = [self.accepted[r] for r in rows]
        return self

    def join(self, other: _Rows, room: int) -> _Rows:
        """Both batches' rows in one cache with `room` free columns: the filled columns of the one with fewer are
        padded with masked columns on the left (every token keeps its position id, so where its column is does not
        matter)."""
        import torch

        s = self.shared[0][0].shape[2]
        filled = [self.cache.layers[0].filled, other.cache.layers[0].filled]
        width = max(filled)
        parts = ((slice(0, self.n), self, filled[0]), (slice(self.n, None), other, filled[1]))
        attention = torch.zeros((self.n + other.n, s + width + room), dtype=torch.long, device=self.attention.device)
        attention[:, :s] = 1
        for rows, part, n in parts:
            attention[rows, s + width - n : s + width] = part.attention[:, s : s + n]
        slabs = []
        for a, b in zip(self.cache.layers, other.cache.layers, strict=True):
            shape = (self.n + other.n, a.keys.shape[1], width + room, a.keys.shape[3])
            keys, values = a.keys.new_zeros(shape), a.values.new_zeros(shape)  # see _start_rows
            for (rows, _, n), layer in zip(parts, (a, b), strict=True):
                keys[rows, :, width - n : width] = layer.keys[:, :, :n]
                values[rows, :, width - n : width] = layer.values[:, :, :n]
            slabs.append((keys, values))
        return _Rows(rows=self.rows + other.rows, cache=_slab_cache(slabs, width, s), attention=attention,
                     next_pos=torch.cat([self.next_pos, other.next_pos]), chosen=self.chosen + other.chosen,
                     shared=self.shared)  # fmt: skip


def _start_rows(
    model: Any,
    encoded: list[list[int]],
    batch: list[tuple[int, Group]],
    shared: list[tuple[Any, Any]],
    segments: dict[int, list[tuple[Any, Any]]],
    pad_id: int,
    room: int,
    steering: Steering | None = None,
) -> _Rows:
    """Prefill each row's suffix over its cached prefix; the rows with their first chosen token. Their caches have
    `room` free columns after the suffix (for the answer's tokens).

    Column layout of row r: [level 0 (shared)][pad][its group's segment][pad][its suffix][room], so every row's last
    token sits in the same column. Padding and room are masked; position ids count real tokens only."""
    import torch

    level0 = shared[0][0].shape[2]
    n = len(batch)
    seg_lens = [g.prefix_len - level0 for _, g in batch]
    suffixes = [encoded[i][g.prefix_len :] for i, g in batch]
    seg_w, suf_w = max(seg_lens), max(len(s) for s in suffixes)
    device = shared[0][0].device
    attention = torch.zeros((n, level0 + seg_w + suf_w + room), dtype=torch.long, device=device)
    attention[:, :level0] = 1
    # Left-padded rows built as lists and made tensors once, on the model's device.
    ids_rows = [[pad_id] * (suf_w - len(s)) + s for s in suffixes]
    pos_rows = [[0] * (suf_w - len(s)) + list(range(g.prefix_len, g.prefix_len + len(s)))
                for (_, g), s in zip(batch, suffixes, strict=True)]  # fmt: skip
    input_ids = torch.tensor(ids_rows, dtype=torch.long, device=device)
    positions = torch.tensor(pos_rows, dtype=torch.long, device=device)
    for r, s in enumerate(suffixes):
        attention[r, level0 + seg_w - seg_lens[r] : level0 + seg_w] = 1
        attention[r, level0 + seg_w + suf_w - len(s) : level0 + seg_w + suf_w] = 1
    slabs = []
    for layer, (k0, v0) in enumerate(shared):
        shape = (n, k0.shape[1], seg_w + suf_w + room, k0.shape[3])
        # Unfilled columns are masked, but must hold finite numbers: a masked column's score still gets its -inf
        # added (prefix_attention) and its value still multiplies its zero weight.
        keys, values = k0.new_zeros(shape), v0.new_zeros(shape)
        for r, (_, g) in enumerate(batch):
            if seg_lens[r]:
                ks, vs = segments[id(g)][layer]
                keys[r, :, seg_w - seg_lens[r] : seg_w] = ks[0]
                values[r, :, seg_w - seg_lens[r] : seg_w] = vs[0]
        slabs.append((keys, values))
    out = model(input_ids=input_ids, cache=_slab_cache(slabs, seg_w, level0), attention_mask=attention,
                position_ids=positions, use_cache=True, logits_to_keep=1, shared_kv=shared)  # fmt: skip
    last = out.logits[:, -1]
    if steering is None:
        chosen = last.argmax(dim=-1).tolist()
    else:  # the first answer token: constrained, and its no-answer score recorded
        chosen = [steering.first(i, last[r]) for r, (i, _) in enumerate(batch)]
    return _Rows(rows=[i for i, _ in batch], cache=out.cache, attention=attention, next_pos=positions[:, -1] + 1,
                 chosen=chosen, shared=shared)  # fmt: skip
