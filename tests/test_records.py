"""Records, JSONL and atomic writes."""

import os

import pytest

from laffi.errors import LaffiError
from laffi.records import FeedbackRecord, Generation, JsonlAppender, read_jsonl, write_json, write_jsonl


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
