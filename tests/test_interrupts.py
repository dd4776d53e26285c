"""Ctrl-C (SIGINT) and SIGTERM: a real `python -m laffi` process signalled once its work has started exits 130 / 143
with exactly one line on stderr, keeps what it finished, and the same command run again gives the output of an
uninterrupted run."""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_crash_resume import ENV, line_count, run


def interrupted(args: list, signum: int, started: callable, timeout: float = 300) -> tuple[int, list[str]]:
    """Start the command, send `signum` once `started()` is true; returns (exit code, stderr lines)."""
    proc = subprocess.Popen([sys.executable, "-m", "laffi", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=ENV)  # fmt: skip
    deadline = time.monotonic() + timeout
    while proc.poll() is None and not started() and time.monotonic() < deadline:
        time.sleep(0.005)
    assert proc.poll() is None, f"finished before the signal: {proc.communicate()[1]}"
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=timeout)
    return proc.returncode, err.splitlines()


def assert_one_interrupt_line(code: int, lines: list[str], signum: int) -> None:
    assert code == 128 + signum, lines
    name = signal.Signals(signum).name
    assert lines == [f"laffi: interrupted by {name}: finished work is kept; re-run the same command to resume"]


@pytest.fixture()
def twelve(tmp_path, excerpt_questions):
    from laffi.data import write_squad

    path = tmp_path / "twelve.json"
    write_squad(excerpt_questions[:12], path)
    return path


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_answer_interrupted_then_resumed(signum, twelve, tiny_model_dir, tmp_path):
    common = ["answer", "--data", twelve, "--model", tiny_model_dir, "--dtype", "float32", "--max-new-tokens", "48",
              "--batch-size", "1", "--no-progress"]  # fmt: skip
    assert run([*common, "--out", tmp_path / "clean.json"]).returncode == 0
    out = tmp_path / "stopped.json"
    partial = tmp_path / ".stopped.json.partial.jsonl"
    code, lines = interrupted([*common, "--out", out], signum, lambda: line_count(partial) >= 1)
    assert_one_interrupt_line(code, lines, signum)
    assert not out.exists() and line_count(partial) >= 1  # no output yet; the answers finished are kept
    assert not list(tmp_path.glob(".stopped.json.*.tmp"))
    r = run([*common, "--out", out])
    assert r.returncode == 0, r.stderr
    assert json.loads(out.read_text()) == json.loads((tmp_path / "clean.json").read_text())


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_train_interrupted_then_resumed(signum, twelve, tiny_model_dir, tmp_path):
    from safetensors.torch import load_file

    from laffi.data import load_squad
    from laffi.feedback.reference import annotate
    from laffi.files import write_jsonl

    feedback = tmp_path / "feedback.jsonl"
    write_jsonl(feedback, [annotate(q, "", 0.8) for q in load_squad(twelve)])
    common = ["train", "--method", "laffi", "--data", twelve, "--feedback", feedback, "--model", tiny_model_dir,
              "--dtype", "float32", "--set", "train.max_steps=24", "--set", "train.save_steps=2", "--set",
              "train.lora_r=2", "--set", "train.batch_size=2", "--set", "train.micro_batch_size=1",
              "--no-progress"]  # fmt: skip
    assert run([*common, "--out", tmp_path / "clean"]).returncode == 0
    out = tmp_path / "stopped"
    state = tmp_path / "stopped.partial" / "state.pt"
    code, lines = interrupted([*common, "--out", out], signum, state.exists)
    assert_one_interrupt_line(code, lines, signum)
    assert state.exists() and not out.exists()  # the checkpoint is kept, no adapter yet
    r = run([*common, "--out", out])
    assert r.returncode == 0, r.stderr
    a = load_file(tmp_path / "clean" / "adapter_model.safetensors")
    b = load_file(out / "adapter_model.safetensors")
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)
    losses = [[json.loads(x)["loss"] for x in (d / "train_log.jsonl").read_text().splitlines()]
              for d in (tmp_path / "clean", out)]  # fmt: skip
    assert len(losses[1]) == 24 and losses[0] == losses[1]


def test_a_signal_in_process_leaves_handlers_as_they_were(tmp_path):
    """`main` runs inside other programs (the tests call it in-process): it puts back the handlers it replaced."""
    from laffi.cli import main

    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    with pytest.raises(SystemExit):
        main(["score", str(tmp_path / "missing.json"), str(tmp_path / "missing-preds.json")])
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before


def test_sigterm_in_process_runs_the_same_cleanup(tmp_path, monkeypatch, capsys):
    """A SIGTERM becomes an exception where the program is: `finally` blocks and the atomic writer's cleanup run."""
    import os

    from laffi import cli_process
    from laffi.cli import main

    def slow_score(*args, **kwargs):
        if signal.getsignal(signal.SIGTERM) is not cli_process._on_signal:  # without it, the signal would end pytest
            raise AssertionError("no SIGTERM handler")
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # interrupted here
        raise AssertionError("not interrupted")

    from laffi.pipeline import stages

    monkeypatch.setattr(stages, "score", slow_score)
    data, preds = tmp_path / "d.json", tmp_path / "p.json"
    for p in (data, preds):
        Path(p).write_text("{}")
    with pytest.raises(SystemExit) as exit_info:
        main(["score", str(data), str(preds)])
    assert exit_info.value.code == 143
    assert capsys.readouterr().err.splitlines() == [
        "laffi: interrupted by SIGTERM: finished work is kept; re-run the same command to resume"]


