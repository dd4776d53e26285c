"""Usage errors and unusable output locations, through a real subprocess (the exit code is what a shell sees).

Each case must end with exit code 2 and exactly one line on stderr, `laffi: error: ...`, with no traceback, before any
model is loaded, and leave nothing behind. typer >= 0.26 raises usage errors from its own copy of click, which the CLI
once failed to recognise (every usage error became a traceback with exit 1): these cases catch that class of change
for whatever typer version the pyproject allows.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

BUNDLED = "bundled"


def laffi(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    # PYTHONPATH: the checkout this test file belongs to, whatever directory the command runs in.
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    return subprocess.run([sys.executable, "-m", "laffi", *map(str, args)], capture_output=True, text=True,
                          timeout=120, env=env, cwd=cwd)  # fmt: skip


def assert_one_line_error(proc: subprocess.CompletedProcess, *words: str) -> str:
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, proc.stderr
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("laffi: error: ") and "Traceback" not in proc.stderr, proc.stderr
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


USAGE = [
    (["answer", "--data", BUNDLED, "--out", "x.json", "--limit", "-1"], "'--limit'"),
    (["answer", "--data", BUNDLED, "--out", "x.json", "--shots", "99"], "'--shots'"),
    (["answer", "--data", BUNDLED, "--out", "x.json", "--batch-size", "0"], "'--batch-size'"),
    (["annotate", "--threshold", "1.5"], "'--threshold'"),
    (["annotate-server", "--data", BUNDLED, "--predictions", "p.json", "--db", "d.sqlite", "--port", "0"], "'--port'"),
    (["attention", "--data", BUNDLED, "--questions", "0"], "'--questions'"),
    (["answer", "--data", BUNDLED, "--out", "x.json", "--no-such-option"], "--no-such-option"),
    (["answer", "--out", "x.json"], "--data"),
    (["score"], "Missing argument"),
    (["no-such-command"], "no-such-command"),
    (["train", "--method", "sft", "--data", BUNDLED, "--out", "a", "--set", "train.epochs=abc"], "train.epochs"),
]


@pytest.mark.parametrize("args,word", USAGE, ids=lambda a: " ".join(a) if isinstance(a, list) else None)
def test_usage_error_is_one_line_exit_2(args, word, tmp_path):
    assert_one_line_error(laffi(*args, cwd=tmp_path), word)
    assert list(tmp_path.iterdir()) == []


def test_no_arguments_prints_help_and_exits_2():
    proc = laffi()
    assert proc.returncode == 2 and "Usage" in proc.stdout and "Traceback" not in proc.stderr


def test_click_exceptions_recognised_from_any_click_copy():
    """The handler matches classes by name in any `*click.exceptions` module: plain click's and typer's own."""
    import click

    from laffi.cli_process import _click_exit

    assert _click_exit(click.exceptions.UsageError("bad")) == 2
    assert _click_exit(click.exceptions.Exit(0)) == 0
    assert _click_exit(ValueError("not a usage error")) is None
    try:
        from typer._click import exceptions as bundled  # typer >= 0.26
    except ImportError:
        return
    assert _click_exit(bundled.UsageError("bad")) == 2


# ---------------------------------------------------------------------------------------------- output locations


def test_out_is_a_directory(tmp_path):
    (tmp_path / "dir").mkdir()
    assert_one_line_error(laffi("answer", "--data", BUNDLED, "--out", tmp_path / "dir"), "is a directory")


def test_parent_of_out_is_a_file(tmp_path):
    (tmp_path / "file").write_text("x")
    assert_one_line_error(laffi("answer", "--data", BUNDLED, "--out", tmp_path / "file" / "p.json"),
                          "is a file, not a directory")  # fmt: skip


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only directories")
def test_read_only_output_directory(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        assert_one_line_error(laffi("answer", "--data", BUNDLED, "--out", ro / "p.json"), "cannot write")
    finally:
        ro.chmod(0o755)


def test_out_dir_is_a_file(tmp_path):
    (tmp_path / "runs").write_text("x")
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("data:\n  path: bundled\n", encoding="utf-8")
    for command in ("run", "experiment"):
        assert_one_line_error(laffi(command, cfg, "--set", f"out_dir={tmp_path / 'runs'}"), "out_dir",
                              "not a directory")  # fmt: skip


def test_generations_beside_out_checked_too(tmp_path):
    (tmp_path / "g").mkdir()
    assert_one_line_error(laffi("answer", "--data", BUNDLED, "--out", tmp_path / "p.json", "--generations",
                                tmp_path / "g"), "--generations")  # fmt: skip
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g"]


# ---------------------------------------------------------------------------------------------- inputs kept intact


def test_out_same_as_input_is_refused(tmp_path, bundled_small):
    data = tmp_path / "data.json"
    data.write_bytes(bundled_small.read_bytes())
    preds = tmp_path / "preds.json"
    preds.write_text("{}", encoding="utf-8")
    before = data.read_bytes(), preds.read_bytes()
    assert_one_line_error(laffi("answer", "--data", data, "--out", data), "same file as --data")
    assert_one_line_error(laffi("annotate", "--data", data, "--predictions", preds, "--out", preds),
                          "same file as --predictions")  # fmt: skip
    assert_one_line_error(laffi("annotate", "--data", data, "--predictions", preds, "--out", data),
                          "same file as --data")  # fmt: skip
    assert (data.read_bytes(), preds.read_bytes()) == before


def test_train_never_replaces_a_folder_that_is_not_an_adapter(tmp_path):
    keep = tmp_path / "mine"
    keep.mkdir()
    (keep / "notes.txt").write_text("precious", encoding="utf-8")
    assert_one_line_error(laffi("train", "--method", "sft", "--data", BUNDLED, "--out", keep), "not an adapter")
    assert (keep / "notes.txt").read_text(encoding="utf-8") == "precious"


def test_run_with_missing_data_leaves_nothing(tmp_path):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(f"data:\n  path: {tmp_path / 'nope.json'}\nout_dir: {tmp_path / 'runs'}\n", encoding="utf-8")
    for command in ("run", "experiment"):
        assert_one_line_error(laffi(command, cfg), "nope.json", "not found")
        assert not (tmp_path / "runs").exists()


def test_newline_in_file_name_stays_one_line(tmp_path):
    odd = tmp_path / "a\nb.json"
    assert_one_line_error(laffi("score", odd, odd), "not found")


@pytest.fixture
def bundled_small(tmp_path):
    from laffi.data import bundled_data_path, load_squad, write_squad

    path = tmp_path / "small.json"
    write_squad(load_squad(bundled_data_path())[:5], path)
    return path


def test_openmp_threads_sleep_unless_the_user_chose(monkeypatch):
    """Spinning OpenMP threads of two torch processes steal each other's cores (bench/contention.py)."""
    from laffi.cli_process import passive_openmp

    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    passive_openmp()
    assert os.environ["OMP_WAIT_POLICY"] == "PASSIVE"
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    passive_openmp()
    assert os.environ["OMP_WAIT_POLICY"] == "ACTIVE"
