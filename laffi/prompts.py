"""Every prompt and training template in one place, each with a version string, and the parsers of model output.

Layout matters for speed: the shared part (instructions and few-shot examples) comes first, then the passage, then
the question, so questions on the same passage share the longest possible prefix.

No torch/transformers here: a tokenizer is only used through `apply_chat_template`, when it has a chat template.
"""

from __future__ import annotations

import re
from typing import Any

from laffi.records import Question

QA_TEMPLATE_VERSION = "qa-v1"
FEEDBACK_TEMPLATE_VERSION = "feedback-v1"
COH_TEMPLATE_VERSION = "coh-v1"
REFINE_TEMPLATE_VERSION = "refine-v1"
QA_REVISE_TEMPLATE_VERSION = "qa-revise-v1"

# What the model is taught to say to abstain, in the shots and in the SFT targets.
ABSTAIN_PHRASE = "unanswerable"

QA_SYSTEM = (
    "You answer questions about a passage. Reply with the shortest phrase copied from the passage that answers the "
    f"question. If the passage does not contain the answer, reply exactly: {ABSTAIN_PHRASE}"
)

FEEDBACK_SYSTEM = (
    "You review a proposed answer to a question about a passage. Say whether it is correct, why, and what the right "
    f"answer is (or that the passage does not answer the question, in which case the right answer is {ABSTAIN_PHRASE})."
)

# Hand-written shots (not taken from SQuAD, so they cannot leak evaluation facts). Their order puts an unanswerable
# example second, so any prompt with 2 or more shots shows both kinds of answer.
SHOTS: list[tuple[str, str, str]] = [
    (
        "The Eiffel Tower is a wrought-iron lattice tower on the Champ de Mars in Paris. It was designed by the "
        "company of Gustave Eiffel and built from 1887 to 1889 as the entrance to the 1889 World's Fair.",
        "In what year was the Eiffel Tower finished?",
        "1889",
    ),
    (
        "The Amazon River in South America is the largest river by discharge volume of water in the world. It flows "
        "through Peru, Colombia and Brazil before reaching the Atlantic Ocean.",
        "How many bridges cross the Amazon River?",
        ABSTAIN_PHRASE,
    ),
    (
        "Marie Curie was the first woman to win a Nobel Prize and the only person to win Nobel Prizes in two "
        "scientific fields, physics and chemistry. She was born in Warsaw in 1867.",
        "In how many scientific fields did Marie Curie win Nobel Prizes?",
        "two",
    ),
    (
        "The Great Wall of China was built over many centuries by several dynasties to protect Chinese states from "
        "nomadic groups. The best-known sections were built by the Ming dynasty.",
        "Which dynasty began building the Great Wall?",
        ABSTAIN_PHRASE,
    ),
]


def qa_user_text(context: str, question: str) -> str:
    return f"Passage: {context}\n\nQuestion: {question}"


def qa_messages(q: Question, shots: int) -> list[dict[str, str]]:
    """Chat messages of the few-shot QA prompt: system, `shots` solved examples, then the question."""
    if not 0 <= shots <= len(SHOTS):
        raise ValueError(f"shots must be between 0 and {len(SHOTS)}, got {shots}")
    messages = [{"role": "system", "content": QA_SYSTEM}]
    for context, question, answer in SHOTS[:shots]:
        messages.append({"role": "user", "content": qa_user_text(context, question)})
        messages.append({"role": "assistant", "content": answer})
    messages.append({"role": "user", "content": qa_user_text(q.context, q.question)})
    return messages


def answer_as_text(answer: str) -> str:
    """How an answer is written in prompts and targets: the abstention phrase stands for ""."""
    return answer if answer.strip() else ABSTAIN_PHRASE


def feedback_messages(q: Question, answer: str) -> list[dict[str, str]]:
    """Chat messages of the LaFFi prompt: passage, question and the model's answer; the target is the feedback."""
    user = f"{qa_user_text(q.context, q.question)}\n\nProposed answer: {answer_as_text(answer)}"
    return [{"role": "system", "content": FEEDBACK_SYSTEM}, {"role": "user", "content": user}]


# ------------------------------------------------------------------------------------------------ Chain of Hindsight

# Marker phrasings, one picked per example with the training seed (as in Liu et al. 2023, which sample among several
# natural-language templates). The first positive one ends the prompt at answer time.
COH_POSITIVE = ("A good answer:", "A correct answer:", "The right answer:")
COH_NEGATIVE = ("A bad answer:", "An incorrect answer:", "A wrong answer:")
COH_FEEDBACK = "Feedback:"


def coh_answer_prefix() -> str:
    """What a Chain of Hindsight model is given after the assistant turn starts: the positive marker."""
    return COH_POSITIVE[0]


