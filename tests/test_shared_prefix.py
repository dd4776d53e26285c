"""Shared-prefix training (laffi/training/packing.py, `train.shared_prefix`) on the tiny random model: packed rows give
every example the loss and LoRA gradient it has alone in its row, in float32, with SDPA and with eager attention."""

import json
from collections import Counter

import pytest

from laffi.config import TrainConfig, train_cache_settings
from laffi.feedback import reference
from laffi.methods import build_examples
from laffi.training.examples import Example, tokenize_example
from laffi.training.loop import lora_config, step_schedule, train
from laffi.training.loss import completion_loss_sum
from laffi.training.packing import (
    allowed,
    attention_tokens,
    group_keys,
    group_order,
    pack,
    pack_step,
    packed_loss,
    packed_tensors,
    packed_width,
)


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    from laffi.models import load_tokenizer

    return load_tokenizer(str(tiny_model_dir))


def _passages(excerpt_questions):
    """4 questions on one passage, 3 on a second, and 1 alone on a third."""
    by_context: dict[str, list] = {}
    for q in excerpt_questions:
        by_context.setdefault(q.context, []).append(q)
    dense = [qs for qs in by_context.values() if len(qs) >= 4]
    return dense[0][:4] + dense[1][:3] + dense[2][:1]


def _examples(method, tokenizer, questions):
    feedback = [reference.annotate(q, "") for q in questions]
    return build_examples(method, questions, feedback, tokenizer, shots=2, seed=0)


def _row(ids, loss_from):
    return {"input_ids": ids, "completion_mask": [int(t >= loss_from) for t in range(len(ids))]}


# ------------------------------------------------------------------------------------------------ layout


def test_pack_lays_out_a_prefix_tree_with_each_token_on_its_own_path():
    rows = [_row([1, 2, 3, 4, 5], 3), _row([1, 2, 3, 6], 3), _row([1, 2, 7, 8, 9], 2), _row([9, 9], 1)]
    p = pack(rows, [2, 1, 0])
    # sorted sequences: [1 2 3 4 5], [1 2 3 6], [1 2 7 8 9]: 1 2 3 once, 1 2 once more
    assert p.input_ids == [1, 2, 3, 4, 5, 6, 7, 8, 9]
    assert p.positions == [0, 1, 2, 3, 4, 3, 2, 3, 4]
    assert p.parents == [-1, 0, 1, 2, 3, 2, 1, 6, 7]
    assert packed_width(rows, [0, 1, 2]) == 9
    # each target token is predicted from the position before it on its own path
    triples = [(0, 2, 4), (0, 3, 5), (1, 2, 6), (2, 1, 7), (2, 6, 8), (2, 7, 9)]  # (example, position, target)
    assert list(zip(p.owners, p.predict, p.targets, strict=True)) == triples
    mask = allowed(p, 10)
    assert [list(map(int, mask[t].nonzero()[0])) for t in (5, 8, 9)] == [[0, 1, 2, 5], [0, 1, 6, 7, 8], [9]]
    # an identical sequence adds no token: its targets are read from the same positions
    twice = pack([rows[0], rows[0]], [0, 1])
    assert twice.input_ids == [1, 2, 3, 4, 5] and twice.predict == [2, 3, 2, 3] and twice.owners == [0, 0, 1, 1]


