"""Feedback that states the right answer: one composed sentence (`prompts.right_answer_sentence`) that
`prompts.parse_feedback` reads back; every LLM annotator record with an incorrect verdict ends with it unless the model
already stated an answer (one agreeing with gold: nothing appended; a contradicting one: kept for the contradiction
filter, and counted); the share of parseable right answers per annotator (`report.answer_shares`)."""

import math

import pytest

from laffi import prompts
from laffi.config import AnnotateConfig
from laffi.feedback import llm, reference
from laffi.feedback.report import (
    annotator_summary,
    answer_shares,
    compare_markdown,
    contradiction,
    feedback_report,
    filter_contradictions,
    report_markdown,
    stated_answer_agrees,
)
from laffi.feedback.simulated import simulated_human_feedback
from laffi.files import write_jsonl
from laffi.metrics import normalize_answer
from laffi.pipeline import stages
from laffi.records import FeedbackRecord


def rec(verdict, feedback, gold=("911",), pred="1066", **meta):
    return FeedbackRecord(id="q", question="q", context="c",
                          predicted_answer=pred, gold_answers=list(gold), verdict=verdict, feedback=feedback,
                          annotator="llm:m", template_version="t", meta=meta)  # fmt: skip


@pytest.mark.parametrize("answer", ["1889", "U.S.", "Rollo, the Viking", ' "self" peptides', "to \"float\" (rise)",
                                    '"Hello" World', 'ends with a quote"', "two\nlines", "unanswerable"])  # fmt: skip
def test_sentence_parses_back_to_the_answer(answer):
    sentence = prompts.right_answer_sentence(answer)
    assert sentence.startswith('The right answer is "') and sentence.endswith('".')
    stated = prompts.parse_feedback(sentence)[1]
    assert stated == answer.strip() or normalize_answer(stated) == normalize_answer(answer)
    assert stated_answer_agrees(stated, [answer])


def test_sentence_for_an_unanswerable_question_reads_as_abstain():
    for empty in ("", "  "):
        assert prompts.right_answer_sentence(empty) == f"The right answer is {prompts.ABSTAIN_PHRASE}."
        assert prompts.parse_feedback(prompts.right_answer_sentence(empty))[1] == ""


def test_the_reference_annotator_states_the_same_sentence(excerpt_questions):
    # Gold answers with double quotes inside are among them: one form for every source.
    assert any('"' in a for q in excerpt_questions for a in q.answers)
    for q in excerpt_questions:
        r = reference.annotate(q, "")
        assert r.feedback.endswith(" " + prompts.right_answer_sentence(q.answers[0] if q.answers else ""))


@pytest.mark.parametrize("feedback, gold, expected", [
    ("Wrong", ["Normandy"], 'Wrong. The right answer is "Normandy".'),
    ("Wrong.", ["Normandy"], 'Wrong. The right answer is "Normandy".'),
    ("Not what the passage says:", ["Normandy"], 'Not what the passage says. The right answer is "Normandy".'),
    ("It makes it up.", [], "It makes it up. The right answer is unanswerable."),
    ('It says "x"', ['"self" peptides'], 'It says "x". The right answer is ""self" peptides".'),
    # A statement begun but not finished (a reply cut by max_new_tokens) would run into the sentence: cut before it.
    ('No. The right answer is "Norm', ["Normandy"], 'No. The right answer is "Normandy".'),
    # An unquoted statement does not parse; the sentence after it does.
    ("No, the right answer is Normandy.", ["Normandy"],
     'No, the right answer is Normandy. The right answer is "Normandy".'),
])  # fmt: skip
def test_appended_sentence_parses_back_to_gold(feedback, gold, expected):
    text, what = llm.with_right_answer("incorrect", feedback, gold)
    assert (text, what) == (expected, "appended")
    assert prompts.parse_feedback(text)[1] == (gold[0] if gold else "")
    assert contradiction(rec("incorrect", text, gold=tuple(gold), pred="Rome")) is None


@pytest.mark.parametrize("feedback, gold", [
    ('No. The right answer is "Normandy".', ["Normandy"]),
    ('No. The right answer is "the  normandy!"', ["Normandy", "France"]),  # equal after SQuAD normalisation
    ('No. The right answer is "France". Read again.', ["Normandy", "France"]),
    ("No, it should abstain. The right answer is unanswerable.", []),
])  # fmt: skip
def test_nothing_is_appended_to_an_agreeing_answer(feedback, gold):
    assert llm.with_right_answer("incorrect", feedback, gold) == (feedback, "agrees")


