"""A resume never mixes settings: partial answers and training checkpoints carry the settings that made them; a re-run
with other settings is refused with one line (exit 2), `--restart` starts afresh, a damaged checkpoint is named."""

import json
import os
import subprocess
import sys

import pytest

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}


def run(args: list) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "laffi", *map(str, args)], capture_output=True, text=True,
                          timeout=300, env=ENV)  # fmt: skip


def one_line(r: subprocess.CompletedProcess) -> str:
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("laffi: error:"), r.stderr
    assert "Traceback" not in r.stderr
    return lines[0]


def interrupted(monkeypatch, argv: list, patch: tuple, after: int) -> None:
    """Run `laffi argv` in this process and interrupt it (KeyboardInterrupt) on the `after`-th call of `patch`
    ((owner, name): a method called once per unit of work that is on disk when it returns)."""
    from laffi.cli import main

    owner, name = patch
    real, calls = getattr(owner, name), {"n": 0}

    def counting(*a, **k):
        result = real(*a, **k)
        calls["n"] += 1
        if calls["n"] == after:
            raise KeyboardInterrupt
        return result

    monkeypatch.setattr(owner, name, counting)
    with pytest.raises((SystemExit, KeyboardInterrupt)):
        main([*map(str, argv)])
    monkeypatch.setattr(owner, name, real)


@pytest.fixture()
def twelve(tmp_path, excerpt_questions):
    from laffi.data import write_squad

    path = tmp_path / "twelve.json"
    write_squad(excerpt_questions[:12], path)
    return path


def test_answer_resume_with_other_settings_is_refused(twelve, tiny_model_dir, tmp_path, monkeypatch):
    from laffi.files import JsonlAppender

    common = ["answer", "--data", twelve, "--model", tiny_model_dir, "--dtype", "float32", "--max-new-tokens", "16",
              "--batch-size", "1", "--no-progress"]  # fmt: skip
    out = tmp_path / "preds.json"
    partial = tmp_path / ".preds.json.partial.jsonl"
    interrupted(monkeypatch, [*common, "--shots", "0", "--out", out], (JsonlAppender, "append"), after=3)
    assert 3 <= len(partial.read_text().splitlines()) < 12 and not out.exists()
    kept = partial.read_bytes()

    for other, word in ((["--shots", "2"], "answer.shots 0 -> 2"),
                        (["--shots", "0", "--require-in-context"], "answer.require_in_context false -> true")):
        r = run([*common, *other, "--out", out])
        assert r.returncode == 2
        line = one_line(r)
        assert str(partial) in line and word in line and "--restart" in line
        assert partial.read_bytes() == kept and not out.exists()  # nothing changed

    assert run([*common, "--shots", "2", "--out", tmp_path / "clean.json"]).returncode == 0
    r = run([*common, "--shots", "2", "--out", out, "--restart"])
    assert r.returncode == 0, r.stderr
    assert json.loads(out.read_text()) == json.loads((tmp_path / "clean.json").read_text())
    assert not list(tmp_path.glob(".preds.json.partial*"))  # the partial answers and their record are gone


def test_answer_resume_with_the_same_settings_continues(twelve, tiny_model_dir, tmp_path, monkeypatch):
    from laffi.files import JsonlAppender

    common = ["answer", "--data", twelve, "--model", tiny_model_dir, "--dtype", "float32", "--max-new-tokens", "8",
              "--batch-size", "1", "--no-progress", "--out", tmp_path / "preds.json"]  # fmt: skip
    interrupted(monkeypatch, common, (JsonlAppender, "append"), after=2)
    record = tmp_path / ".preds.json.partial.jsonl.settings.json"
    assert json.loads(record.read_text())["settings"]["answer"]["shots"] == 2
    r = run(common)
    assert r.returncode == 0, r.stderr
    assert len(json.loads((tmp_path / "preds.json").read_text())) == 12


def test_partial_answers_without_a_settings_record_are_refused(twelve, tiny_model_dir, tmp_path):
    """Partial answers left by a run that recorded no settings (or whose record is lost) are not trusted."""
    partial = tmp_path / ".preds.json.partial.jsonl"
    partial.write_text(json.dumps({"id": "x", "raw": "a", "answer": "a", "na_prob": None}) + "\n")
    r = run(["answer", "--data", twelve, "--model", tiny_model_dir, "--dtype", "float32", "--out",
             tmp_path / "preds.json", "--no-progress"])  # fmt: skip
    assert r.returncode == 2
    line = one_line(r)
    assert "no record of the settings" in line and "--restart" in line


@pytest.fixture()
def train_args(twelve, tiny_model_dir, tmp_path):
    from laffi.data import load_squad
    from laffi.feedback.reference import annotate
    from laffi.files import write_jsonl

    feedback = tmp_path / "feedback.jsonl"
    write_jsonl(feedback, [annotate(q, "", 0.8) for q in load_squad(twelve)])
    return ["train", "--method", "laffi", "--data", twelve, "--feedback", feedback, "--model", tiny_model_dir,
            "--dtype", "float32", "--set", "train.max_steps=6", "--set", "train.save_steps=2", "--set",
            "train.batch_size=2", "--set", "train.micro_batch_size=1", "--no-progress"]  # fmt: skip