def test_pack_step_bounds_rows_and_micro_batches_by_tokens():
    prefix = list(range(100, 140))  # 40 shared tokens
    rows = [_row(prefix + [i, i], 40) for i in range(6)] + [_row([7] * 50, 10), _row([8] * 90, 10)]
    keys = ["a"] * 6 + ["b", "c"]
    plan = pack_step(rows, keys, list(range(8)), budget=100)
    packed = [members for mb in plan for members in mb]
    assert sorted(i for members in packed for i in members) == list(range(8))
    # group a: 40 + 2 per example; within 100 tokens a row holds 30 examples' worth, so all six share one row
    assert [0, 1, 2, 3, 4, 5] in packed
    for mb in plan:
        widths = [packed_width(rows, members) for members in mb]
        assert len(mb) == 1 or len(mb) * max(widths) <= 100
    # a tight budget cuts the group into rows, each with its own copy of the prefix
    tight = pack_step(rows, keys, list(range(6)), budget=46)
    assert [[members for members in mb] for mb in tight] == [[[0, 1, 2]], [[3, 4, 5]]]
    # a sequence longer than the budget is a row and a micro-batch of its own
    assert pack_step(rows, keys, [6, 7], budget=60) == [[[6]], [[7]]]
    # weighing attention: groups share a row where the shared tokens pay for the wider attention
    other = [_row(prefix[:4] + [9] * 37 + [i], 40) for i in range(2)]  # another group sharing 4 tokens with a
    assert pack_step(rows + other, keys + ["z", "z"], [0, 1, 8, 9], 4096, attention=1e6) == [[[0, 1, 8, 9]]]
    assert pack_step(rows + other, keys + ["z", "z"], [0, 1, 8, 9], 4096, attention=10) == [[[8, 9], [0, 1]]]
    assert attention_tokens(_SmolConfig()) == pytest.approx(3072.0)


def test_a_step_that_shares_nothing_is_cut_as_without_shared_prefixes():
    """Sparse data: every example on a passage of its own. Each step's plan is the old loop's micro-batches of
    `micro_batch_size` examples (sorted by length), one example per row, whatever the token budget and attention."""
    lengths = [30, 12, 50, 12, 41, 7, 30, 64, 19, 25, 12, 33, 8]
    rows = [_row([1000 + i] + [i] * (n - 1), 3) for i, n in enumerate(lengths)]  # no two share a first token
    keys = [("sft", f"p{i}") for i in range(len(rows))]
    cfg = TrainConfig(epochs=2, batch_size=6, micro_batch_size=2, seed=5)
    schedule = step_schedule(rows, cfg, keys)
    assert schedule == step_schedule(rows, cfg)  # groups of one: the same order as questions shuffled
    assert any(len(mb) == 2 and len(rows[mb[0]]["input_ids"]) != len(rows[mb[1]]["input_ids"])
               for step in schedule for mb in step)  # fmt: skip
    for step in schedule:
        old = [[[i] for i in mb] for mb in step]
        flat = [i for mb in step for i in mb]
        for budget, attention in ((2048, 3072.0), (2048, 0.0), (60, 1e9)):
            assert pack_step(rows, keys, flat, budget, attention, micro_batch_size=2) == old
    # with a group that shares a prefix: it is packed, the rest keep micro-batches of 2 examples, singles first
    shared = rows + [_row([7, 7, 7, 7] + [i], 4) for i in range(3)]
    keys2 = keys + [("sft", "q")] * 3
    plan = pack_step(shared, keys2, [5, 1, 13, 3, 14, 0, 15], 2048, 3072.0, micro_batch_size=2)
    assert plan == [[[5], [1]], [[3], [0]], [[13, 14, 15]]]
    # micro_batch_size 0: single rows are cut by tokens, as packed rows are
    assert pack_step(shared, keys2, [5, 1, 13, 3, 14, 0, 15], 2048, 3072.0) == [[[5], [1], [3], [0]], [[13, 14, 15]]]


class _SmolConfig:  # SmolLM2-135M's shapes
    hidden_size, num_attention_heads, num_key_value_heads, intermediate_size, head_dim = 576, 9, 3, 1536, 64


