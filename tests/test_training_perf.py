"""Memory levers of the training loop (laffi/training/loop.py) on the tiny random model: same training, less memory."""

import json

import pytest

from laffi.config import TrainConfig
from laffi.feedback import reference
from laffi.methods import build_examples
from laffi.training.examples import tokenize_example
from laffi.training.loop import _lora_in_base_dtype, train
from laffi.training.loss import completion_loss_sum


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
    from laffi.training.loop import lora_config

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
    # (checkpointing, every n-th layer, kept outputs, heap trimming): off; every layer with the default selective
    # keep; recompute all; every second layer (train.checkpoint_every); only attention kept, without trimming.
    variants = [(False, 1, "", True), (True, 1, "attention,down", True), (True, 1, "", True), (True, 2, "", True),
                (True, 1, "attention", False)]  # fmt: skip
    for ckpt, every, keep, trim in variants:
        cfg = TrainConfig(max_steps=3, batch_size=4, micro_batch_size=2, lora_r=4, learning_rate=1e-2,
                          gradient_checkpointing=ckpt, checkpoint_every=every, checkpoint_keep=keep,
                          trim_memory=trim)  # fmt: skip
        out = tmp_path / f"{ckpt}-{every}-{keep}-{trim}"
        train(str(tiny_model_dir), "float32", exs, cfg, out, progress=False)
        log = (out / "train_log.jsonl").read_text().splitlines()
        losses[ckpt, every, keep, trim] = [json.loads(line)["loss"] for line in log]
    plain = losses[variants[0]]
    for v in variants[1:]:
        assert losses[v] == pytest.approx(plain, rel=1e-5), v
    assert plain[0] != plain[-1]


@pytest.mark.parametrize("keep", ["", "attention", "down", "attention,down"])
def test_checkpoint_keep_replays_kept_outputs_instead_of_recomputing(tiny_model_dir, tokenizer, excerpt_questions,
                                                                     keep):  # fmt: skip
    """train.checkpoint_keep: the backward pass recomputes the layers' forward except the kept ops, which are replayed
    from the forward pass. Counted with a dispatch mode: attention kernels and down-projection matmuls run again in
    the backward pass only when not kept; the LoRA gradients are the same either way."""
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode

    from laffi.models import peft_quietly
    from laffi.training.loop import _enable_checkpointing, _keep_names, _keep_policy

    class Count(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.attention = self.down = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if "scaled_dot_product" in str(func) and "backward" not in str(func):  # forward kernels only
                self.attention += 1
            if func is torch.ops.aten.mm.default and args[0].shape[-1] > 32:  # tiny model: hidden 32
                self.down += 1
            return func(*args, **(kwargs or {}))

    rows = _rows(tokenizer, excerpt_questions)
    reference_grads = _lora_grads(_peft(tiny_model_dir, "float32"), rows, tokenizer.pad_token_id, _nothing())[1]
    model = _peft(tiny_model_dir, "float32")
    with peft_quietly():
        _enable_checkpointing(model, 1, _keep_policy(_keep_names(keep), model))
    torch.manual_seed(1)
    loss = completion_loss_sum(model, rows, tokenizer.pad_token_id)
    with Count() as backward:
        loss.backward()
    layers = model.get_base_model().config.num_hidden_layers
    assert backward.attention == (0 if "attention" in keep else layers)
    # Recomputing the down projection runs its base matmul and its LoRA A matmul (inner dimension 64 > 32).
    assert backward.down >= (0 if "down" in keep else 2 * layers)
    recomputed_down = backward.down
    grads = torch.cat([p.grad.flatten().float() for n, p in model.named_parameters() if "lora_" in n])
    assert torch.allclose(grads, reference_grads, rtol=1e-4, atol=1e-6)
    if "down" in keep:  # what remains are the backward pass's own matmuls (gradients through down), not recompute
        model.zero_grad()
        with peft_quietly():
            _enable_checkpointing(model, 1, None)
        torch.manual_seed(1)
        loss = completion_loss_sum(model, rows, tokenizer.pad_token_id)
        with Count() as everything:
            loss.backward()
        assert everything.down == recomputed_down + 2 * layers


def test_checkpoint_keep_names_are_checked():
    from laffi.errors import LaffiError
    from laffi.training.loop import _keep_names

    assert _keep_names(" attention , down ") == ["attention", "down"] and _keep_names("") == []
    with pytest.raises(LaffiError, match=r"^train.checkpoint_keep: unknown 'mlp' \(choose from attention, down\)$"):
        _keep_names("attention,mlp")


def _nothing():
    import contextlib

    return contextlib.nullcontext()
