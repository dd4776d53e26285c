"""Training examples (exact token sequences and loss masks) and the LoRA loop on the tiny random model."""

import json

import pytest

from laffi import prompts
from laffi.config import TrainConfig
from laffi.errors import LaffiError
from laffi.feedback import reference
from laffi.methods import build_examples
from laffi.records import Question
from laffi.training.examples import tokenize_example
from laffi.training.loop import step_schedule, train

CTX = "Rollo led the Normans. They settled in Normandy in 911."
QA = Question(id="a", title="N", context=CTX, question="Who led the Normans?", answers=["Rollo"], answer_starts=[0])
QI = Question(id="b", title="N", context=CTX, question="Who led the Danes?", is_impossible=True)


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    from laffi.models import load_tokenizer

    return load_tokenizer(str(tiny_model_dir))


def test_sft_example_is_prompt_then_gold_answer(tokenizer):
    (ex,) = build_examples("sft", [QA], None, tokenizer, shots=0, seed=0)
    assert ex.prompt == prompts.render(prompts.qa_messages(QA, 0), tokenizer)
    assert ex.prompt.endswith("<|im_start|>assistant\n") and ex.completion == "Rollo"
    row = tokenize_example(ex, tokenizer, max_length=1024)
    n_prompt = len(tokenizer(ex.prompt, add_special_tokens=False)["input_ids"])
    completion = tokenizer("Rollo", add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    assert row["input_ids"][n_prompt:] == completion
    assert row["completion_mask"] == [0] * n_prompt + [1] * len(completion)
    (imp,) = build_examples("sft", [QI], None, tokenizer, shots=0, seed=0)
    assert imp.completion == prompts.ABSTAIN_PHRASE


def test_laffi_example_is_feedback_on_own_answer(tokenizer):
    fb = reference.annotate(QA, "911")
    (ex,) = build_examples("laffi", [QA], [fb], tokenizer, shots=0, seed=0)
    assert "Proposed answer: 911" in ex.prompt and ex.completion == fb.feedback
    assert tokenizer.decode(tokenize_example(ex, tokenizer, 1024)["input_ids"]).endswith(fb.feedback + "<|im_end|>")
    both = build_examples("laffi+sft", [QA], [fb], tokenizer, shots=0, seed=0)
    assert sorted(e.kind for e in both) == ["laffi", "sft"]
    with pytest.raises(LaffiError, match="needs feedback"):
        build_examples("laffi", [QA], None, tokenizer, shots=0, seed=0)


def test_long_prompt_is_cut_from_the_left_keeping_the_completion(tokenizer):
    (ex,) = build_examples("sft", [QA], None, tokenizer, shots=2, seed=0)
    row = tokenize_example(ex, tokenizer, max_length=20)
    n_completion = len(tokenizer("Rollo", add_special_tokens=False)["input_ids"]) + 1  # + end of turn
    assert len(row["input_ids"]) == 20 and sum(row["completion_mask"]) == n_completion
    assert row["completion_mask"][-n_completion:] == [1] * n_completion


def test_step_schedule_covers_epochs_and_groups_by_length():
    rows = [{"input_ids": [0] * n, "completion_mask": [1] * n} for n in (5, 1, 9, 3, 7)]
    steps = step_schedule(rows, TrainConfig(epochs=2, batch_size=4, micro_batch_size=2, seed=1))
    assert len(steps) == 4  # ceil(5 / 4) = 2 steps per epoch
    seen = sorted(i for step in steps[:2] for mb in step for i in mb)
    assert seen == [0, 1, 2, 3, 4]  # each epoch sees every example once
    for step in steps:
        lengths = [len(rows[i]["input_ids"]) for mb in step for i in mb]
        assert lengths == sorted(lengths)
    capped = step_schedule(rows, TrainConfig(max_steps=3, batch_size=4, micro_batch_size=2))
    assert len(capped) == 3  # max_steps stops the schedule (2 epochs would be 4 steps)


def _examples(tokenizer, excerpt_questions):
    qs = excerpt_questions[:6]
    fbs = [reference.annotate(q, "") for q in qs]
    return build_examples("laffi+sft", qs, fbs, tokenizer, shots=0, seed=0)


def test_train_saves_a_loadable_peft_adapter_and_loss_log(tmp_path, tiny_model_dir, tokenizer, excerpt_questions):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    cfg = TrainConfig(max_steps=3, batch_size=4, micro_batch_size=2, lora_r=4, learning_rate=1e-2, save_steps=1)
    out = tmp_path / "adapter"
    info = train(str(tiny_model_dir), "float32", _examples(tokenizer, excerpt_questions), cfg, out, progress=False)
    assert info["steps"] == 3 and info["examples_by_kind"] == {"sft": 6, "laffi": 6}
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert [e["step"] for e in log] == [1, 2, 3] and all(e["loss"] > 0 for e in log)
    assert not (tmp_path / "adapter.partial").exists()
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), out)
    assert any("lora_A" in n for n, _ in model.named_parameters())


def test_loss_goes_down_when_fitting_one_batch(tmp_path, tiny_model_dir, tokenizer, excerpt_questions):
    examples = build_examples("sft", excerpt_questions[:2], None, tokenizer, shots=0, seed=0)
    cfg = TrainConfig(max_steps=12, batch_size=2, micro_batch_size=1, lora_r=8, learning_rate=3e-2, warmup_ratio=0)
    info = train(str(tiny_model_dir), "float32", examples, cfg, tmp_path / "a", progress=False)
    log = [json.loads(line) for line in (tmp_path / "a" / "train_log.jsonl").read_text().splitlines()]
    assert info["final_loss"] < 0.75 * log[0]["loss"]


def test_interrupted_training_resumes_to_the_same_result(tmp_path, tiny_model_dir, tokenizer, excerpt_questions,
                                                         monkeypatch):  # fmt: skip
    import torch
    from safetensors.torch import load_file


    examples = _examples(tokenizer, excerpt_questions)
    cfg = TrainConfig(max_steps=4, batch_size=4, micro_batch_size=2, lora_r=4, learning_rate=1e-2, save_steps=2,
                      lora_dropout=0.0)  # fmt: skip
    train(str(tiny_model_dir), "float32", examples, cfg, tmp_path / "full", progress=False)

    real_step = torch.optim.AdamW.step
    calls = {"n": 0}

    def crash_after_three(self, *a, **k):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt  # like a kill after the step-2 checkpoint
        return real_step(self, *a, **k)

    monkeypatch.setattr(torch.optim.AdamW, "step", crash_after_three)
    with pytest.raises(KeyboardInterrupt):
        train(str(tiny_model_dir), "float32", examples, cfg, tmp_path / "resumed", progress=False)
    assert (tmp_path / "resumed.partial" / "state.pt").exists()
    monkeypatch.setattr(torch.optim.AdamW, "step", real_step)
    train(str(tiny_model_dir), "float32", examples, cfg, tmp_path / "resumed", progress=False)

    a = load_file(tmp_path / "full" / "adapter_model.safetensors")
    b = load_file(tmp_path / "resumed" / "adapter_model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k])
    full = (tmp_path / "full" / "train_log.jsonl").read_text().splitlines()
    resumed = (tmp_path / "resumed" / "train_log.jsonl").read_text().splitlines()
    assert [json.loads(x)["loss"] for x in full] == pytest.approx([json.loads(x)["loss"] for x in resumed])
    assert len(full) == len(resumed) == cfg.max_steps