def coh_segments(own: str, verdict: str, feedback: str, gold: str, rng: Any) -> list[tuple[str, bool]]:
    """The assistant turn of one CoH example as (text, carries loss) pieces: only answers carry loss.

    A right answer: `<positive> <answer>`. A wrong one: `<negative> <answer>` / `Feedback: <feedback>` /
    `<positive> <gold answer>` on three lines. Answers keep their leading space so they tokenize as after a colon.
    """
    positive, negative = rng.choice(COH_POSITIVE), rng.choice(COH_NEGATIVE)
    if verdict == "correct":
        return [(positive, False), (" " + answer_as_text(own), True)]
    return [
        (negative, False), (" " + answer_as_text(own), True),
        (f"\n{COH_FEEDBACK} {feedback}\n{positive}", False), (" " + answer_as_text(gold), True),
    ]  # fmt: skip


# ------------------------------------------------------------------------------------------------ refinement (ILF)

REFINE_SYSTEM = (
    "You answered a question about a passage and received feedback on your answer. Using the feedback, reply with "
    "the corrected answer only: the shortest phrase copied from the passage, or exactly: "
    f"{ABSTAIN_PHRASE} if the passage does not contain it. If the feedback says your answer is correct, repeat it."
)


def refine_messages(q: Question, first_answer: str, feedback: str) -> list[dict[str, str]]:
    """Chat messages asking for a revised answer given the first answer and the feedback on it."""
    user = (f"{qa_user_text(q.context, q.question)}\n\nYour answer: {answer_as_text(first_answer)}\n\n"
            f"Feedback: {feedback}")
    return [{"role": "system", "content": REFINE_SYSTEM}, {"role": "user", "content": user}]


# The QA prompt with the first answer and a feedback text added to the question's turn: the layout of SDFT's teacher
# (the student's prompt plus privileged context), so that it differs from the QA prompt only by what was added. Its
# system text and shots are the QA prompt's: the answer form they set (a span or the abstention phrase) is the same.
QA_REVISE_INSTRUCTION = "Answer the question again, using the feedback."


def qa_revise_messages(q: Question, shots: int, first_answer: str, feedback: str) -> list[dict[str, str]]:
    """`qa_messages(q, shots)` with the first answer, the feedback on it and `QA_REVISE_INSTRUCTION` after the
    question."""
    messages = qa_messages(q, shots)
    messages[-1] = {"role": "user", "content": f"{messages[-1]['content']}\n\nYour answer: "
                    f"{answer_as_text(first_answer)}\n\nFeedback: {feedback}\n\n{QA_REVISE_INSTRUCTION}"}  # fmt: skip
    return messages


def revise_messages(layout: str, q: Question, shots: int, first_answer: str, feedback: str) -> list[dict[str, str]]:
    """The prompt that shows a model its first answer and feedback on it: 'refinement' (`refine_messages`, no shots) or
    'qa' (`qa_revise_messages`, the QA prompt's shots)."""
    if layout == "refinement":
        return refine_messages(q, first_answer, feedback)
    if layout == "qa":
        return qa_revise_messages(q, shots, first_answer, feedback)
    raise ValueError(f"no revision prompt layout {layout!r} (known: refinement, qa)")


def revise_version(layout: str) -> str:
    """The template version of `revise_messages(layout, ...)` ('qa': also the QA prompt's, whose shots it shows)."""
    return REFINE_TEMPLATE_VERSION if layout == "refinement" else f"{QA_REVISE_TEMPLATE_VERSION}/{QA_TEMPLATE_VERSION}"


def render(messages: list[dict[str, str]], tokenizer: Any = None) -> str:
    """Prompt text ending where the assistant's reply starts (chat template when the tokenizer has one)."""
    if tokenizer is not None and getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    # Plain-text fallback for base models without a chat template.
    parts = []
    for m in messages:
        if m["role"] == "system":
            parts.append(m["content"] + "\n\n")
        elif m["role"] == "user":
            parts.append(f"User: {m['content']}\n")
        else:
            parts.append(f"Assistant: {m['content']}\n\n")
    return "".join(parts) + "Assistant:"


# ------------------------------------------------------------------------------------------------ answer parsing

# An output is an abstention when, after normalisation, it IS one of these phrases or STARTS with one of the prefixes.
# Deliberately explicit: no length rule, so short real answers ("two", "1066", "Rollo") are never abstentions.
ABSTAIN_EXACT = {
    "unanswerable", "not answerable", "no answer", "none", "n a", "unknown", "cannot be answered", "cannot answer",
    "cannot be determined", "not mentioned", "not stated", "not given", "not specified", "no information",
    "not enough information", "insufficient information", "the question is unanswerable", "it is unanswerable",
}  # fmt: skip
ABSTAIN_PREFIXES = (
    "unanswerable", "the passage does not", "the passage doesnt", "the text does not", "the context does not",
    "there is no information", "there is no mention", "it is not mentioned", "it is not stated",
    "this question cannot", "the question cannot", "i dont know", "i do not know", "i cannot", "not mentioned in",
    "not stated in", "no answer",
)  # fmt: skip

