"""Records, JSONL and atomic writes."""

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from laffi import files
from laffi.errors import LaffiError
from laffi.files import JsonlAppender, printable, read_json, write_json, write_jsonl
from laffi.records import FeedbackRecord, Generation, read_jsonl


def test_jsonl_roundtrip(tmp_path):
    recs = [Generation("a", "raw a", "A"), Generation("b", "raw ü", "")]
    write_jsonl(tmp_path / "g.jsonl", recs)
    assert read_jsonl(tmp_path / "g.jsonl", Generation) == recs


def test_appender_drops_torn_tail_and_resumes(tmp_path):
    path = tmp_path / "p.jsonl"
    with JsonlAppender(path) as app:
        app.append(Generation("a", "r", "A"))
    with open(path, "a") as f:
        f.write('{"id": "b", "raw"')  # a crash mid-line
    assert [g.id for g in read_jsonl(path, Generation, tolerate_torn_tail=True)] == ["a"]
    with pytest.raises(LaffiError, match=r"p.jsonl:2: not valid JSON"):
        read_jsonl(path, Generation)
    with JsonlAppender(path) as app:
        app.append(Generation("b", "r", "B"))
    assert [g.id for g in read_jsonl(path, Generation)] == ["a", "b"]


def test_typed_fields_are_checked(tmp_path):
    path = tmp_path / "f.jsonl"
    path.write_text('{"id": "a", "raw": 3, "answer": ""}\n')
    with pytest.raises(LaffiError, match=r"f.jsonl:1: field 'raw' has the wrong type"):
        read_jsonl(path, Generation)
    path.write_text('{"id": "a", "raw": "x"}\n')
    with pytest.raises(LaffiError, match="missing field 'answer'"):
        read_jsonl(path, Generation)
    path.write_text('{"id": "a", "question": "q", "context": "c", "predicted_answer": "", "gold_answers": [1], '
                    '"verdict": "correct", "feedback": "f", "annotator": "x", "template_version": "v"}\n')  # fmt: skip
    with pytest.raises(LaffiError, match="gold_answers"):
        read_jsonl(path, FeedbackRecord)


def test_atomic_write_leaves_no_temporary_files(tmp_path):
    write_json(tmp_path / "out.json", {"a": 1})
    assert os.listdir(tmp_path) == ["out.json"]
    assert oct((tmp_path / "out.json").stat().st_mode & 0o777) != oct(0o600)


# ---------------------------------------------------------------------------------------------- bad input files


def test_printable_keeps_a_path_on_one_line():
    assert printable("runs/a.json") == "runs/a.json"
    assert printable("two\nlines\t.json") == "two\\nlines\\t.json"
    assert printable("bad\udcffbyte.json") == "bad\\udcffbyte.json"  # an undecodable byte of a file name
    assert printable("sep\u2028.json") == "sep\\u2028.json"  # str.splitlines() splits on U+2028


def test_newline_in_a_file_name_is_escaped_in_the_error(tmp_path):
    path = tmp_path / "two\nlines.json"
    path.write_text("[")
    with pytest.raises(LaffiError) as e:
        read_json(path)
    assert "two\\nlines.json: not valid JSON" in str(e.value) and "\n" not in str(e.value)


def test_non_regular_files_are_refused_before_reading(tmp_path):
    os.mkfifo(tmp_path / "pipe")  # opening it for reading would wait for a writer
    (tmp_path / "loop").symlink_to("loop")
    cases = [(tmp_path / "pipe", "not a regular file (a FIFO)"), (tmp_path / "loop", "cannot open (a symlink loop)"),
             (tmp_path, "is a directory, expected a JSON")]  # fmt: skip
    if Path("/dev/zero").exists():
        cases.append((Path("/dev/zero"), "not a regular file (a character device)"))
    for path, message in cases:
        for read in (lambda p: read_json(p), lambda p: read_jsonl(p, Generation)):
            with pytest.raises(LaffiError, match=re.escape(message)):
                read(path)


