"""The attention laffi's answering path (prefix_cache.py) runs: one shared prefix for all rows, plus each row's own
cached tokens, with plain matmuls and a float32 softmax.

Every prompt starts with the same instructions and shots (~250 tokens). Keeping one copy of their keys/values for
all rows, instead of one per row, halves what every decode step reads and what every batch change copies; their
scores come from one matrix product over all rows' queries, the rows' own tokens from a batched one. Scores of both
parts go through one softmax, so each row attends over its whole prompt exactly as if it were one cache.

Plain matmuls rather than `scaled_dot_product_attention`: for these shapes (a few new tokens per row over a few
hundred cached ones) PyTorch's CPU flash kernel ran at ~130 GFLOP/s and took ~30 % of answering time
(torch.profiler, bundled model, bf16); matmuls around a float32 softmax take about half as long. Grouped-query
attention folds each key/value head's query heads into its rows, so keys and values are never repeated.

`using(model)` switches a model to this attention (transformers' AttentionInterface) for a block; the rows' shared
keys/values reach it through the model's forward keyword `shared_kv` (a list with one (keys, values) pair per
layer, batch dimension 1), which transformers passes on to every attention call.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

NAME = "laffi_prefix"


def attention(
    module: Any,
    query: Any,
    key: Any,
    value: Any,
    attention_mask: Any,
    dropout: float = 0.0,
    scaling: float | None = None,
    shared_kv: list[tuple[Any, Any]] | None = None,
    **kwargs: Any,
) -> tuple[Any, None]:
    """transformers' attention-function interface. query (batch, heads, q, dim); key/value (batch, kv heads, k, dim)
    the rows' own tokens; `shared_kv[layer]` (1, kv heads, s, dim) tokens every row sees before its own; mask
    (batch, 1, q, s + k), True (or 0.0) where a query attends. Returns (batch, q, heads, dim)."""
    import torch

    if dropout:
        raise ValueError("prefix attention is for inference (dropout must be 0)")
    b, heads, q, dim = query.shape
    kv_heads = key.shape[1]
    rep = heads // kv_heads
    scale = scaling if scaling is not None else dim**-0.5
    shared = shared_kv[module.layer_idx] if shared_kv is not None else None
    if shared is not None and b == 1:
        # One row (a passage's prefill): its keys/values after a copy of the shared ones are one small copy, cheaper
        # than joining and splitting its ~2 MB of scores and weights.
        key, value = torch.cat([shared[0], key], dim=2), torch.cat([shared[1], value], dim=2)
        shared = None
    # Query heads j*rep .. j*rep+rep-1 share key/value head j (as transformers' repeat_kv lays them out).
    grouped = query.reshape(b, kv_heads, rep * q, dim)
    scores = torch.matmul(grouped, key.transpose(-1, -2))  # (batch, kv heads, rep*q, k)
    if shared is not None:
        # Every row's queries against the one copy of the shared keys: a single (kv heads) batch of matmuls.
        everyone = grouped.transpose(0, 1).reshape(kv_heads, b * rep * q, dim)
        first = torch.matmul(everyone, shared[0][0].transpose(-1, -2))
        first = first.view(kv_heads, b, rep * q, -1).transpose(0, 1)
        scores = torch.cat([first, scores], dim=-1)
    total = scores.shape[-1]
    # Float32, scaled, then masked by adding a -inf bias: the same values as masked_fill, 1.5-4x faster for these
    # shapes (a single mixed-dtype torch.add with the bias was up to 17x slower for a batch of questions).
    bias = _bias(attention_mask, q, total, query.device)
    scores = scores.view(b, kv_heads, rep, q, total).float().mul_(scale).add_(bias)
    probs = torch.softmax(scores, dim=-1).to(value.dtype).view(b, kv_heads, rep * q, total)
    if shared is None:
        out = torch.matmul(probs, value)
    else:
        s = shared[1].shape[2]
        everyone = probs[..., :s].transpose(0, 1).reshape(kv_heads, b * rep * q, s)
        out = torch.matmul(everyone, shared[1][0]).view(kv_heads, b, rep * q, dim).transpose(0, 1).float()
        out = out.add_(torch.matmul(probs[..., s:], value).float()).to(value.dtype)
    return out.reshape(b, heads, q, dim).transpose(1, 2).contiguous(), None


_cached = threading.local()  # per decoding thread: the last mask seen and its bias


def _bias(mask: Any, q: int, k: int, device: Any) -> Any:
    """(batch or 1, 1, 1, q, k) float32, 0 where a query attends and -inf elsewhere; no mask means causal (new tokens
    last). transformers passes every layer the same mask: its bias is made once per forward pass."""
    import torch

    if mask is not None and getattr(_cached, "mask", None) is mask:
        return _cached.bias
    if mask is None:
        allowed = torch.ones((q, k), dtype=torch.bool, device=device).tril_(k - q)
    else:
        allowed = mask if mask.dtype == torch.bool else mask == 0  # boolean, or additive float
        allowed = allowed[:, :, None] if allowed.dim() == 4 else allowed
    bias = torch.zeros(allowed.shape, device=allowed.device).masked_fill_(~allowed, float("-inf"))
    _cached.mask, _cached.bias = mask, bias
    return bias


def _register() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    def boolean_mask(*args: Any, **kwargs: Any) -> Any:
        kwargs["allow_is_causal_skip"] = False  # always a mask: `attention` takes no is_causal shortcut
        return sdpa_mask(*args, **kwargs)

    AttentionInterface.register(NAME, attention)
    AttentionMaskInterface.register(NAME, boolean_mask)


def supported(model: Any) -> bool:
    """Whether `model` can attend this way: a transformers model that selects its attention function by name
    (AttentionInterface), with the plain eager/SDPA kind (no soft-capping, no sliding windows)."""
    config = getattr(model, "config", None)
    if not hasattr(model, "set_attn_implementation") or config is None:
        return False
    if getattr(config, "_attn_implementation", None) not in ("sdpa", "eager", NAME):
        return False
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    if getattr(text, "attn_logit_softcapping", None) or getattr(text, "final_logit_softcapping", None):
        return False
    layer_types = getattr(text, "layer_types", None)
    if layer_types is not None:
        return all(t == "full_attention" for t in layer_types)
    return not getattr(text, "sliding_window", None)


@contextmanager
def using(model: Any) -> Iterator[None]:
    """Run `model` with this attention inside the block (check `supported(model)` first)."""
    current = model.config._attn_implementation
    _register()
    model.set_attn_implementation(NAME)
    try:
        yield
    finally:
        model.set_attn_implementation(current)