def test_methods_group_examples_by_passage(tokenizer, excerpt_questions):
    qs = _passages(excerpt_questions)
    for method in ("sft", "laffi", "laffi+sft", "coh"):
        examples = _examples(method, tokenizer, qs)
        assert all(ex.group == next(q.context for q in qs if q.id == ex.id) for ex in examples), method
    keys = group_keys(_examples("laffi+sft", tokenizer, qs))
    assert len(set(keys)) == 2 * 3  # sft and laffi examples of one passage are separate groups (other prompts)
    assert group_keys([Example("sft", "x", "p", "c"), Example("sft", "y", "p", "c")]) == [("sft", "", 0),
                                                                                            ("sft", "", 1)]


def test_group_order_is_seeded_and_keeps_each_group_together():
    keys = ["a"] * 5 + ["b"] * 3 + ["c"] + ["d"] * 4
    order = group_order(keys, seed=7)
    assert sorted(order) == list(range(len(keys))) and order == group_order(keys, seed=7)
    runs = [keys[i] for n, i in enumerate(order) if n == 0 or keys[order[n - 1]] != keys[i]]
    assert sorted(runs) == ["a", "b", "c", "d"]  # each group appears as one run
    orders = {tuple(group_order(keys, seed=s)) for s in range(10)}
    assert len(orders) == 10
    # the schedule: one such order per epoch (seed * 1000 + epoch), steps cut from it
    rows = [_row([0] * 5, 1)] * len(keys)
    cfg = TrainConfig(epochs=2, batch_size=4, micro_batch_size=2, seed=3)
    steps = step_schedule(rows, cfg, keys)
    flat = [i for step in steps for mb in step for i in mb]
    assert sorted(flat[:13]) == list(range(13)) and set(flat[:13]) == set(group_order(keys, 3000))
    assert [set(i for mb in step for i in mb) for step in steps[:4]] == [set(group_order(keys, 3000)[b : b + 4])
                                                                          for b in (0, 4, 8, 12)]  # fmt: skip
    assert flat[13:] != flat[:13] and steps == step_schedule(rows, cfg, keys)


# ------------------------------------------------------------------------------------------------ exactness


def _model(tiny_model_dir, attention):
    import torch
    from peft import get_peft_model

    from laffi.models import load_model

    torch.manual_seed(0)
    model = get_peft_model(load_model(str(tiny_model_dir), dtype="float32", trainable=True),
                           lora_config(TrainConfig(lora_r=4, lora_dropout=0.0)))  # fmt: skip
    for name, p in model.named_parameters():  # a non-zero LoRA B, so the LoRA branch changes the output
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.05)
    model.get_base_model().set_attn_implementation(attention)
    model.train()
    return model


def _lora_grad(model):
    import torch

    grad = torch.cat([p.grad.flatten().clone() for n, p in model.named_parameters() if "lora_" in n])
    model.zero_grad()
    return grad