@pytest.mark.parametrize("feedback, gold", [
    ('No. The right answer is "Paris".', ["Normandy"]),
    ('No. The right answer is "Paris".', []),
    ("The right answer is unanswerable.", ["Normandy"]),
])  # fmt: skip
def test_a_contradicting_answer_is_left_for_the_contradiction_filter_and_counted(feedback, gold):
    assert llm.with_right_answer("incorrect", feedback, gold) == (feedback, "contradicts")
    r = rec("incorrect", feedback, gold=tuple(gold), pred="Rome", right_answer="contradicts")
    assert contradiction(r) is not None and filter_contradictions([r]) == []
    ok = rec("incorrect", 'The right answer is "Normandy".', gold=("Normandy",), pred="Rome")
    shares = answer_shares([r, ok])
    assert shares["states_non_gold_answer"] == 0.5 and shares["states_answer_incorrect"] == 1.0


def test_a_correct_verdict_gets_nothing_appended():
    assert llm.with_right_answer("correct", "Right.", ["911"]) == ("Right.", "none")
    assert llm.with_right_answer("correct", 'The right answer is "911".', ["911"])[1] == "agrees"


def test_shares_in_the_summaries_and_their_tables():
    records = [rec("incorrect", 'No. The right answer is "911".', right_answer="agrees"),
               rec("incorrect", "No.", right_answer="none"),
               rec("incorrect", 'No. The right answer is "1200".', right_answer="contradicts"),
               rec("correct", "Yes.", pred="911", right_answer="none"),
               rec("correct", 'Yes. The right answer is "911".', pred="911", right_answer="appended")]  # fmt: skip
    s = annotator_summary(records)
    assert s["states_answer"] == pytest.approx(3 / 5) and s["states_answer_incorrect"] == pytest.approx(2 / 3)
    assert s["incorrect_verdicts"] == 3 and s["states_non_gold_answer"] == pytest.approx(1 / 5)
    assert s["answer_appended"] == pytest.approx(1 / 5)
    assert "| 0.600 / 0.667 (of 3) |" in compare_markdown({"few-shot": s})
    none = annotator_summary([rec("correct", "Yes.", pred="911")])
    assert none["answer_appended"] is None and math.isnan(none["states_answer_incorrect"])
    assert "| 0.000 / n/a (of 0) |" in compare_markdown({"x": none})
    rep = feedback_report(records[:2], records)
    assert rep["right_answers"]["human"]["states_answer_incorrect"] == 0.5
    assert rep["right_answers"]["ai"] == answer_shares(records)
    md = report_markdown(rep)
    assert "- human feedback stating a parseable right answer: 0.500 of all records, 0.500 of the 2" in md
    assert "- AI feedback stating a parseable right answer: 0.600 of all records, 0.667 of the 3" in md


# ---------------------------------------------------------------------------------------------------- per annotator


def test_reference_states_a_parseable_answer_on_every_record(excerpt_questions):
    for pred in ("", "Rollo"):
        shares = answer_shares([reference.annotate(q, pred) for q in excerpt_questions])
        assert shares["states_answer"] == 1.0 and shares["states_answer_incorrect"] == 1.0
        assert shares["states_non_gold_answer"] == 0.0 and shares["incorrect_verdicts"] > 100


def test_simulated_human_states_one_only_sometimes_and_never_a_wrong_one(excerpt_questions):
    records = simulated_human_feedback(excerpt_questions, {q.id: "" for q in excerpt_questions})
    shares = answer_shares(records)
    incorrect = [r for r in records if r.verdict == "incorrect"]
    stated = [r for r in incorrect if prompts.parse_feedback(r.feedback)[1] is not None]
    assert shares["states_answer_incorrect"] == len(stated) / len(incorrect) and 0 < len(stated) < len(incorrect)
    assert shares["states_non_gold_answer"] == 0.0


def _questions(excerpt_questions):
    """3 unanswerable and 5 answerable questions (one with a double quote in its gold answer)."""
    impossible = [q for q in excerpt_questions if q.is_impossible][:3]
    quoted = [q for q in excerpt_questions if any('"' in a for a in q.answers)][:1]
    answerable = [q for q in excerpt_questions if not q.is_impossible and q not in quoted][:4]
    return impossible + quoted + answerable


