"""Bad inputs that cannot be files in git: a FIFO, /dev/zero, a symlink loop, a directory, an unreadable file, a
newline in a file name, a file over the size cap, documents nested 100,000 deep. Each runs the real CLI in a
subprocess (a hang or a crash of the interpreter shows up as such) and must give exit code 2 and one line on stderr.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

CORPUS = Path(__file__).parent / "bad_inputs"
GOOD = CORPUS / "good.json"
GOOD_PREDICTIONS = CORPUS / "good_predictions.json"
GOOD_FEEDBACK = {"id": "q1", "question": "In what country is Normandy located?", "context": "The Normans ...",
                 "predicted_answer": "France", "gold_answers": ["France"], "verdict": "correct",
                 "feedback": "The answer is correct.", "annotator": "reference",
                 "template_version": "feedback-v1"}  # fmt: skip


def _laffi(*args: str | Path, cwd: Path) -> str:
    """Run `python -m laffi ARGS`; assert exit code 2 and one error line without a traceback; return that line."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-m", "laffi", *map(str, args)], cwd=cwd, env=env, capture_output=True,
                       text=True, errors="backslashreplace", timeout=60)  # fmt: skip
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2, r.stderr[-3000:]
    assert len(lines) == 1 and lines[0].startswith("laffi: error: ") and "Traceback" not in r.stderr, r.stderr[-3000:]
    return lines[0]


# One command per kind of input file; {} is the file under test.
COMMANDS = {
    "data": lambda f, tmp: ["score", f, GOOD_PREDICTIONS],
    "predictions": lambda f, tmp: ["score", GOOD, f],
    "feedback": lambda f, tmp: ["feedback-report", "--human", f, "--ai", f],
    "config": lambda f, tmp: ["run", f, "--set", f"out_dir={tmp / 'out'}"],
}


@pytest.mark.parametrize("kind", list(COMMANDS))
def test_directory(tmp_path, kind):
    folder = tmp_path / "a_folder"
    folder.mkdir()
    line = _laffi(*COMMANDS[kind](folder, tmp_path), cwd=tmp_path)
    # SQuAD data may be a directory of parquet files: an empty one gets its own message.
    assert ("a_folder: a directory without parquet files" if kind == "data" else "a_folder: is a directory") in line
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("kind", list(COMMANDS))
def test_symlink_loop(tmp_path, kind):
    (tmp_path / "loop_a").symlink_to("loop_b")
    (tmp_path / "loop_b").symlink_to("loop_a")
    assert "loop_a: cannot open (a symlink loop)" in _laffi(*COMMANDS[kind](tmp_path / "loop_a", tmp_path),
                                                            cwd=tmp_path)  # fmt: skip


@pytest.mark.parametrize("kind", ["data", "feedback", "config"])
def test_fifo_is_refused_without_waiting_for_a_writer(tmp_path, kind):
    fifo = tmp_path / "pipe.json"
    os.mkfifo(fifo)
    assert "pipe.json: not a regular file (a FIFO)" in _laffi(*COMMANDS[kind](fifo, tmp_path), cwd=tmp_path)


@pytest.mark.skipif(not Path("/dev/zero").exists(), reason="no /dev/zero")
def test_dev_zero_is_not_read_forever(tmp_path):
    assert "/dev/zero: not a regular file (a character device)" in _laffi("score", "/dev/zero", GOOD_PREDICTIONS,
                                                                          cwd=tmp_path)  # fmt: skip


def test_file_over_the_size_cap(tmp_path):
    big = tmp_path / "big.json"
    with open(big, "wb") as f:  # sparse: takes no disk space, and is refused on its size before any read
        f.truncate(2 * 1024**3 + 1)
    assert "big.json: too large (2.0 GiB; the limit is 2.0 GiB)" in _laffi("score", big, GOOD_PREDICTIONS,
                                                                           cwd=tmp_path)  # fmt: skip


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root reads files whatever their mode")
@pytest.mark.parametrize("kind", list(COMMANDS))
def test_unreadable_file(tmp_path, kind):
    locked = tmp_path / "locked.json"
    locked.write_text("{}")
    locked.chmod(0)
    try:
        assert "locked.json: permission denied" in _laffi(*COMMANDS[kind](locked, tmp_path), cwd=tmp_path)
    finally:
        locked.chmod(0o600)


@pytest.mark.parametrize("kind", list(COMMANDS))
def test_newline_in_file_name_keeps_the_error_on_one_line(tmp_path, kind):
    odd = tmp_path / "two\nlines.json"
    odd.write_text("[", encoding="utf-8")  # broken in every format
    assert "two\\nlines.json" in _laffi(*COMMANDS[kind](odd, tmp_path), cwd=tmp_path)


def _deep(n: int) -> str:
    return "[" * n + "]" * n


@pytest.mark.parametrize("kind", ["data", "predictions"])
def test_json_nested_100000_deep(tmp_path, kind):
    path = tmp_path / "deep.json"
    path.write_text(f'{{"version": "v2.0", "data": {_deep(100_000)}}}' if kind == "data" else
                    f'{{"q1": {_deep(100_000)}}}')  # fmt: skip
    assert "deep.json: not valid JSON: nested too deeply" in _laffi(*COMMANDS[kind](path, tmp_path), cwd=tmp_path)


def test_feedback_line_nested_100000_deep(tmp_path):
    path = tmp_path / "deep.jsonl"
    path.write_text(json.dumps(GOOD_FEEDBACK) + "\n" + _deep(100_000) + "\n")
    assert "deep.jsonl:2: not valid JSON: nested too deeply" in _laffi(*COMMANDS["feedback"](path, tmp_path),
                                                                       cwd=tmp_path)  # fmt: skip


def test_yaml_nested_20000_deep(tmp_path):
    path = tmp_path / "deep.yaml"
    path.write_text(f"train: {_deep(20_000)}\n")
    assert "deep.yaml: not valid YAML: nested too deeply" in _laffi(*COMMANDS["config"](path, tmp_path), cwd=tmp_path)
    assert not (tmp_path / "out").exists()
