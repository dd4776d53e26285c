"""Tests for laffi.data: loading/validating SQuAD 2.0, round trip, article split, sampling. Fast, no torch."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from laffi.data import (
    articles,
    bundled_data_path,
    load_squad,
    resolve_data_path,
    sample_questions,
    sample_training,
    split_by_article,
    write_squad,
)
from laffi.errors import LaffiError

POOL = Path(__file__).parents[1].parent / "shared/data/squad_v2/squad_v2_pool.json"
needs_pool = pytest.mark.skipif(not POOL.is_file(), reason=f"SQuAD 2.0 pool not present at {POOL}")


@pytest.fixture(scope="module")
def pool():
    return load_squad(POOL)


# ---------------------------------------------------------------------------------------------- real data


def test_data_module_imports_no_torch():
    # A fresh interpreter: other tests in this session may already have imported torch.
    root = Path(__file__).parents[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")]))}
    code = "import sys, laffi.data; print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_bundled_excerpt_counts():
    qs = load_squad(bundled_data_path())
    assert len(qs) == 423
    assert sum(q.is_impossible for q in qs) == 235
    assert articles(qs) == ["Normans", "1973_oil_crisis", "Islamism"]
    assert Counter(q.title for q in qs) == {"Normans": 208, "1973_oil_crisis": 106, "Islamism": 109}


def test_resolve_data_path():
    assert resolve_data_path("bundled") == bundled_data_path()
    assert resolve_data_path("") == bundled_data_path()
    assert resolve_data_path("some/file.json") == Path("some/file.json")


@needs_pool
def test_pool_counts(pool):
    assert len(pool) == 4449
    assert sum(q.is_impossible for q in pool) == 2342
    assert len(articles(pool)) == 12
    assert articles(pool)[0] == "Normans" and articles(pool)[-1] == "Islamism"


@needs_pool
def test_pool_answers_are_context_spans(pool):
    for q in pool:
        assert q.is_impossible == (not q.answers)
        for text, start in zip(q.answers, q.answer_starts, strict=True):
            assert q.context[start : start + len(text)] == text


def test_round_trip_bundled(tmp_path):
    qs = load_squad(bundled_data_path())
    write_squad(qs, tmp_path / "out.json")
    assert load_squad(tmp_path / "out.json") == qs
    assert json.loads((tmp_path / "out.json").read_text(encoding="utf-8"))["version"] == "v2.0"


def test_round_trip_keeps_order_of_interleaved_titles(tmp_path):
    qs = load_squad(bundled_data_path())
    mixed = [qs[0], qs[-1], qs[1]]  # Normans, Islamism, Normans: must not be regrouped
    write_squad(mixed, tmp_path / "out.json")
    assert load_squad(tmp_path / "out.json") == mixed


@needs_pool
def test_round_trip_pool(pool, tmp_path):
    write_squad(pool, tmp_path / "pool.json")
    assert load_squad(tmp_path / "pool.json") == pool


# ---------------------------------------------------------------------------------------------- split / sample


@needs_pool
def test_split_by_article_never_shares_an_article(pool):
    train, evaluation = split_by_article(pool, eval_articles=3, seed=0)
    assert len(train) + len(evaluation) == len(pool)
    assert len(articles(evaluation)) == 3
    assert not set(articles(train)) & set(articles(evaluation))
    assert {q.id for q in train} | {q.id for q in evaluation} == {q.id for q in pool}


@needs_pool
def test_split_by_article_is_seeded(pool):
    assert split_by_article(pool, 2, seed=1) == split_by_article(pool, 2, seed=1)
    assert articles(split_by_article(pool, 2, seed=1)[1]) != articles(split_by_article(pool, 2, seed=2)[1])


def test_split_by_article_needs_a_training_article():
    qs = load_squad(bundled_data_path())
    train, evaluation = split_by_article(qs, 2, seed=0)
    assert len(articles(train)) == 1 and len(articles(evaluation)) == 2
    with pytest.raises(LaffiError, match="3 article"):
        split_by_article(qs, 3, seed=0)


def test_sample_questions_is_deterministic_and_ordered():
    qs = load_squad(bundled_data_path())
    a = sample_questions(qs, 50, seed=7)
    assert a == sample_questions(qs, 50, seed=7)
    assert a != sample_questions(qs, 50, seed=8)
    assert len(a) == 50 and len({q.id for q in a}) == 50
    order = {q.id: i for i, q in enumerate(qs)}
    assert [order[q.id] for q in a] == sorted(order[q.id] for q in a)
    assert sample_questions(qs, None, seed=7) == qs
    assert sample_questions(qs, 10_000, seed=7) == qs


def test_sample_training_by_question_or_by_whole_passage():
    from laffi.records import Question

    sizes = {"A": 3, "B": 2, "C": 1, "D": 4}
    qs = [Question(id=f"{p.lower()}{i}", title="T", context=f"passage {p}", question="?")
          for p, k in sizes.items() for i in range(1, k + 1)]  # fmt: skip
    qs = qs[::2] + qs[1::2]  # a passage's questions are not next to each other in the file
    ids = [q.id for q in qs]
    assert ids == ["a1", "a3", "b2", "d1", "d3", "a2", "b1", "c1", "d2", "d4"]
    # 'question' (the default): the split's sample as it always was, in the order drawn
    assert sample_training(qs, 5, seed=0) == random.Random(0).sample(qs, 5)
    assert [q.id for q in sample_training(qs, 5, seed=0, by="question")] == ["b1", "d4", "a1", "b2", "d3"]
    # 'passage': passages D, A, B, C in the seed's order, each whole and in a seeded order; the last one cut to fit
    assert [q.id for q in sample_training(qs, 6, seed=0, by="passage")] == ["d1", "d3", "d4", "d2", "a1", "a2"]
    everything = [q.id for q in sample_training(qs, 10, seed=0, by="passage")]
    assert everything == ["d1", "d3", "d4", "d2", "a1", "a2", "a3", "b2", "b1", "c1"]
    for n in range(11):  # n questions, nested prefixes of one order, at most one passage cut
        sample = [q.id for q in sample_training(qs, n, seed=0, by="passage")]
        assert sample == everything[:n]
        cut = {p for p in "abcd" if 0 < sum(i[0] == p for i in sample) < sizes[p.upper()]}
        assert len(cut) <= 1
    assert [q.id for q in sample_training(qs, 4, seed=1, by="passage")] == ["c1", "a2", "a1", "a3"]
    with pytest.raises(LaffiError, match="11 training questions from 10"):
        sample_training(qs, 11, seed=0, by="passage")
    with pytest.raises(LaffiError, match="data.sample_by"):
        sample_training(qs, 3, seed=0, by="article")


# ---------------------------------------------------------------------------------------------- validation


def _good() -> dict[str, Any]:
    context = "The Normans were in Normandy."
    return {
        "version": "v2.0",
        "data": [
            {
                "title": "T",
                "paragraphs": [
                    {
                        "context": context,
                        "qas": [
                            {
                                "id": "q1",
                                "question": "Where were the Normans?",
                                "answers": [{"text": "Normandy", "answer_start": 20}],
                                "is_impossible": False,
                            },
                            {
                                "id": "q2",
                                "question": "Where were the Danes?",
                                "answers": [],
                                "plausible_answers": [{"text": "Normandy", "answer_start": 20}],
                                "is_impossible": True,
                            },
                        ],
                    }
                ],
            }
        ],
    }


def _qa(doc: dict[str, Any], i: int = 0) -> dict[str, Any]:
    return doc["data"][0]["paragraphs"][0]["qas"][i]


def test_good_minimal_file(tmp_path):
    path = tmp_path / "good.json"
    path.write_text(json.dumps(_good()), encoding="utf-8")
    qs = load_squad(path)
    assert [q.id for q in qs] == ["q1", "q2"]
    assert qs[0].answers == ["Normandy"] and qs[0].answer_starts == [20] and not qs[0].is_impossible
    assert qs[1].answers == [] and qs[1].is_impossible


def test_missing_version_and_is_impossible_are_accepted(tmp_path):
    doc = _good()
    del doc["version"], doc["data"][0]["title"], _qa(doc, 0)["is_impossible"], _qa(doc, 1)["is_impossible"]
    path = tmp_path / "lenient.json"
    path.write_text(json.dumps(doc), encoding="utf-8")
    qs = load_squad(path)
    assert [q.is_impossible for q in qs] == [False, True]
    assert qs[0].title == ""


DELETE = object()  # sentinel for _set: remove the field instead of replacing it


def _set(doc: dict[str, Any], dotted: str, value: Any) -> None:
    """Set (or, with value=DELETE, remove) a field named by a path like data.0.paragraphs.0.context."""
    *parents, last = dotted.split(".")
    node: Any = doc
    for part in parents:
        node = node[int(part)] if isinstance(node, list) else node[part]
    if value is DELETE:
        del node[last]
    else:
        node[int(last) if isinstance(node, list) else last] = value


QA = "data.0.paragraphs.0.qas.0"

# (case name, field to change, new value, JSON path the message must name)
BAD_FIELDS = [
    ("wrong_version", "version", "v1.1", "version"),
    ("data_not_list", "data", {"title": "T"}, "data"),
    ("data_missing", "data", DELETE, "data"),
    ("missing_context", "data.0.paragraphs.0.context", DELETE, "data[0].paragraphs[0].context"),
    ("empty_context", "data.0.paragraphs.0.context", "  ", "data[0].paragraphs[0].context"),
    ("missing_id", f"{QA}.id", DELETE, "data[0].paragraphs[0].qas[0].id"),
    ("duplicate_id", "data.0.paragraphs.0.qas.1.id", "q1", "data[0].paragraphs[0].qas[1].id"),
    ("empty_question", f"{QA}.question", "", "data[0].paragraphs[0].qas[0].question"),
    ("question_not_string", f"{QA}.question", 42, "data[0].paragraphs[0].qas[0].question"),
    ("start_past_context", f"{QA}.answers.0.answer_start", 25, "data[0].paragraphs[0].qas[0].answers[0].answer_start"),
    ("start_negative", f"{QA}.answers.0.answer_start", -1, "data[0].paragraphs[0].qas[0].answers[0].answer_start"),
    ("start_not_int", f"{QA}.answers.0.answer_start", "20", "data[0].paragraphs[0].qas[0].answers[0].answer_start"),
    ("text_not_span", f"{QA}.answers.0.text", "Brittany", "data[0].paragraphs[0].qas[0].answers[0].text"),
    ("answer_missing_text", f"{QA}.answers.0.text", DELETE, "data[0].paragraphs[0].qas[0].answers[0].text"),
    ("answerable_without_answers", f"{QA}.answers", [], "data[0].paragraphs[0].qas[0].answers"),
    ("is_impossible_not_bool", f"{QA}.is_impossible", "no", "data[0].paragraphs[0].qas[0].is_impossible"),
    ("paragraphs_missing", "data.0.paragraphs", DELETE, "data[0].paragraphs"),
    ("qas_not_list", "data.0.paragraphs.0.qas", "q1", "data[0].paragraphs[0].qas"),
]


def _assert_one_line_error(path: Path, field_path: str | None) -> str:
    with pytest.raises(LaffiError) as info:
        load_squad(path)
    msg = str(info.value)
    assert "\n" not in msg, msg
    assert path.name in msg, msg
    if field_path is not None:
        assert f": {field_path}:" in msg, msg
    return msg


@pytest.mark.parametrize("name, field, value, field_path", BAD_FIELDS, ids=[case[0] for case in BAD_FIELDS])
def test_bad_field_is_one_line_error(tmp_path, name, field, value, field_path):
    doc = _good()
    _set(doc, field, value)
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(doc), encoding="utf-8")
    _assert_one_line_error(path, field_path)


def test_impossible_with_answers_is_rejected(tmp_path):
    doc = _good()
    _qa(doc, 0)["is_impossible"] = True
    path = tmp_path / "impossible.json"
    path.write_text(json.dumps(doc), encoding="utf-8")
    assert "is_impossible is true" in _assert_one_line_error(path, "data[0].paragraphs[0].qas[0].answers")


def test_duplicate_id_names_both_places(tmp_path):
    doc = _good()
    doc["data"].append(json.loads(json.dumps(doc["data"][0])))  # same ids again in a second article
    path = tmp_path / "dup.json"
    path.write_text(json.dumps(doc), encoding="utf-8")
    msg = _assert_one_line_error(path, "data[1].paragraphs[0].qas[0].id")
    assert "data[0].paragraphs[0].qas[0].id" in msg


def test_version_error_says_what_is_expected(tmp_path):
    doc = _good()
    doc["version"] = "1.1"
    path = tmp_path / "v.json"
    path.write_text(json.dumps(doc), encoding="utf-8")
    assert 'expected "v2.0"' in _assert_one_line_error(path, "version")


def test_top_level_not_an_object(tmp_path):
    path = tmp_path / "list.json"
    path.write_text(json.dumps([_good()]), encoding="utf-8")
    assert "top level" in _assert_one_line_error(path, None)


def test_no_questions(tmp_path):
    path = tmp_path / "empty.json"
    path.write_text(json.dumps({"version": "v2.0", "data": []}), encoding="utf-8")
    assert "no questions" in _assert_one_line_error(path, "data")


def test_not_json(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text('{"version": "v2.0", "data": [', encoding="utf-8")
    assert "not valid JSON" in _assert_one_line_error(path, None)


def test_not_utf8(tmp_path):
    path = tmp_path / "latin1.json"
    path.write_bytes(json.dumps(_good()).replace("Normans", "Norm\u00e4ns").encode("latin-1"))
    assert "not UTF-8" in _assert_one_line_error(path, None)


def test_missing_file(tmp_path):
    assert "file not found" in _assert_one_line_error(tmp_path / "nope.json", None)


def test_answer_start_with_5000_digits(tmp_path):
    path = tmp_path / "digits.json"
    text = json.dumps(_good()).replace('"answer_start": 20', '"answer_start": ' + "9" * 5000, 1)
    path.write_text(text, encoding="utf-8")
    assert "not valid JSON: a number with more than 4,300 digits" in _assert_one_line_error(path, None)


def test_lone_surrogate_names_the_field(tmp_path):
    doc = _good()
    _qa(doc, 0)["id"] = "q\ud800"
    path = tmp_path / "surrogate.json"
    path.write_text(json.dumps(doc), encoding="utf-8")  # json.dumps writes the half as the escape \ud800
    assert "data[0].paragraphs[0].qas[0].id: lone surrogate" in _assert_one_line_error(path, None)


def test_nested_too_deeply(tmp_path):
    path = tmp_path / "deep.json"
    path.write_text('{"version": "v2.0", "data": ' + "[" * 100_000 + "]" * 100_000 + "}", encoding="utf-8")
    assert "nested too deeply" in _assert_one_line_error(path, None)


def test_newline_in_the_file_name_is_escaped(tmp_path):
    doc = _good()
    _qa(doc, 0)["question"] = " "
    path = tmp_path / "two\nlines.json"
    path.write_text(json.dumps(doc), encoding="utf-8")
    with pytest.raises(LaffiError) as info:
        load_squad(path)
    assert str(info.value).startswith(f"{tmp_path}/two\\nlines.json: data[0].paragraphs[0].qas[0].question: empty")
