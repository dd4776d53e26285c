"""engines/prefix_attention.py: the answering path's attention equals PyTorch's (float32), shared prefix or not."""

import pytest
import torch

from laffi.engines import prefix_attention


class Layer:
    layer_idx = 1


def reference(query, key, value, mask):
    """PyTorch's attention over the whole cache, key/value heads repeated for the query heads."""
    rep = query.shape[1] // key.shape[1]
    key, value = key.repeat_interleave(rep, dim=1), value.repeat_interleave(rep, dim=1)
    return torch.nn.functional.scaled_dot_product_attention(query, key, value, attn_mask=mask).transpose(1, 2)


@pytest.mark.parametrize("rows,new", [(3, 1), (3, 4), (1, 7)])
def test_attention_over_a_shared_prefix_equals_attention_over_the_whole_cache(rows, new):
    gen = torch.Generator().manual_seed(0)
    heads, kv_heads, dim, shared_len, own_len = 6, 2, 8, 5, 9
    query = torch.randn(rows, heads, new, dim, generator=gen)
    key, value = (torch.randn(rows, kv_heads, own_len, dim, generator=gen) for _ in range(2))
    shared = [None, tuple(torch.randn(1, kv_heads, shared_len, dim, generator=gen) for _ in range(2))]
    mask = torch.ones(rows, 1, new, shared_len + own_len, dtype=torch.bool).tril_(shared_len + own_len - new)
    mask[0, :, :, shared_len : shared_len + 2] = False  # padding in the first row's own part
    whole_key = torch.cat([shared[1][0].expand(rows, -1, -1, -1), key], dim=2)
    whole_value = torch.cat([shared[1][1].expand(rows, -1, -1, -1), value], dim=2)
    expected = reference(query, whole_key, whole_value, mask)
    out, _ = prefix_attention.attention(Layer(), query, key, value, mask, shared_kv=shared)
    assert out.shape == (rows, new, heads, dim)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)
    # Without a shared part, over the whole cache; an additive float mask means the same as the boolean one.
    out, _ = prefix_attention.attention(Layer(), query, whole_key, whole_value, mask)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)
    additive = torch.zeros(mask.shape).masked_fill_(~mask, torch.finfo(torch.float32).min)
    out, _ = prefix_attention.attention(Layer(), query, whole_key, whole_value, additive)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)


def test_no_mask_means_causal_with_the_new_tokens_last():
    gen = torch.Generator().manual_seed(1)
    query = torch.randn(2, 4, 3, 8, generator=gen)
    key, value = (torch.randn(2, 2, 7, 8, generator=gen) for _ in range(2))
    causal = torch.ones(3, 7, dtype=torch.bool).tril_(4)
    out, _ = prefix_attention.attention(Layer(), query, key, value, None)
    torch.testing.assert_close(out, reference(query, key, value, causal), rtol=1e-5, atol=1e-6)


def test_supported_models(tiny_model_dir):
    from laffi.models import load_model

    model = load_model(str(tiny_model_dir), dtype="float32")
    assert prefix_attention.supported(model)
    with prefix_attention.using(model):
        assert model.config._attn_implementation == prefix_attention.NAME
    assert model.config._attn_implementation == "sdpa"  # restored
    model.config.attn_logit_softcapping = 30.0
    assert not prefix_attention.supported(model)
    del model.config.attn_logit_softcapping
    model.config.layer_types = ["sliding_attention"] * model.config.num_hidden_layers
    assert not prefix_attention.supported(model)
    assert not prefix_attention.supported(object())