# The quoted answer runs to the first quote that ends the sentence (then "." or not, then the end of the line or a
# capitalised next sentence), so a gold answer with quotes inside (`"self" peptides`) is read whole; where no quote
# ends a sentence, to the next quote.
_RIGHT_ANSWER = re.compile(r"The right answer is:?\s*(?:\"(.*?)\"(?=\.?(?:[ \t]*$|\s+(?-i:[A-Z])))"
                           r"|\"([^\"]*)\"|(unanswerable))", re.IGNORECASE | re.MULTILINE)
_VERDICT = re.compile(r"Verdict:\s*(correct|incorrect)\b", re.IGNORECASE)
_LEADING_LABEL = re.compile(r"^(?:the\s+)?(?:final\s+)?answer\s*(?:is)?\s*[:\-]\s*", re.IGNORECASE)
_QUOTES = "\"'“”‘’`"


def _loose(text: str) -> str:
    """Lower-case, punctuation to spaces except apostrophes dropped: just for matching abstention phrases."""
    text = text.lower().replace("'", "").replace("’", "")
    return " ".join(re.sub(r"[^\w\s]", " ", text).split())


def is_abstention(text: str) -> bool:
    loose = _loose(text)
    return not loose or loose in ABSTAIN_EXACT or loose.startswith(ABSTAIN_PREFIXES)


def parse_answer(raw: str, context: str | None = None, require_in_context: bool = False) -> str:
    """The answer in a model's raw QA output; "" means the model abstained.

    Steps: (1) a model trained on feedback may reply in the feedback's form; then the answer is the one the feedback
    states ("The right answer is ..."); (2) keep the first line, drop an "Answer:" label, surrounding quotes and a
    final full stop; (3) abstain if the text is one of the explicit abstention phrases above; (4) optionally
    (`require_in_context`, for extractive QA) abstain when the answer is not a span of the passage after SQuAD
    normalisation, since every SQuAD answer is one.
    """
    stated = parse_feedback(raw)[1]
    text = stated if stated is not None else raw.strip().split("\n", 1)[0]
    text = _LEADING_LABEL.sub("", text.strip()).strip().strip(_QUOTES).strip()
    if text.endswith(".") and not text.endswith(".."):
        text = text[:-1].strip().strip(_QUOTES).strip()
    if is_abstention(text):
        return ""
    if require_in_context and context is not None and not _in_context(text, context):
        return ""
    return text


def _in_context(answer: str, context: str) -> bool:
    from laffi.metrics import normalize_answer

    norm = normalize_answer(answer)
    return bool(norm) and f" {norm} " in f" {normalize_answer(context)} "


def without_right_answer(text: str) -> str:
    """Feedback text minus the sentence that states the right answer (what `parse_feedback` reads), e.g. for the
    headroom probe's `no_answer_sentence` condition. Other sentences stay, quotes of the passage included."""
    out = _RIGHT_ANSWER.sub("", text)
    out = re.sub(r"(^|\s)\.(?=\s|$)", r"\1", out)  # the removed sentence's own full stop
    return " ".join(out.split())


def parse_feedback(text: str) -> tuple[str | None, str | None]:
    """(verdict, right answer) stated in feedback text; None where absent. The right answer "" means abstain."""
    verdict = _VERDICT.search(text)
    right = _RIGHT_ANSWER.search(text)
    answer = None
    if right:
        answer = "" if right.group(3) else (right.group(1) if right.group(1) is not None else right.group(2)).strip()
    return (verdict.group(1).lower() if verdict else None), answer


def right_answer_sentence(answer: str) -> str:
    """The sentence stating the right answer, in the form `parse_feedback` reads back: `The right answer is "X".`, or
    `The right answer is unanswerable.` for "" (abstain). Every annotator that states a right answer composes it here
    (the annotation app's right-answer field writes the same form). An answer that would not read back whole (a
    double quote inside that ends the quote early) has its double quotes written as single quotes, as the app does:
    the same answer after SQuAD normalisation."""
    if not answer.strip():
        return f"The right answer is {ABSTAIN_PHRASE}."
    sentence = f'The right answer is "{answer}".'
    if parse_feedback(sentence)[1] == answer.strip():
        return sentence
    return 'The right answer is "{}".'.format(" ".join(answer.replace('"', "'").split()))