def test_files_over_the_size_cap_are_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(files, "MAX_INPUT_BYTES", 1024**2)
    path = tmp_path / "big.json"
    path.write_text(json.dumps(["x" * 1024**2]))
    with pytest.raises(LaffiError, match=r"big.json: too large \(1.0 MiB; the limit is 1.0 MiB\)"):
        read_json(path)


def test_deep_nesting_and_long_integers_are_one_line_errors(tmp_path):
    path = tmp_path / "deep.json"
    path.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(LaffiError, match=r"deep.json: not valid JSON: nested too deeply$"):
        read_json(path)
    path.write_text('{"id": "a", "raw": "r", "answer": "A"}\n' + "[" * 100_000 + "]" * 100_000 + "\n")
    with pytest.raises(LaffiError, match=r"deep.json:2: not valid JSON: nested too deeply$"):
        read_jsonl(path, Generation)
    path.write_text('{"answer_start": ' + "7" * 5000 + "}")
    with pytest.raises(LaffiError, match=r"not valid JSON: a number with more than 4,300 digits$"):
        read_json(path)


def test_lone_surrogates_are_refused_when_read(tmp_path):
    path = tmp_path / "p.json"
    path.write_text('{"q1": "ok \\ud83d\\ude00", "q\\ud8002": "x"}')  # a valid pair, then a lone half in a key
    with pytest.raises(LaffiError, match=r"p.json: not valid JSON: top level: a key: lone surrogate"):
        read_json(path)
    path.write_text('{"data": [{"id": "x\\udc00"}]}')
    with pytest.raises(LaffiError, match=r"p.json: not valid JSON: data\[0\].id: lone surrogate"):
        read_json(path)
    path.write_text('{"q1": "ok \\ud83d\\ude00", "q2": "\\\\ud800 is only text"}')  # escaped backslash: no surrogate
    assert read_json(path)["q2"] == "\\ud800 is only text"
    path.write_text('{"id": "a", "raw": "\\ud800", "answer": ""}\n')
    with pytest.raises(LaffiError, match=r"p.json:1: not valid JSON: raw: lone surrogate"):
        read_jsonl(path, Generation)


def test_text_that_cannot_be_written_leaves_nothing_behind(tmp_path):
    with pytest.raises(LaffiError, match="cannot write a lone surrogate"):
        write_json(tmp_path / "new" / "out.json", {"q1": "\ud800"})
    assert list(tmp_path.iterdir()) == []


def test_feedback_meta_fields_are_checked(tmp_path):
    good = {"id": "a", "question": "q", "context": "c", "predicted_answer": "", "gold_answers": [],
            "verdict": "correct", "feedback": "f", "annotator": "x", "template_version": "v"}  # fmt: skip
    path = tmp_path / "f.jsonl"
    for meta, message in [({"prompt_tokens": "12"}, "field 'meta.prompt_tokens' must be an integer >= 0, got \"12\""),
                          ({"completion_tokens": True}, "field 'meta.completion_tokens' must be an integer >= 0"),
                          ({"completion_tokens": -1}, "field 'meta.completion_tokens' must be an integer >= 0"),
                          ({"seconds": "1.5"}, "field 'meta.seconds' must be a finite number >= 0"),
                          ({"seconds": float("nan")}, "field 'meta.seconds' must be a finite number >= 0, got NaN"),
                          ({"seconds": -2}, "field 'meta.seconds' must be a finite number >= 0")]:  # fmt: skip
        path.write_text(json.dumps(good) + "\n" + json.dumps({**good, "meta": meta}) + "\n")
        with pytest.raises(LaffiError, match=re.escape(f"f.jsonl:2: {message}")):
            read_jsonl(path, FeedbackRecord)
    path.write_text(json.dumps({**good, "meta": {"prompt_tokens": 3, "completion_tokens": 0, "seconds": 1.5,
                                                 "raw": "anything", "f1": 0.5}}) + "\n")  # fmt: skip
    assert read_jsonl(path, FeedbackRecord)[0].meta["seconds"] == 1.5


