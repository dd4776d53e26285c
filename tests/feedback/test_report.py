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


def test_annotator_summary_against_the_reference_verdict():
    from laffi.feedback.report import annotator_summary, compare_markdown

    # a: right answer, b: abstention on an answerable question, c: abstention on an unanswerable one (correct).
    records = [
        rec("a", "correct", "llm:m", feedback='Right. The right answer is "911".', prompt_tokens=90,
            completion_tokens=10, seconds=1.0),
        rec("b", "incorrect", "llm:m", pred="", feedback="No.", prompt_tokens=100, completion_tokens=0, seconds=3.0),
        rec("c", "incorrect", "llm:m", pred="", gold=(), feedback="The right answer is unanswerable."),
    ]  # fmt: skip
    s = annotator_summary(records, failures=2, training_seconds=12.6)
    assert (s["items"], s["failures"], s["abstentions"], s["called_correct"]) == (3, 2, 2, 1)
    assert s["agreement"] == pytest.approx(2 / 3) and s["cohen_kappa"] == pytest.approx(cohen_kappa(
        ["correct", "incorrect", "correct"], ["correct", "incorrect", "incorrect"]))
    assert s["per_class"] == {"correct": {"items": 2, "agreement": 0.5}, "incorrect": {"items": 1, "agreement": 1.0}}
    assert s["contradicts_gold"] == pytest.approx(1 / 3) and s["states_answer"] == pytest.approx(2 / 3)
    assert s["tokens_per_item"] == pytest.approx(200 / 3) and s["seconds_per_item"] == 2.0
    table = compare_markdown({"few-shot": s})
    assert "| few-shot | 3 (2) | 0.667 |" in table and "0.500 (of 2) / 1.000 (of 1) | n/a |" in table
    assert "| 13 |" in table and s["incorrect_prob_auc"] is None
    # Scored verdicts: the AUC of P(incorrect) against the reference's incorrect items (b only: ranked above a, c).
    for r, p in zip(records, (0.3, 0.9, 0.6), strict=True):
        r.meta["incorrect_prob"] = p
    s = annotator_summary(records)
    assert s["incorrect_prob_auc"] == 1.0 and "(of 1) | 1.000 |" in compare_markdown({"scored": s})
    records[2].meta["incorrect_prob"] = 0.95
    assert annotator_summary(records)["incorrect_prob_auc"] == 0.5


def test_annotators_compare_command(tmp_path, capsys):
    import json

    from laffi.cli import main
    from laffi.files import write_jsonl

    ref = [rec("a", "correct", "reference"), rec("b", "incorrect", "reference", pred="")]
    bad = [rec("a", "incorrect", "llm:m"), rec("b", "incorrect", "llm:m", pred="")]
    write_jsonl(tmp_path / "ref.jsonl", ref)
    write_jsonl(tmp_path / "bad.jsonl", bad)
    write_jsonl(tmp_path / "bad.failures.jsonl", [])
    main(["annotators-compare", "--feedback", f"reference={tmp_path / 'ref.jsonl'}", "--feedback",
          f"few-shot={tmp_path / 'bad.jsonl'}", "--out", str(tmp_path / "cmp.json")])  # fmt: skip
    text = capsys.readouterr().out
    assert "| reference | 2 (n/a) | 1.000 | 1.000 |" in text and "| few-shot | 2 (0) | 0.500 | 0.000 |" in text
    assert set(json.loads((tmp_path / "cmp.json").read_text())) == {"reference", "few-shot"}
    with pytest.raises(SystemExit):
        main(["annotators-compare", "--feedback", "no-equals-sign"])
    assert capsys.readouterr().err == "laffi: error: --feedback: expected NAME=FILE, got 'no-equals-sign'\n"