def test_few_shot_llm_states_the_right_answer_on_every_incorrect_verdict(excerpt_questions, tiny_model_dir,
                                                                         tmp_path, monkeypatch):  # fmt: skip
    from laffi.engines import generation

    qs = _questions(excerpt_questions)
    preds = {q.id: "Genghis Khan" for q in qs}  # wrong everywhere: every incorrect verdict is right
    # Replies by question: no right answer, an agreeing one, a contradicting one, a cut-off one, a correct verdict.
    gold = {q.id: q.answers[0] if q.answers else "" for q in qs}
    replies = {}
    for i, q in enumerate(qs):
        kind = i % 5
        if kind == 0:
            replies[q.id] = "Verdict: incorrect\nFeedback: That is not what the passage says"
        elif kind == 1:
            replies[q.id] = f"Verdict: incorrect\nFeedback: No. {prompts.right_answer_sentence(gold[q.id])}"
        elif kind == 2:
            replies[q.id] = 'Verdict: incorrect\nFeedback: No. The right answer is "the moon landing".'
        elif kind == 3:
            replies[q.id] = 'Verdict: incorrect\nFeedback: No. The right answer is "the'
        else:
            replies[q.id] = "Verdict: correct\nFeedback: Fine."

    def reply(model, tokenizer, texts, settings, on_batch=None):
        outputs = [next(replies[q.id] for q in qs if f"Question: {q.question}\n\nGold answers" in t) for t in texts]
        if on_batch is not None:
            on_batch(list(range(len(texts))), outputs)
        return outputs

    monkeypatch.setattr(generation, "generate", reply)
    cfg = AnnotateConfig(annotator="llm", model=str(tiny_model_dir), dtype="float32", shots=2, max_new_tokens=8,
                         batch_size=4)  # fmt: skip
    records = stages.annotate(qs, preds, tmp_path / "ai.jsonl", cfg, progress=False)
    assert [r.id for r in records] == [q.id for q in qs] and all(r.template_version == "llm-annotator-v2"
                                                                 for r in records)  # fmt: skip
    by_what = {r.id: r.meta["right_answer"] for r in records}
    assert [by_what[q.id] for q in qs] == ["appended", "agrees", "contradicts", "appended", "none", "appended",
                                          "agrees", "contradicts"]  # fmt: skip
    for r in records:
        stated = prompts.parse_feedback(r.feedback)[1]
        assert r.meta["raw"] == replies[r.id]
        if r.meta["right_answer"] == "appended":
            assert r.feedback.endswith(" " + prompts.right_answer_sentence(gold[r.id])) and stated == gold[r.id]
        elif r.meta["right_answer"] == "agrees":
            assert r.feedback == llm.parse_reply(replies[r.id])[1] and contradiction(r) is None
        elif r.meta["right_answer"] == "none":  # a correct verdict: nothing appended
            assert r.feedback == "Fine." and r.verdict == "correct"
        else:  # contradicts: kept as written, flagged by the contradiction filter
            assert r.feedback == llm.parse_reply(replies[r.id])[1] and contradiction(r) is not None
    kept = {r.id for r in filter_contradictions(records)}
    assert not kept & {i for i, what in by_what.items() if what == "contradicts"}
    assert {i for i, what in by_what.items() if what in ("appended", "agrees")} <= kept
    shares = answer_shares(records)
    assert shares["states_answer_incorrect"] == 1.0 and shares["incorrect_verdicts"] == 7
    assert shares["states_non_gold_answer"] == pytest.approx(2 / 8)
    s = annotator_summary(records)
    assert s["answer_appended"] == pytest.approx(3 / 8) and s["contradicts_gold"] >= 2 / 8


def test_scored_verdicts_state_the_right_answer(excerpt_questions, tiny_model_dir, tmp_path):
    # A random model writes whatever it writes after "Verdict: incorrect\nFeedback:"; the record still ends with the
    # right answer. Threshold 0: every verdict is incorrect.
    qs = _questions(excerpt_questions)
    preds = {q.id: "" for q in qs}
    examples = tmp_path / "human.jsonl"
    write_jsonl(examples, simulated_human_feedback(qs[:4], preds))
    cfg = AnnotateConfig(annotator="llm", model=str(tiny_model_dir), dtype="float32", shots=2, max_new_tokens=6,
                         batch_size=4, examples=str(examples), verdict="score", verdict_threshold=0.0)  # fmt: skip
    records = stages.annotate(qs, preds, tmp_path / "ai.jsonl", cfg, progress=False)
    assert len(records) >= 6 and {r.verdict for r in records} == {"incorrect"}
    for r in records:
        assert prompts.parse_feedback(r.feedback)[1] is not None
        assert r.meta["right_answer"] != "appended" or prompts.parse_feedback(r.feedback)[1] == (
            r.gold_answers[0] if r.gold_answers else "")
    assert answer_shares(records)["states_answer_incorrect"] == 1.0


def test_output_version_keys_the_llm_annotators_records():
    from laffi.feedback import learned

    assert llm.output_version(AnnotateConfig(annotator="llm")) == llm.TEMPLATE_VERSION == "llm-annotator-v2"
    learning = AnnotateConfig(annotator="llm", learn_from_examples=True)
    assert llm.output_version(learning) == learned.TEMPLATE_VERSION == "llm-learned-v2"
    assert llm.output_version(AnnotateConfig(annotator="reference")) is None