@pytest.mark.skipif(not Path("/proc/self/wchan").exists(), reason="needs Linux's /proc/PID/wchan")
def test_sigterm_ends_a_process_stuck_in_native_code(small_squad, tiny_model_dir, tmp_path):
    """torch's rendezvous retries on EINTR in C++ for 30 minutes, so Python's handler never runs there: the watchdog
    ends the process SIGNAL_GRACE_S after the signal, with the same line and code."""
    import socket
    import threading

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**ENV, "WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": "1", "MASTER_ADDR": "127.0.0.1",
           "MASTER_PORT": str(port)}  # fmt: skip
    proc = subprocess.Popen([sys.executable, "-m", "laffi", "train", "--method", "sft", "--data", str(small_squad),
                             "--out", str(tmp_path / "adapter"), "--model", str(tiny_model_dir), "--dtype", "float32",
                             "--no-progress"], stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=env)
    try:
        lines: list[str] = []
        reader = threading.Thread(target=lambda: lines.extend(x.rstrip("\n") for x in proc.stderr), daemon=True)
        reader.start()
        wchan = Path(f"/proc/{proc.pid}/wchan")
        deadline = time.monotonic() + 120
        while proc.poll() is None and time.monotonic() < deadline:  # until the rendezvous's back-off sleeps in C++
            if "nanosleep" in wchan.read_text():
                break
            time.sleep(0.1)
        assert proc.poll() is None and "nanosleep" in wchan.read_text(), lines
        start = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 143
        assert time.monotonic() - start < 30
    finally:
        if proc.poll() is None:  # never leave it waiting 30 minutes
            proc.kill()
    reader.join(10)
    assert [x for x in lines if x.startswith("laffi:")] == [
        "laffi: interrupted by SIGTERM: finished work is kept; re-run the same command to resume"]


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_experiment_interrupted_then_resumed(signum, tmp_path, tiny_model_dir, excerpt_questions):
    """The grid logs its stages on stderr: the interrupt is the one `laffi:` line, and the last."""
    from laffi.data import write_squad

    picked: dict = {}
    for q in excerpt_questions:
        picked.setdefault((q.title, q.is_impossible), []).append(q)
    data = tmp_path / "data.json"
    write_squad(sorted([q for g in picked.values() for q in g[:2]], key=excerpt_questions.index), data)
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
    clean, stopped = tmp_path / "clean", tmp_path / "stopped"
    assert run(["experiment", config, "--set", f"out_dir={clean}", "--no-progress"]).returncode == 0
    code, lines = interrupted(["experiment", config, "--set", f"out_dir={stopped}", "--no-progress"], signum,
                              lambda: any(stopped.rglob("adapter_model.safetensors")))  # fmt: skip
    assert code == 128 + signum and not any("Traceback" in x for x in lines), lines
    assert [x for x in lines if x.startswith("laffi:")] == [lines[-1]]
    assert_one_interrupt_line(code, lines[-1:], signum)
    assert not (stopped / "results.json").exists()
    r = run(["experiment", config, "--set", f"out_dir={stopped}", "--no-progress"])
    assert r.returncode == 0, r.stderr
    a = json.loads((clean / "results.json").read_text())
    b = json.loads((stopped / "results.json").read_text())
    for cells in (a["cells"], b["cells"]):  # wall times differ between runs
        for cell in cells.values():
            cell.pop("seconds")
    assert a["cells"] == b["cells"] and a["groups"] == b["groups"] and a["verdict"] == b["verdict"]


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_llm_annotate_interrupted_then_resumed(signum, twelve, tiny_model_dir, tmp_path):
    """The LLM annotator keeps each reply in its cache as it comes: a re-run asks only for the others."""
    from laffi.data import load_squad

    preds = tmp_path / "preds.json"
    preds.write_text(json.dumps({q.id: "" for q in load_squad(twelve)}))
    common = ["annotate", "--annotator", "llm", "--model", tiny_model_dir, "--dtype", "float32", "--data", twelve,
              "--predictions", preds, "--set", "annotate.max_new_tokens=48", "--set", "annotate.shots=0"]  # fmt: skip
    assert run([*common, "--out", tmp_path / "clean.jsonl"]).returncode == 0
    out = tmp_path / "stopped.jsonl"
    cache = tmp_path / ".stopped.jsonl.llm-cache.jsonl"
    code, lines = interrupted([*common, "--out", out], signum, lambda: line_count(cache) >= 1)
    assert code == 128 + signum and not any("Traceback" in x for x in lines), lines
    assert [x for x in lines if x.startswith("laffi:")] == [lines[-1]]  # after the progress bar: one line
    assert_one_interrupt_line(code, lines[-1:], signum)
    assert not out.exists() and line_count(cache) >= 1
    r = run([*common, "--out", out])
    assert r.returncode == 0, r.stderr

    def records(path: Path) -> list[dict]:
        return [{k: v for k, v in json.loads(x).items() if k != "meta"} for x in path.read_text().splitlines()]

    assert records(out) == records(tmp_path / "clean.jsonl")
