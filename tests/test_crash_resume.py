"""SIGKILL at random points of each stage, then re-run: the outputs equal an uninterrupted run's, with no record lost
or duplicated, and nothing half-written is ever left where an output belongs."""

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def run(args: list, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "laffi", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env=ENV)  # fmt: skip


def killed_then_finished(args: list, seed: int, kills: int, progress: callable) -> int:
    """Start the command `kills` times and SIGKILL it at a random point of its work: once `progress()` (a measure
    of work on disk) reaches a random target, plus a random fraction of a second. Then let it finish.
    Returns how many starts were really killed (not finished before the signal)."""
    rng = random.Random(seed)
    really = 0
    for _ in range(kills):
        target, extra = progress() + rng.randint(1, 3), rng.uniform(0.0, 0.3)
        proc = subprocess.Popen([sys.executable, "-m", "laffi", *map(str, args)], stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, env=ENV)  # fmt: skip
        while proc.poll() is None and progress() < target:
            time.sleep(0.01)
        time.sleep(extra)
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            really += 1
        proc.wait()
    r = run(args)
    assert r.returncode == 0, r.stderr
    return really


def line_count(path: Path) -> int:
    try:  # the stage may rename the file away between any check and the read
        return len(path.read_text().splitlines())
    except FileNotFoundError:
        return 0


@pytest.fixture()
def twelve(tmp_path, excerpt_questions):
    from laffi.data import write_squad

    path = tmp_path / "twelve.json"
    write_squad(excerpt_questions[:12], path)
    return path


def test_answer_survives_sigkill(twelve, tiny_model_dir, tmp_path):
    common = ["--data", twelve, "--model", tiny_model_dir, "--dtype", "float32", "--max-new-tokens", "24",
              "--batch-size", "1"]  # fmt: skip
    assert run(["answer", *common, "--out", tmp_path / "clean.json", "--generations", tmp_path / "clean.jsonl"]
               ).returncode == 0  # fmt: skip
    out = tmp_path / "killed.json"
    partial = tmp_path / ".killed.json.partial.jsonl"  # answers are appended here as they finish
    killed = killed_then_finished(["answer", *common, "--out", out, "--generations", tmp_path / "killed.jsonl"],
                                  seed=1, kills=4, progress=lambda: line_count(partial))  # fmt: skip
    assert killed >= 1
    assert json.loads(out.read_text()) == json.loads((tmp_path / "clean.json").read_text())
    killed_records = [json.loads(x) for x in (tmp_path / "killed.jsonl").read_text().splitlines()]
    clean_records = [json.loads(x) for x in (tmp_path / "clean.jsonl").read_text().splitlines()]
    # Same records, once each, same order. The no-answer score is a float of the first answer position, computed in
    # the prefill of whichever questions of a passage are admitted together: after a resume fewer are, and another
    # matmul shape rounds the last bits differently (the texts are the same).
    assert [{**r, "na_prob": None} for r in killed_records] == [{**r, "na_prob": None} for r in clean_records]
    assert [r["na_prob"] for r in killed_records] == pytest.approx([r["na_prob"] for r in clean_records], rel=1e-4)
    assert not list(tmp_path.glob(".killed*partial*"))  # the resume state is cleaned up