# (max_length, micro_batch_tokens, attention_tokens): 0 keeps each row to one passage
LAYOUTS = {"row-per-passage": (1024, 4096, 0), "rows-cut-by-tokens": (1024, 700, 0),
           "prompts-cut-by-max-length": (200, 4096, 0), "rows-across-passages": (1024, 4096, 1e9)}  # fmt: skip


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
@pytest.mark.parametrize("method", ["sft", "laffi"])
@pytest.mark.parametrize("layout", LAYOUTS)
def test_packed_losses_and_gradients_equal_one_example_per_row(tiny_model_dir, tokenizer, excerpt_questions,
                                                                method, attention, layout):  # fmt: skip
    """The QA prompt (sft) and the feedback prompt (laffi): 4 + 3 questions on two passages and one alone on a third,
    rows of different lengths; every micro-batch of the packed plan against each example alone in its row."""
    import torch

    max_length, budget, across = LAYOUTS[layout]
    examples = _examples(method, tokenizer, _passages(excerpt_questions))
    rows = [tokenize_example(ex, tokenizer, max_length) for ex in examples]
    assert len({len(r["input_ids"]) for r in rows}) > 1 or max_length < 1024
    model = _model(tiny_model_dir, attention)
    pad = tokenizer.pad_token_id
    alone = []
    for row in rows:
        loss = completion_loss_sum(model, [row], pad)
        loss.backward()
        alone.append(loss.item())
    grad_alone = _lora_grad(model)

    plan = pack_step(rows, group_keys(examples), list(range(len(rows))), budget, across)
    packed_losses: Counter = Counter()
    for mb in plan:
        packed = [pack(rows, members) for members in mb]
        per_token = packed_loss(model, packed, pad, per_token=True)
        per_token.sum().backward()
        for owner, value in zip([o for p in packed for o in p.owners], per_token.tolist(), strict=True):
            packed_losses[owner] += value
    grad_packed = _lora_grad(model)

    assert [packed_losses[i] for i in range(len(rows))] == pytest.approx(alone, rel=1e-5)
    assert (grad_packed - grad_alone).abs().max() <= 1e-5 * grad_alone.abs().max()
    assert torch.count_nonzero(grad_alone) > 0
    widths = [packed_width(rows, members) for mb in plan for members in mb]
    rows_held = [members for mb in plan for members in mb]
    if across:  # the cost of attention neglected: one row of all three passages, sharing system and shots too
        assert len(rows_held) == 1 and sum(widths) < packed_width(rows, range(7)) + packed_width(rows, [7])
    else:
        assert [i for members in rows_held if len(members) == 1 for i in members]  # someone alone in a row
    if max_length == 1024:  # the passage is computed once per row: fewer tokens than one example per row
        assert sum(widths) < 0.6 * sum(len(r["input_ids"]) for r in rows)
    else:  # each sequence is cut as it is unpacked, before packing: no path is longer than max_length
        assert all(max(pack(rows, members).positions) < max_length for members in rows_held)
    if budget < 4096:
        assert len(plan) > 1 and all(len(mb) == 1 or len(mb) * max(packed_width(rows, m) for m in mb) <= budget
                                     for mb in plan)  # fmt: skip


def test_padding_rows_of_a_micro_batch_changes_nothing(tiny_model_dir, tokenizer, excerpt_questions):
    """Rows of different widths in one micro-batch (right-padded, padding attends only to itself) against each row
    in a micro-batch of its own."""
    import torch

    examples = _examples("sft", tokenizer, _passages(excerpt_questions))
    rows = [tokenize_example(ex, tokenizer, 1024) for ex in examples]
    plan = pack_step(rows, group_keys(examples), list(range(len(rows))), 4096)
    assert [len(mb) for mb in plan] == [1, 2]  # the example alone on its passage: a micro-batch of single rows
    packed = [pack(rows, members) for mb in plan for members in mb]
    assert len({len(p.input_ids) for p in packed}) == 3
    model = _model(tiny_model_dir, "sdpa")
    together = packed_loss(model, packed, tokenizer.pad_token_id, per_token=True)
    apart = torch.cat([packed_loss(model, [p], tokenizer.pad_token_id, per_token=True) for p in packed])
    torch.testing.assert_close(together, apart, rtol=1e-5, atol=1e-6)
    ids, mask, positions, predict, targets = packed_tensors(packed, tokenizer.pad_token_id, torch.float32)
    assert mask.shape == (3, 1, ids.shape[1], ids.shape[1]) and mask.dtype == torch.float32
    assert set(mask.unique().tolist()) == {0.0, torch.finfo(torch.float32).min}


# ------------------------------------------------------------------------------------------------ the loop


def _log(out):
    return [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]


