"""Memory levers of the training loop (laffi/training.py) on the tiny random model: same training, less memory."""

import json

import pytest

from laffi.config import TrainConfig
from laffi.feedback import reference
from laffi.training import _lora_in_base_dtype, build_examples, completion_loss_sum, tokenize_example, train


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    from laffi.models import load_tokenizer

    return load_tokenizer(str(tiny_model_dir))


def _rows(tokenizer, excerpt_questions, n=4):
    qs = excerpt_questions[:n]
    exs = build_examples("laffi", qs, [reference.annotate(q, "") for q in qs], tokenizer, shots=0, seed=0)
    return [tokenize_example(e, tokenizer, 256) for e in exs]


def _peft(tiny_model_dir, dtype):
    import torch
    from peft import get_peft_model

    from laffi.models import load_model
    from laffi.training import lora_config

    torch.manual_seed(0)
    model = get_peft_model(load_model(str(tiny_model_dir), dtype=dtype, trainable=True), lora_config(TrainConfig()))
    for name, p in model.named_parameters():  # a non-zero LoRA B, so the LoRA branch changes the output
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.05)
    model.train()
    return model


def _lora_grads(model, rows, pad_id, context):
    import torch

    torch.manual_seed(1)  # same dropout masks
    with context:
        loss = completion_loss_sum(model, rows, pad_id)
    loss.backward()
    grads = torch.cat([p.grad.flatten().float() for n, p in model.named_parameters() if "lora_" in n])
    model.zero_grad()
    return loss.item(), grads


def test_bf16_lora_branch_keeps_fp32_weights_and_matches_the_fp32_cast(tiny_model_dir, tokenizer, excerpt_questions):
    import contextlib

    import torch

    rows = _rows(tokenizer, excerpt_questions)
    model = _peft(tiny_model_dir, "bfloat16")
    loss_cast, grads_cast = _lora_grads(model, rows, tokenizer.pad_token_id, contextlib.nullcontext())
    context = _lora_in_base_dtype(model)
    assert isinstance(context, torch.autocast)
    lora_layers = [m for m in model.modules() if hasattr(m, "lora_A")]
    assert lora_layers and all(m.cast_input_dtype_enabled is False for m in lora_layers)
    assert {p.dtype for n, p in model.named_parameters() if "lora_" in n} == {torch.float32}
    loss_bf16, grads_bf16 = _lora_grads(model, rows, tokenizer.pad_token_id, context)
    assert loss_bf16 == pytest.approx(loss_cast, rel=1e-2)
    assert torch.nn.functional.cosine_similarity(grads_bf16, grads_cast, dim=0) > 0.99
    assert not torch.equal(grads_bf16, grads_cast)  # it did take the other path


def test_fp32_model_keeps_peft_casting(tiny_model_dir):
    import contextlib

    model = _peft(tiny_model_dir, "float32")
    assert isinstance(_lora_in_base_dtype(model), contextlib.nullcontext)
    assert all(getattr(m, "cast_input_dtype_enabled", True) for m in model.modules() if hasattr(m, "lora_A"))


def test_gradient_checkpointing_trains_the_same(tmp_path, tiny_model_dir, tokenizer, excerpt_questions):
    qs = excerpt_questions[:4]
    exs = build_examples("laffi", qs, [reference.annotate(q, "") for q in qs], tokenizer, shots=0, seed=0)
    losses = {}
    # (checkpointing, every n-th layer): off, every layer (the default), every second layer (train.checkpoint_every)
    for ckpt, every in ((False, 1), (True, 1), (True, 2)):
        cfg = TrainConfig(max_steps=3, batch_size=4, micro_batch_size=2, lora_r=4, learning_rate=1e-2,
                          gradient_checkpointing=ckpt, checkpoint_every=every)  # fmt: skip
        out = tmp_path / f"{ckpt}-{every}"
        train(str(tiny_model_dir), "float32", exs, cfg, out, progress=False)
        log = (out / "train_log.jsonl").read_text().splitlines()
        losses[ckpt, every] = [json.loads(line)["loss"] for line in log]
    assert losses[True, 1] == pytest.approx(losses[False, 1], rel=1e-5)
    assert losses[True, 2] == pytest.approx(losses[False, 1], rel=1e-5)
    assert losses[True, 1][0] != losses[True, 1][-1]
