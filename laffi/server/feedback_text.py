"""The text of feedback, apart from the database: the rules the annotation page and the store share about what a
feedback says, each a pure function of strings.

The page ends every feedback with a closing sentence that states the right answer (`closing_sentence`), and the
export reads that answer back into `meta.right_answer` (`right_answer_field`). An AI draft is served as the page
shows it and would save it unchanged (`draft_as_shown`), so that a draft accepted unchanged is recognised
(`same_text`) and an edited one is measured by its edit distance in characters (`levenshtein`). `quoted_answer` names
a model's answer in error messages.
"""

from __future__ import annotations

from laffi import prompts


def levenshtein(a: str, b: str) -> int:
    """Edit distance in characters (insertions, deletions, substitutions), bit-parallel (Myers 1999 / Hyyrö 2001):
    two 5,000-character texts take ~15 ms, where the textbook table would take seconds."""
    if len(a) < len(b):
        a, b = b, a
    m = len(b)
    if m == 0:
        return len(a)
    peq: dict[str, int] = {}
    for i, c in enumerate(b):
        peq[c] = peq.get(c, 0) | (1 << i)
    full, top = (1 << m) - 1, 1 << (m - 1)
    pv, mv, score = full, 0, m
    for c in a:
        eq = peq.get(c, 0)
        xv = eq | mv
        xh = (((eq & pv) + pv) ^ pv) | eq
        ph = mv | (~(xh | pv) & full)
        mh = pv & xh
        if ph & top:
            score += 1
        elif mh & top:
            score -= 1
        ph = ((ph << 1) | 1) & full
        mh = (mh << 1) & full
        pv = mh | (~(xv | ph) & full)
        mv = ph & xv
    return score


def closing_sentence(answer: str) -> str:
    """The sentence the page ends every feedback with (what `prompts.parse_feedback` reads): '' is unanswerable; a
    double quote inside the answer would end the quotation early, so it becomes a single quote."""
    if not answer.strip():
        return "The right answer is unanswerable."
    return 'The right answer is "' + answer.strip().replace('"', "'") + '".'


def draft_as_shown(feedback: str, verdict: str, predicted: str, gold: list[str]) -> str:
    """An AI draft's feedback as the page shows it and saves it when accepted unchanged: its text, then the closing
    sentence with the right answer. A draft that states the right answer (`The right answer is "X".`) keeps that
    answer, in one closing sentence at the end; one that does not gets the answer the page prefills for its verdict
    (correct: the model's answer, or unanswerable for an abstention; incorrect: the first gold answer, or
    unanswerable when there is none). Real LLM drafts seldom end with the sentence: without this, an accepted draft
    would never equal the text saved."""
    stated = prompts.parse_feedback(feedback)[1]
    if stated is not None:
        text, answer = prompts.without_right_answer(feedback), stated
    else:
        text = feedback.strip()
        abstained = not predicted.strip()
        if verdict == "correct":
            answer = "" if abstained else predicted
        elif gold:
            answer = gold[0]
        elif not abstained:
            answer = ""
        else:
            return text  # "incorrect" for an abstention on an unanswerable question: no right answer to add
    return (text + " " + closing_sentence(answer)).strip()


def quoted_answer(predicted: str) -> str:
    """A model's answer for a message, quoted; '' is named: '' (an abstention: no answer)."""
    return f"'{predicted[:100]}'" if predicted.strip() else f"'{predicted}' (an abstention: no answer)"


def same_text(a: str, b: str) -> bool:
    """Equal but for whitespace: a draft saved with only its spacing changed is accepted unchanged."""
    return " ".join(a.split()) == " ".join(b.split())


def right_answer_field(feedback: str) -> dict[str, str]:
    """{"right_answer": X} for the answer the feedback's closing sentence states ("" for unanswerable), or {}."""
    answer = prompts.parse_feedback(feedback)[1] if feedback else None
    return {} if answer is None else {"right_answer": answer}
