"""feedback-report: agreement, Cohen's kappa, contradictions with the gold answers, cost, simulated label."""

import math

import pytest

from laffi.feedback.report import cohen_kappa, contradiction, feedback_report, filter_contradictions, report_markdown
from laffi.records import FeedbackRecord


def rec(qid, verdict, who, pred="911", gold=("911",), feedback="ok", **meta):
    return FeedbackRecord(id=qid, question="q", context="c", predicted_answer=pred, gold_answers=list(gold),
                          verdict=verdict, feedback=feedback, annotator=who, template_version="t",
                          meta=meta)  # fmt: skip


def test_cohen_kappa_exact():
    # 4 items: observed agreement 3/4; marginals a = (c, c, i, i), b = (c, i, i, i): expected = (2*1 + 2*3)/16 = 1/2.
    assert cohen_kappa(["c", "c", "i", "i"], ["c", "i", "i", "i"]) == pytest.approx(0.5)
    assert cohen_kappa(["c", "i"], ["c", "i"]) == 1.0 and cohen_kappa(["c", "c"], ["c", "c"]) == 1.0
    assert cohen_kappa(["c", "i"], ["i", "c"]) == pytest.approx(-1.0) and math.isnan(cohen_kappa([], []))


def test_contradictions():
    assert contradiction(rec("a", "correct", "llm:m", pred="911")) is None
    assert "gold answers make the answer incorrect" in contradiction(rec("a", "correct", "llm:m", pred="1066"))
    wrong_stated = rec("a", "incorrect", "llm:m", pred="1066", feedback='No. The right answer is "1200".')
    assert "not a gold answer" in contradiction(wrong_stated)
    assert contradiction(rec("a", "incorrect", "llm:m", pred="1066", feedback='The right answer is "911".')) is None
    unans = rec("b", "incorrect", "llm:m", pred="1066", gold=(), feedback='The right answer is "Rollo".')
    assert "question is unanswerable" in contradiction(unans)
    assert contradiction(rec("b", "correct", "llm:m", pred="", gold=())) is None


def test_report_agreement_cost_and_simulated_label():
    human = [rec("a", "correct", "simulated-human:x"), rec("b", "incorrect", "simulated-human:x", pred="1066"),
             rec("c", "incorrect", "simulated-human:x", pred="1066"), rec("z", "correct", "simulated-human:x")]
    ai = [rec("a", "correct", "llm:m", prompt_tokens=100, completion_tokens=20, seconds=2.0),
          rec("b", "correct", "llm:m", pred="1066", prompt_tokens=90, completion_tokens=10, seconds=1.0),
          rec("c", "incorrect", "llm:m", pred="1066", prompt_tokens=80, completion_tokens=0, seconds=3.0)]
    rep = feedback_report(human, ai, failures=2)
    assert rep["both"] == 3 and rep["agreement"] == pytest.approx(2 / 3)
    # human (c, i, i) vs ai (c, c, i): observed 2/3, expected (1*2 + 2*1)/9 = 4/9 -> kappa = (2/3-4/9)/(5/9) = 0.4
    assert rep["cohen_kappa"] == pytest.approx(0.4)
    assert rep["ai_contradicts_gold"] == 1 and list(rep["ai_contradictions"]) == ["b"]
    assert rep["cost"]["ai_tokens_per_item"] == 100 and rep["cost"]["ai_seconds_per_item"] == 2.0
    assert rep["cost"]["human_minutes_per_item"] is None and rep["human_is_simulated"]
    md = report_markdown(rep)
    assert "The human side is SIMULATED" in md and "2 unparsed replies" in md and "`b`" in md
    assert [r.id for r in filter_contradictions(ai)] == ["a", "c"]
    timed = feedback_report([rec("a", "correct", "human:ann", seconds=90.0)], ai)
    assert timed["cost"]["human_minutes_per_item"] == 1.5 and not timed["human_is_simulated"]
    assert "SIMULATED" not in report_markdown(timed)
