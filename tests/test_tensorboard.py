"""train.report_to: tensorboard writes the loss, learning rate and gradient norm of every step as TensorBoard events
beside the adapter (`OUT/runs/`), the same numbers as train_log.jsonl."""

import json

import pytest

from laffi.config import TrainConfig
from laffi.feedback import reference
from laffi.methods import build_examples
from laffi.models import load_tokenizer
from laffi.training.loop import train


def test_tensorboard_events_match_the_train_log(tmp_path, tiny_model_dir, excerpt_questions):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tokenizer = load_tokenizer(str(tiny_model_dir))
    qs = excerpt_questions[:4]
    examples = build_examples("laffi+sft", qs, [reference.annotate(q, "") for q in qs], tokenizer, shots=0, seed=0)
    cfg = TrainConfig(max_steps=3, batch_size=2, micro_batch_size=2, lora_r=2, report_to="tensorboard")
    out = tmp_path / "adapter"
    train(str(tiny_model_dir), "float32", examples, cfg, out, progress=False, tokenizer=tokenizer)
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    events = EventAccumulator(str(out / "runs"))
    events.Reload()
    for name in ("loss", "lr", "grad_norm"):
        scalars = events.Scalars(f"train/{name}")
        assert [s.step for s in scalars] == [1, 2, 3]
        assert [s.value for s in scalars] == pytest.approx([e[name] for e in log], rel=1e-6)


def test_without_report_to_no_events_are_written(tmp_path, tiny_model_dir, excerpt_questions):
    tokenizer = load_tokenizer(str(tiny_model_dir))
    examples = build_examples("sft", excerpt_questions[:2], None, tokenizer, shots=0, seed=0)
    out = tmp_path / "adapter"
    train(str(tiny_model_dir), "float32", examples, TrainConfig(max_steps=1, batch_size=2, micro_batch_size=2,
                                                                lora_r=2), out, progress=False, tokenizer=tokenizer)
    assert not (out / "runs").exists()
