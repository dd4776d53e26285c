"""Prompt layout and the parsers of model output."""

import pytest

from laffi import prompts
from laffi.records import Question

Q = Question(id="x", title="t", context="Rollo led the Normans in 911.", question="Who led the Normans?",
             answers=["Rollo"], answer_starts=[0])  # fmt: skip


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("two", "two"),
        ("1066", "1066"),
        ("Rollo", "Rollo"),
        ("No", "No"),
        ("\"Rollo\".", "Rollo"),
        ("Answer: the 10th century\nmore text", "the 10th century"),
        ("unanswerable", ""),
        ("Unanswerable.", ""),
        ("The passage does not say who led them.", ""),
        ("N/A", ""),
        ("", ""),
        ('Verdict: incorrect. "x" is wrong. The right answer is "Rollo".', "Rollo"),
        ("Verdict: correct. The passage does not answer it. The right answer is unanswerable.", ""),
    ],
)
def test_parse_answer(raw, expected):
    assert prompts.parse_answer(raw) == expected


def test_require_in_context_abstains_on_non_spans_only():
    assert prompts.parse_answer("rollo", Q.context, require_in_context=True) == "rollo"
    assert prompts.parse_answer("William", Q.context, require_in_context=True) == ""
    assert prompts.parse_answer("William", Q.context, require_in_context=False) == "William"


def test_parse_feedback():
    assert prompts.parse_feedback('Verdict: correct. Fine. The right answer is "911".') == ("correct", "911")
    assert prompts.parse_feedback("Verdict: incorrect. The right answer is unanswerable.") == ("incorrect", "")
    assert prompts.parse_feedback("no structure") == (None, None)
    # A gold answer with quotes inside is read whole: the answer ends at the quote that ends the sentence.
    assert prompts.parse_feedback('Verdict: incorrect. The right answer is ""self" peptides".') == (
        "incorrect", '"self" peptides')
    assert prompts.parse_feedback('The right answer is "911". Then "x" follows.') == (None, "911")
    assert prompts.parse_feedback('The right answer is "911"\nFeedback: "x".') == (None, "911")
    assert prompts.parse_feedback('The right answer is "a" and "b" here') == (None, "a")
    assert prompts.parse_feedback('The right answer is "".') == (None, "")


def test_qa_messages_layout_and_shots():
    msgs = prompts.qa_messages(Q, shots=2)
    assert [m["role"] for m in msgs] == ["system", "user", "assistant", "user", "assistant", "user"]
    assert msgs[4]["content"] == prompts.ABSTAIN_PHRASE  # two shots include an unanswerable example
    assert msgs[-1]["content"] == "Passage: Rollo led the Normans in 911.\n\nQuestion: Who led the Normans?"
    with pytest.raises(ValueError):
        prompts.qa_messages(Q, shots=9)


def test_render_without_chat_template_is_plain_text():
    text = prompts.render(prompts.feedback_messages(Q, ""), tokenizer=None)
    assert text.startswith(prompts.FEEDBACK_SYSTEM + "\n\nUser: Passage: Rollo")
    assert text.endswith("Proposed answer: unanswerable\nAssistant:")