def test_packed_training_is_independent_of_how_rows_are_cut(tmp_path, tiny_model_dir, tokenizer, excerpt_questions):
    """Same data order (passage groups), rows of whole passages vs one example per row and micro-batch: the same
    per-step losses (each step's loss is summed over its examples and divided by its completion tokens)."""
    from safetensors.torch import load_file

    examples = _examples("laffi+sft", tokenizer, _passages(excerpt_questions))
    logs, info = {}, {}
    for budget in (4096, 16):
        cfg = TrainConfig(max_steps=4, batch_size=4, micro_batch_size=2, lora_r=4, learning_rate=1e-2,
                          lora_dropout=0.0, micro_batch_tokens=budget)  # fmt: skip
        info[budget] = train(str(tiny_model_dir), "float32", examples, cfg, tmp_path / str(budget), progress=False)
        logs[budget] = _log(tmp_path / str(budget))
    assert [e["loss"] for e in logs[4096]] == pytest.approx([e["loss"] for e in logs[16]], rel=1e-5)
    assert [e["loss_tokens"] for e in logs[4096]] == [e["loss_tokens"] for e in logs[16]]
    a, b = (load_file(tmp_path / str(n) / "adapter_model.safetensors") for n in (4096, 16))
    for key in a:
        assert (a[key] - b[key]).abs().max() <= 1e-4 * max(a[key].abs().max(), 1e-3), key
    assert info[4096]["tokens_computed"] < 0.7 * info[16]["tokens_computed"]
    assert info[16]["tokens_computed"] == info[16]["tokens"]  # 4 steps of 4: one epoch, one example per row


def test_training_that_shares_nothing_equals_shared_prefix_off(tmp_path, tiny_model_dir, tokenizer):
    """Examples without a passage group and no common prompt start: shared_prefix on trains the same micro-batches in
    the same order as off, so the seeded run (LoRA dropout on) logs the same losses, bit for bit."""
    words = ["Alpha", "Bravo", "Charlie", "Delta", "Echo", "Foxtrot", "Golf", "Hotel", "India", "Juliet"]
    examples = [Example("sft", f"q{i}", f"{w} asks question {i}" + " and more" * (i % 4) + ":", f" answer {i}")
                for i, w in enumerate(words)]  # fmt: skip
    starts = [tokenize_example(ex, tokenizer, 1024)["input_ids"][0] for ex in examples]
    assert len(set(starts)) == len(starts)
    logs, info = {}, {}
    for shared in (True, False):
        cfg = TrainConfig(max_steps=3, batch_size=4, micro_batch_size=2, lora_r=4, learning_rate=1e-2, seed=2,
                          shared_prefix=shared)  # fmt: skip
        info[shared] = train(str(tiny_model_dir), "float32", examples, cfg, tmp_path / str(shared), progress=False)
        logs[shared] = _log(tmp_path / str(shared))
    assert logs[True] == logs[False]
    assert info[True]["tokens_computed"] == info[False]["tokens_computed"]


# Per-step losses of one seeded run with shared_prefix on (tiny random model, float32, default LoRA dropout with
# fast_dropout): printed by the run once and pinned, so that a change of order, packing or loss shows here.
PINNED = [11.459486825125557, 11.286604180393448, 11.206844422875381, 11.14339169588956]


def test_seeded_shared_prefix_run_gives_the_pinned_losses(tmp_path, tiny_model_dir, tokenizer, excerpt_questions):
    examples = _examples("laffi+sft", tokenizer, _passages(excerpt_questions))
    cfg = TrainConfig(max_steps=4, batch_size=4, micro_batch_size=2, lora_r=4, learning_rate=1e-2, seed=1)
    assert cfg.shared_prefix
    train(str(tiny_model_dir), "float32", examples, cfg, tmp_path / "a", progress=False)
    losses = [e["loss"] for e in _log(tmp_path / "a")]
    print(losses)
    assert losses == pytest.approx(PINNED, rel=1e-6)


def test_shared_prefix_is_on_by_default_and_part_of_the_cache_key():
    cfg = TrainConfig()
    assert cfg.shared_prefix and cfg.micro_batch_tokens == 2048
    settings = train_cache_settings(cfg)
    assert settings["shared_prefix"] is True and settings["micro_batch_tokens"] == 2048
    assert train_cache_settings(TrainConfig(shared_prefix=False)) != settings
