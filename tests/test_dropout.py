"""laffi/training/dropout.py: LoRA dropout with masks from numpy's generator, seeded from torch's."""

import pytest
import torch

from laffi.training.dropout import FastDropout


def test_keeps_with_probability_one_minus_p_and_rescales():
    torch.manual_seed(0)
    x = torch.ones(400, 500)
    y = FastDropout(0.1).train()(x)
    kept = y != 0
    assert kept.float().mean().item() == pytest.approx(0.9, abs=0.005)  # 200k draws: sd of the share 0.0007
    assert torch.allclose(y[kept], torch.full_like(y[kept], 1 / 0.9))
    assert FastDropout(0.1).eval()(x) is x and FastDropout(0.0).train()(x) is x


def test_masks_follow_torch_rng_state():
    """What gradient checkpointing relies on: restoring torch's RNG state redraws the same mask."""
    x = torch.randn(64, 48)
    drop = FastDropout(0.3).train()
    state = torch.get_rng_state()
    first = drop(x)
    second = drop(x)
    torch.set_rng_state(state)
    again = drop(x)
    assert torch.equal(first, again) and not torch.equal(first, second)


def test_gradient_is_the_mask_scaled():
    torch.manual_seed(1)
    x = torch.randn(32, 16, requires_grad=True)
    y = FastDropout(0.5).train()(x)
    y.sum().backward()
    assert torch.equal(x.grad, (y != 0).float() * 2.0)


def test_checkpointing_recompute_redraws_the_forward_masks(tmp_path, tiny_model_dir, excerpt_questions):
    """Under gradient checkpointing the recompute must redraw the forward pass's masks: training with and without
    checkpointing gives the same losses; and the setting really replaces PEFT's dropout (other losses than it)."""
    import json

    from laffi.config import TrainConfig
    from laffi.feedback import reference
    from laffi.methods import build_examples
    from laffi.models import load_tokenizer
    from laffi.training.loop import train

    tok = load_tokenizer(str(tiny_model_dir))
    qs = excerpt_questions[:4]
    exs = build_examples("laffi", qs, [reference.annotate(q, "") for q in qs], tok, shots=0, seed=0)
    losses = {}
    for fast, ckpt in ((True, False), (True, True), (False, True)):
        cfg = TrainConfig(max_steps=3, batch_size=4, micro_batch_size=2, lora_r=4, learning_rate=1e-2, lora_dropout=0.3,
                          gradient_checkpointing=ckpt, fast_dropout=fast)  # fmt: skip
        out = tmp_path / f"{fast}-{ckpt}"
        train(str(tiny_model_dir), "float32", exs, cfg, out, progress=False)
        losses[fast, ckpt] = [json.loads(line)["loss"] for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert losses[True, True] == pytest.approx(losses[True, False], rel=1e-5)
    assert losses[True, True][1:] != pytest.approx(losses[False, True][1:], rel=1e-5)


def test_fast_dropout_is_part_of_the_cache_key():
    from laffi.config import TrainConfig, train_cache_settings

    on, off = TrainConfig(), TrainConfig(fast_dropout=False)
    assert train_cache_settings(on)["fast_dropout"] is True and train_cache_settings(off)["fast_dropout"] is False
    assert train_cache_settings(on) != train_cache_settings(off)  # other random numbers: another adapter
