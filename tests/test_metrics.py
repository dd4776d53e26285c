"""SQuAD 2.0 scoring, checked on hand-computed cases against the official script's rules."""

import json

import pytest

from laffi.errors import LaffiError
from laffi.metrics import compute_exact, compute_f1, normalize_answer, squad_v2_scores
from laffi.records import Question


def q(qid, answers):
    return Question(id=qid, title="t", context="c", question="?", answers=answers, answer_starts=[0] * len(answers),
                    is_impossible=not answers)  # fmt: skip


def test_normalize_matches_official_order():
    assert normalize_answer("The  Norman-Conquest, of 1066!") == "normanconquest of 1066"
    assert normalize_answer("An apple a day") == "apple day"
    assert normalize_answer("  ") == ""


def test_exact_and_f1_single():
    assert compute_exact("the Normans", "Normans.") == 1
    assert compute_f1("10th and 11th centuries", "the 10th century") == pytest.approx(2 * (1 / 2) * (1 / 4) / (3 / 4))
    assert compute_f1("", "") == 1
    assert compute_f1("", "something") == 0
    assert compute_f1("Rollo", "") == 0
    # Duplicate tokens count with multiplicity (Counter intersection).
    assert compute_f1("a b b", "b b b") == pytest.approx(2 * (2 / 3) * (2 / 2) / (2 / 3 + 1))


def test_squad_v2_scores_exact_values():
    questions = [q("a", ["Rollo", "Rollo the Viking"]), q("b", ["1066"]), q("c", []), q("d", [])]
    preds = {"a": "Rollo the Walker", "b": "1066", "c": "", "d": "France", "unknown": "ignored"}
    out = squad_v2_scores(questions, preds)
    # a: EM 0, F1 max(2*(1/3)*1/(4/3)=0.5, 2*(2/3)*(2/3)/(4/3)=2/3) = 2/3 ; b: 1/1 ; c: 1/1 ; d: 0/0
    assert list(out) == ["exact", "f1", "total", "HasAns_exact", "HasAns_f1", "HasAns_total",
                         "NoAns_exact", "NoAns_f1", "NoAns_total"]  # fmt: skip
    assert out["exact"] == 50.0
    assert out["f1"] == pytest.approx(100 * (2 / 3 + 1 + 1 + 0) / 4)
    assert out["total"] == 4
    assert out["HasAns_exact"] == 50.0 and out["HasAns_f1"] == pytest.approx(100 * (2 / 3 + 1) / 2)
    assert out["NoAns_exact"] == 50.0 and out["NoAns_f1"] == 50.0 and out["NoAns_total"] == 2


def test_gold_answers_that_normalise_to_nothing_become_no_answer():
    # The official script drops gold answers like "the" and then treats the question as having "" as gold.
    out = squad_v2_scores([q("a", ["The"])], {"a": ""})
    assert out["exact"] == 100.0
    assert out["HasAns_total"] == 1  # still counted as HasAns: its answers list is non-empty


def test_keys_omitted_when_a_split_is_empty():
    out = squad_v2_scores([q("c", [])], {"c": ""})
    assert out == {"exact": 100.0, "f1": 100.0, "total": 1, "NoAns_exact": 100.0, "NoAns_f1": 100.0, "NoAns_total": 1}
    assert list(out) == ["exact", "f1", "total", "NoAns_exact", "NoAns_f1", "NoAns_total"]


def test_missing_prediction_and_wrong_type_are_errors():
    with pytest.raises(LaffiError, match="no prediction for 1 of 2"):
        squad_v2_scores([q("a", ["x"]), q("b", [])], {"a": "x"})
    with pytest.raises(LaffiError, match="must be a string"):
        squad_v2_scores([q("a", ["x"])], {"a": 3})


def test_score_reads_files_as_leniently_as_the_official_script(tmp_path):
    """Scoring checks structure, not answer offsets: the official script ignores answer_start."""
    from laffi.pipeline import stages

    data = {"version": "v2.0", "data": [{"title": "t", "paragraphs": [{"context": "Rollo came in 911.", "qas": [
        {"id": "a", "question": "Who?", "answers": [{"text": "Rollo", "answer_start": 99}], "is_impossible": False},
        {"id": "b", "question": "Why?", "answers": [], "is_impossible": True},
    ]}]}]}  # fmt: skip
    (tmp_path / "d.json").write_text(json.dumps(data))
    (tmp_path / "p.json").write_text(json.dumps({"a": "rollo", "b": "x"}))
    out = stages.score(tmp_path / "d.json", tmp_path / "p.json")
    assert (out["exact"], out["HasAns_exact"], out["NoAns_exact"]) == (50.0, 100.0, 0.0)
    with pytest.raises(LaffiError, match="answer_start"):
        from laffi.data import load_squad

        load_squad(tmp_path / "d.json")