def test_train_survives_sigkill(twelve, tiny_model_dir, tmp_path):
    from laffi.data import load_squad
    from laffi.feedback.reference import annotate
    from laffi.files import write_jsonl

    feedback = tmp_path / "feedback.jsonl"
    write_jsonl(feedback, [annotate(q, "", 0.8) for q in load_squad(twelve)])
    common = ["--method", "laffi", "--data", twelve, "--feedback", feedback, "--model", tiny_model_dir, "--dtype",
              "float32", "--set", "train.max_steps=16", "--set", "train.save_steps=2", "--set", "train.lora_r=2",
              "--set", "train.batch_size=2", "--set", "train.micro_batch_size=1"]  # fmt: skip
    assert run(["train", *common, "--out", tmp_path / "clean"]).returncode == 0
    state = tmp_path / "killed.partial" / "state.pt"  # replaced at every checkpoint (every 2 steps)
    seen: set[int] = set()

    def checkpoints() -> int:
        if state.exists():
            seen.add(state.stat().st_mtime_ns)
        return len(seen)

    killed = killed_then_finished(["train", *common, "--out", tmp_path / "killed"], seed=2, kills=4,
                                  progress=checkpoints)  # fmt: skip
    assert killed >= 1
    from safetensors.torch import load_file

    a = load_file(tmp_path / "clean" / "adapter_model.safetensors")
    b = load_file(tmp_path / "killed" / "adapter_model.safetensors")
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)  # resumed training is exact
    log_a = (tmp_path / "clean" / "train_log.jsonl").read_text().splitlines()
    log_b = (tmp_path / "killed" / "train_log.jsonl").read_text().splitlines()
    assert len(log_b) == 16 and [json.loads(x)["loss"] for x in log_a] == [json.loads(x)["loss"] for x in log_b]


def test_annotate_is_all_or_nothing(twelve, tmp_path):
    """The reference annotator writes one file atomically: killed at any moment, the output is absent or whole."""
    preds = tmp_path / "preds.json"
    from laffi.data import load_squad

    preds.write_text(json.dumps({q.id: "" for q in load_squad(twelve)}))
    args = ["annotate", "--data", twelve, "--predictions", preds]
    assert run([*args, "--out", tmp_path / "clean.jsonl"]).returncode == 0
    rng = random.Random(3)
    for i in range(5):
        out = tmp_path / f"k{i}.jsonl"
        proc = subprocess.Popen([sys.executable, "-m", "laffi", *map(str, [*args, "--out", out])], env=ENV,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
        time.sleep(rng.uniform(0.5, 4.0))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert not out.exists() or out.read_text() == (tmp_path / "clean.jsonl").read_text()
    assert run([*args, "--out", tmp_path / "k0.jsonl"]).returncode == 0
    assert (tmp_path / "k0.jsonl").read_text() == (tmp_path / "clean.jsonl").read_text()


def test_experiment_survives_sigkill(tmp_path, tiny_model_dir, grid_data):
    data = grid_data(2)
    config = tmp_path / "exp.yaml"
    config.write_text(f"""
methods: [base, sft, laffi]
seeds: [0, 1]
train_sizes: [4]
example_questions: 0
model: {{name: "{tiny_model_dir}", dtype: float32}}
data: {{path: "{data}"}}
answer: {{max_new_tokens: 8, batch_size: 1}}
train: {{max_steps: 6, save_steps: 2, lora_r: 2, batch_size: 2, micro_batch_size: 1}}
""")
    clean, killed_dir = tmp_path / "clean", tmp_path / "killed"
    assert run(["experiment", config, "--set", f"out_dir={clean}", "--no-progress"]).returncode == 0
    killed = killed_then_finished(["experiment", config, "--set", f"out_dir={killed_dir}", "--no-progress"], seed=4,
                                  kills=4, progress=lambda: len(list(killed_dir.rglob("*"))))  # fmt: skip
    assert killed >= 1
    a = json.loads((clean / "results.json").read_text())
    b = json.loads((killed_dir / "results.json").read_text())
    for cells in (a["cells"], b["cells"]):  # wall times differ between runs; everything else is the same
        assert all(cell.pop("seconds")["eval"] > 0 for cell in cells.values())
    assert a["cells"] == b["cells"] and a["groups"] == b["groups"] and a["verdict"] == b["verdict"]
    for path in a["cells"]:
        for name in ("eval_answers.json", "eval_answers.generations.jsonl"):
            assert (clean / "cells" / path / name).read_text() == (killed_dir / "cells" / path / name).read_text()