# ---------------------------------------------------------------------------------------------- killed writers


KILLED_WRITER = """
import os, signal, sys
from laffi import files, records
os.fsync = lambda fd: os.kill(os.getpid(), signal.SIGKILL)  # dies after writing, before the rename
files.write_json(sys.argv[1], {"big": "x" * 100000})
"""


def test_a_killed_writers_temporary_is_removed_by_the_next_write(tmp_path):
    out = tmp_path / "out.json"
    r = subprocess.run([sys.executable, "-c", KILLED_WRITER, str(out)], timeout=60)
    assert r.returncode == -signal.SIGKILL
    orphans = [p for p in tmp_path.iterdir() if p.name.startswith(".out.json.")]
    assert len(orphans) == 1 and orphans[0].stat().st_size > 100000 and not out.exists()
    # Temporaries of live writers stay: another process may be writing the same file right now.
    with subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"]) as live:
        try:
            mine_live = tmp_path / f".out.json.{live.pid}.abcd1234.tmp"
            mine_live.write_text("partial")
            others = [tmp_path / ".out.json.x.12345678.tmp", tmp_path / f".other.json.{2**22 + 1}.abcd1234.tmp"]
            for p in others:  # another output's temporary (`out.json.x`, `other.json`), whatever its age
                p.write_text("not ours")
            write_json(out, {"a": 1})
            assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["out.json", mine_live.name,
                                                                         *(p.name for p in others)])  # fmt: skip
        finally:
            live.kill()
    write_json(out, {"a": 2})  # now that its writer is gone
    assert not mine_live.exists()


def test_temporaries_of_this_pid_from_an_earlier_process_are_removed(tmp_path):
    # In a container the same small pid comes back run after run: a temporary with our pid that is not a write in
    # progress here is an orphan of an earlier process.
    orphan = tmp_path / f".out.json.{os.getpid()}.abcd1234.tmp"
    orphan.write_text("partial")
    legacy = tmp_path / ".out.json.abcd1234.tmp"  # a temporary without a pid in its name, older than this process
    legacy.write_text("partial")
    old = files._STARTED - 60
    os.utime(legacy, (old, old))
    write_json(tmp_path / "out.json", {"a": 1})
    assert os.listdir(tmp_path) == ["out.json"]


def test_appender_refuses_a_non_regular_file(tmp_path):
    os.mkfifo(tmp_path / "pipe.jsonl")
    with pytest.raises(LaffiError, match=r"pipe.jsonl: not a regular file \(a FIFO\)"):
        JsonlAppender(tmp_path / "pipe.jsonl")


def test_typed_readers_keep_ids_and_names_on_one_line(tmp_path):
    from laffi.records import Question, read_feedback, read_predictions

    path = tmp_path / "pre\ndictions.json"
    path.write_text(json.dumps({"q\n1": "a"}))
    with pytest.raises(LaffiError) as e:
        read_predictions(path, [Question("q1", "t", "c", "q")])
    assert str(e.value).endswith("pre\\ndictions.json: 'q\\n1': unknown question id (1 unknown in all)")
    path = tmp_path / "feed\nback.jsonl"
    record = {"id": "a\u2028b", "question": "q", "context": "c", "predicted_answer": "", "gold_answers": [],
              "verdict": "maybe", "feedback": "f", "annotator": "x", "template_version": "v"}  # fmt: skip
    path.write_text(json.dumps(record) + "\n")
    with pytest.raises(LaffiError) as e:
        read_feedback(path)
    assert len(str(e.value).splitlines()) == 1 and "feed\\nback.jsonl: record 1 ('a\\u2028b'): verdict" in str(e.value)