def test_train_resume_with_other_settings_is_refused(train_args, tmp_path, monkeypatch):
    import torch

    out = tmp_path / "adapter"
    state = tmp_path / "adapter.partial" / "state.pt"
    # Interrupted in the 3rd optimizer step: the step-2 checkpoint is on disk.
    interrupted(monkeypatch, [*train_args, "--set", "train.lora_r=2", "--out", out], (torch.optim.AdamW, "step"),
                after=3)  # fmt: skip
    assert state.exists() and not out.exists()
    kept = state.read_bytes()
    for other, word in ((["--set", "train.lora_r=2", "--set", "train.learning_rate=0.001"], "train.learning_rate"),
                        (["--set", "train.lora_r=4"], "train.lora_r 2 -> 4")):
        r = run([*train_args, *other, "--out", out])
        assert r.returncode == 2
        line = one_line(r)
        assert "adapter.partial" in line and word in line and "--restart" in line
        assert state.read_bytes() == kept and not out.exists()

    state.write_bytes(kept[: len(kept) // 2])  # truncated: a disk that filled up, a copy cut short
    r = run([*train_args, "--set", "train.lora_r=2", "--out", out])
    assert r.returncode == 2
    line = one_line(r)
    assert str(state) in line and "checkpoint cannot be resumed" in line

    r = run([*train_args, "--set", "train.lora_r=4", "--out", out, "--restart"])
    assert r.returncode == 0, r.stderr
    assert json.loads((out / "adapter_config.json").read_text())["r"] == 4
    assert len((out / "train_log.jsonl").read_text().splitlines()) == 6
    assert not (tmp_path / "adapter.partial").exists()


def test_checkpoint_saves_and_restores_cuda_random_state(tmp_path, tiny_model_dir, monkeypatch):
    """With CUDA present, a checkpoint holds every device's random state and a resume restores it, as it does the
    CPU's (torch.cuda faked: the state is what get_rng_state_all returns, set_rng_state_all records what it got)."""
    import torch
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    from laffi.config import TrainConfig
    from laffi.models import peft_quietly
    from laffi.training.loop import _checkpoint, _resume, lora_config

    def setup():
        torch.manual_seed(0)
        with peft_quietly():
            model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir),
                                   lora_config(TrainConfig(lora_r=2)))
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
        return model, opt, torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)

    fake_states = [torch.arange(16, dtype=torch.uint8), torch.arange(16, 32, dtype=torch.uint8)]
    restored = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: [s.clone() for s in fake_states])
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", lambda states: restored.append(list(states)))
    model, opt, sched = setup()
    _checkpoint(tmp_path / "w", model, opt, sched, [{"step": 1, "loss": 1.0}], None)
    cpu_state = torch.get_rng_state()
    torch.manual_seed(123)  # the resumed process starts elsewhere
    model, opt, sched = setup()
    log, start = _resume(tmp_path / "w", model, opt, sched)
    assert start == 1 and log == [{"step": 1, "loss": 1.0}]
    assert len(restored) == 1 and all(torch.equal(a, b) for a, b in zip(restored[0], fake_states, strict=True))
    assert torch.equal(torch.get_rng_state(), cpu_state)
    # A machine with fewer devices than the one that saved restores the states of those it has.
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    _resume(tmp_path / "w", model, opt, sched)
    assert len(restored) == 2 and len(restored[1]) == 1 and torch.equal(restored[1][0], fake_states[0])

    # Without CUDA the checkpoint holds no CUDA state, and a resume sets none.
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    _checkpoint(tmp_path / "c", model, opt, sched, [], None)
    restored.clear()
    _resume(tmp_path / "c", model, opt, sched)
    assert restored == []


def test_every_torch_load_names_where_tensors_go():
    """A checkpoint written on a GPU must load on a machine without one: every torch.load in laffi/ has map_location
    (and weights_only=True: loading a checkpoint runs no pickled code)."""
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "laffi"
    calls = []
    for path in root.rglob("*.py"):
        text = path.read_text()
        for m in re.finditer(r"torch\.load\(", text):
            depth, i = 1, m.end()
            while depth:
                depth += {"(": 1, ")": -1}.get(text[i], 0)
                i += 1
            calls.append((path.name, text[m.start() : i]))
    assert calls
    for name, call in calls:
        assert "map_location=" in call and "weights_only=True" in call, (name, call)


def test_a_command_that_fails_before_any_work_leaves_no_settings_record(train_args, tmp_path):
    """The record is written when a run starts; a run refused before its first checkpoint removes it again."""
    r = run([*train_args, "--set", "train.batch_size=3", "--set", "train.micro_batch_size=2", "--out",
             tmp_path / "adapter"])  # fmt: skip
    assert r.returncode == 2, r.stderr
    assert "multiple of micro_batch_size" in one_line(r)
    assert not (tmp_path / "adapter.partial").exists() and not (tmp_path / "adapter").exists()


def test_a_damaged_sharded_checkpoint_is_named(tmp_path):
    """Under FSDP / DeepSpeed the checkpoint is accelerate's folder plus log.json: either one damaged is one error
    naming the checkpoint."""
    from laffi.errors import LaffiError
    from laffi.training.loop import _resume

    class Sharded:
        sharded = True

        def __init__(self, fail: bool):
            self.fail = fail

        def register(self, scheduler):
            pass

        def load_state(self, work):
            if self.fail:
                raise RuntimeError("Error(s) in loading state_dict: size mismatch\nmore")
            return True

    work = tmp_path / "adapter.partial"
    work.mkdir()
    (work / "log.json").write_text('{"log": [{"step": 1')
    for fail, words in ((False, "JSONDecodeError"), (True, "size mismatch")):
        with pytest.raises(LaffiError) as e:
            _resume(work, None, None, None, Sharded(fail))
        assert str(e.value).startswith(f"{work}: checkpoint cannot be resumed") and words in str(e.value)
        assert "\n" not in str(e.value)
