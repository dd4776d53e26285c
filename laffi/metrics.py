"""SQuAD 2.0 exact match and F1, computed exactly as the official `evaluate-v2.0.py` does.

Same normalisation (lower-case, drop punctuation and the articles a/an/the, collapse white space), the maximum over
the gold answers, and "" as the only right answer to a question without answers. A question "has an answer" when its
`answers` list is non-empty, as in the official script. Pure Python: `laffi score` must start fast.
"""

from __future__ import annotations

import collections
import re
import string

from laffi.errors import LaffiError
from laffi.records import Question

_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
_PUNCT = set(string.punctuation)


def normalize_answer(s: str) -> str:
    """Lower text and remove punctuation, articles and extra white space (the official order)."""
    s = s.lower()
    s = "".join(ch for ch in s if ch not in _PUNCT)
    s = _ARTICLES.sub(" ", s)
    return " ".join(s.split())


def get_tokens(s: str) -> list[str]:
    if not s:
        return []
    return normalize_answer(s).split()


def compute_exact(a_gold: str, a_pred: str) -> int:
    return int(normalize_answer(a_gold) == normalize_answer(a_pred))


def compute_f1(a_gold: str, a_pred: str) -> float:
    gold_toks = get_tokens(a_gold)
    pred_toks = get_tokens(a_pred)
    common = collections.Counter(gold_toks) & collections.Counter(pred_toks)
    num_same = sum(common.values())
    if len(gold_toks) == 0 or len(pred_toks) == 0:
        # If either is no-answer, F1 is 1 if they agree, 0 otherwise.
        return int(gold_toks == pred_toks)
    if num_same == 0:
        return 0
    precision = 1.0 * num_same / len(pred_toks)
    recall = 1.0 * num_same / len(gold_toks)
    return (2 * precision * recall) / (precision + recall)


def gold_answers(q: Question) -> list[str]:
    """The official script drops gold answers that normalise to nothing and uses [""] when none remain."""
    golds = [a for a in q.answers if normalize_answer(a)]
    return golds or [""]


def score_one(q: Question, pred: str) -> tuple[int, float]:
    """(exact, f1) of one prediction: the maximum over the gold answers."""
    golds = gold_answers(q)
    return max(compute_exact(a, pred) for a in golds), max(compute_f1(a, pred) for a in golds)


def raw_scores(questions: list[Question], preds: dict[str, str]) -> tuple[dict[str, int], dict[str, float]]:
    exact, f1 = {}, {}
    for q in questions:
        if q.id not in preds:
            continue
        exact[q.id], f1[q.id] = score_one(q, preds[q.id])
    return exact, f1


def _eval_dict(exact: dict[str, int], f1: dict[str, float], qids: list[str] | None = None) -> dict[str, float]:
    if qids is None:
        total = len(exact)
        return {
            "exact": 100.0 * sum(exact.values()) / total,
            "f1": 100.0 * sum(f1.values()) / total,
            "total": total,
        }
    total = len(qids)
    return {
        "exact": 100.0 * sum(exact[k] for k in qids) / total,
        "f1": 100.0 * sum(f1[k] for k in qids) / total,
        "total": total,
    }


def squad_v2_scores(questions: list[Question], preds: dict[str, str], source: str = "predictions") -> dict:
    """The official script's output dict, keys in its order. Every question needs a prediction.

    The official script crashes with a KeyError when an answerable question has no prediction; we raise a one-line
    error naming how many are missing instead. Predictions for unknown ids are ignored, as the official script does.
    """
    for qid, text in preds.items():
        if not isinstance(text, str):
            raise LaffiError(f"{source}: prediction for '{qid}' must be a string, got {type(text).__name__}")
    missing = [q.id for q in questions if q.id not in preds]
    if missing:
        n = len(questions)
        raise LaffiError(f"{source}: no prediction for {len(missing)} of {n} questions (e.g. '{missing[0]}')")
    if not questions:
        raise LaffiError(f"{source}: no questions to score")
    exact, f1 = raw_scores(questions, preds)
    out = _eval_dict(exact, f1)
    has_ans = [q.id for q in questions if q.answers]
    no_ans = [q.id for q in questions if not q.answers]
    if has_ans:
        out.update({f"HasAns_{k}": v for k, v in _eval_dict(exact, f1, has_ans).items()})
    if no_ans:
        out.update({f"NoAns_{k}": v for k, v in _eval_dict(exact, f1, no_ans).items()})
    return out


def abstain_predictions(questions: list[Question]) -> dict[str, str]:
    """The trivial baseline every results table shows: abstain on every question."""
    return {q.id: "" for q in questions}
