"""The hybrid mix: exact counts, seeded and nested splits, provenance kept, bad input named."""

import pytest

from laffi.errors import LaffiError
from laffi.feedback.mix import mix_feedback
from laffi.records import FeedbackRecord


def rec(qid: str, who: str) -> FeedbackRecord:
    return FeedbackRecord(id=qid, question="q", context="c", predicted_answer="", gold_answers=[], verdict="correct",
                          feedback=f"{who} on {qid}", annotator=who, template_version="t")  # fmt: skip


HUMAN = [rec(f"q{i}", "human:ann") for i in range(10)] + [rec("only-human", "human:ann")]
AI = [rec("only-ai", "llm:m")] + [rec(f"q{i}", "llm:m") for i in reversed(range(10))]


@pytest.mark.parametrize("fraction, n_human", [(0.0, 0), (0.25, 2), (0.5, 5), (0.75, 8), (1.0, 10)])
def test_counts_and_provenance(fraction, n_human):
    records, split = mix_feedback(HUMAN, AI, fraction, seed=3)
    assert [r.id for r in records] == [f"q{i}" for i in range(10)]  # the human list's order, ids in both lists only
    humans = [r for r in records if r.annotator == "human:ann"]
    assert len(humans) == n_human == split["human"] and split["ai"] == 10 - n_human and split["questions"] == 10
    assert sorted(split["human_ids"]) == sorted(r.id for r in humans)
    assert all(r.feedback == f"{r.annotator} on {r.id}" for r in records)  # each record is the one of its side
    assert split["dropped_human_only"] == 1 and split["dropped_ai_only"] == 1 and split["seed"] == 3


def test_seeded_and_nested():
    a = mix_feedback(HUMAN, AI, 0.5, seed=1)[1]["human_ids"]
    assert a == mix_feedback(HUMAN, AI, 0.5, seed=1)[1]["human_ids"]
    assert a != mix_feedback(HUMAN, AI, 0.5, seed=2)[1]["human_ids"]
    small = set(mix_feedback(HUMAN, AI, 0.25, seed=1)[1]["human_ids"])
    assert small < set(a) < set(mix_feedback(HUMAN, AI, 0.75, seed=1)[1]["human_ids"])


def test_bad_fraction_and_duplicates():
    with pytest.raises(LaffiError, match="between 0 and 1"):
        mix_feedback(HUMAN, AI, 1.5, seed=0)
    with pytest.raises(LaffiError, match="'q1' appears twice"):
        mix_feedback(HUMAN + [rec("q1", "human:x")], AI, 0.5, seed=0)
