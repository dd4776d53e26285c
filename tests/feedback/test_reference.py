"""The reference annotator writes exact, deterministic feedback."""

from laffi import prompts
from laffi.feedback import reference
from laffi.records import Question

CTX = "The Normans came from Normandy. Their leader Rollo swore fealty in 911. They spoke Norman French."
ANS = Question(id="a", title="Normans", context=CTX, question="When did Rollo swear fealty?", answers=["911", "in 911"],
               answer_starts=[CTX.index("911"), CTX.index("in 911")])  # fmt: skip
IMP = Question(id="b", title="Normans", context=CTX, question="When did Rollo die?", is_impossible=True)


def test_supporting_sentence():
    assert reference.supporting_sentence(CTX, CTX.index("911")) == "Their leader Rollo swore fealty in 911."
    assert reference.supporting_sentence(CTX, 0) == "The Normans came from Normandy."
    assert reference.supporting_sentence(CTX, CTX.index("French")) == "They spoke Norman French."


def test_correct_answer():
    r = reference.annotate(ANS, "in 911")
    assert r.verdict == "correct" and r.annotator == "reference" and r.meta["f1"] == 1.0
    assert r.feedback == ('Verdict: correct. "in 911" answers the question. The passage says: "Their leader Rollo '
                          'swore fealty in 911." The right answer is "911".')  # fmt: skip


def test_wrong_partial_and_abstained_answers():
    assert reference.annotate(ANS, "1066").feedback.startswith('Verdict: incorrect. "1066" is wrong. The passage says')
    partial = reference.annotate(ANS, "swore fealty in 911")  # best F1 = 2/3 (against "in 911") < 0.8
    assert partial.verdict == "incorrect" and '"swore fealty in 911" is only partly right.' in partial.feedback
    assert partial.meta["f1"] == 0.6667
    assert reference.annotate(ANS, "swore fealty in 911", threshold=0.5).verdict == "correct"
    abst = reference.annotate(ANS, "")
    assert abst.feedback.startswith("Verdict: incorrect. Abstaining is wrong: the passage answers this question.")


def test_unanswerable_question():
    right = reference.annotate(IMP, "")
    assert right.feedback == ("Verdict: correct. The passage does not answer this question, so abstaining is right. "
                              "The right answer is unanswerable.")  # fmt: skip
    wrong = reference.annotate(IMP, "911")
    assert wrong.verdict == "incorrect" and wrong.is_impossible and wrong.gold_answers == []
    assert wrong.feedback == ('Verdict: incorrect. "911" is wrong: the passage does not answer this question. '
                              "The right answer is unanswerable.")  # fmt: skip


def test_feedback_parses_back_to_verdict_and_answer():
    for q, pred in [(ANS, "1066"), (ANS, "911"), (IMP, ""), (IMP, "x")]:
        r = reference.annotate(q, pred)
        verdict, right = prompts.parse_feedback(r.feedback)
        assert verdict == r.verdict
        assert right == (q.answers[0] if q.answers else "")
