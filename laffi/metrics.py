"""SQuAD 2.0 exact match and F1, computed exactly as the official `evaluate-v2.0.py` does.

Same normalisation (lower-case, drop punctuation and the articles a/an/the, collapse white space), the maximum over
the gold answers, and "" as the only right answer to a question without answers. A question "has an answer" when its
`answers` list is non-empty, as in the official script. Pure Python: `laffi score` must start fast.
"""

from __future__ import annotations

import collections
import math
import re
import string
from typing import Any

from laffi.errors import LaffiError
from laffi.files import printable
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


def _eval_dict(exact: dict[str, float], f1: dict[str, float], qids: list[str] | None = None) -> dict[str, float]:
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


def squad_v2_scores(
    questions: list[Question],
    preds: dict[str, str],
    source: str = "predictions",
    na_probs: dict[str, float] | None = None,
    na_prob_thresh: float = 1.0,
    na_source: str = "na-prob file",
) -> dict:
    """The official script's output dict, keys in its order. Every question needs a prediction.

    The official script crashes with a KeyError when an answerable question has no prediction; we raise a one-line
    error naming how many are missing instead. Predictions for unknown ids are ignored, as the official script does.

    `na_probs` ({id: probability of no answer}, the official `--na-prob-file`) adds best_exact, best_exact_thresh,
    best_f1 and best_f1_thresh (`find_best_thresh`); every question needs one (the official script crashes too).
    With `na_prob_thresh` (`--na-prob-thresh`, default 1.0), a question whose probability is strictly above it
    counts as an abstention (`apply_no_ans_threshold`). Without `na_probs`, every prediction's probability is 0.0,
    as in the official script (so only a negative threshold changes anything).
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
    if na_probs is not None:
        check_na_probs(na_probs, questions, na_source)
    exact_raw, f1_raw = raw_scores(questions, preds)
    probs = na_probs if na_probs is not None else {qid: 0.0 for qid in preds}
    has_answer = {q.id: bool(q.answers) for q in questions}
    exact = apply_no_ans_threshold(exact_raw, probs, has_answer, na_prob_thresh)
    f1 = apply_no_ans_threshold(f1_raw, probs, has_answer, na_prob_thresh)
    out = _eval_dict(exact, f1)
    has_ans = [q.id for q in questions if q.answers]
    no_ans = [q.id for q in questions if not q.answers]
    if has_ans:
        out.update({f"HasAns_{k}": v for k, v in _eval_dict(exact, f1, has_ans).items()})
    if no_ans:
        out.update({f"NoAns_{k}": v for k, v in _eval_dict(exact, f1, no_ans).items()})
    if na_probs is not None:
        out["best_exact"], out["best_exact_thresh"] = find_best_thresh(preds, exact_raw, na_probs, has_answer)
        out["best_f1"], out["best_f1_thresh"] = find_best_thresh(preds, f1_raw, na_probs, has_answer)
    return out


def apply_no_ans_threshold(scores: dict[str, float], na_probs: dict[str, float], has_answer: dict[str, bool],
                           thresh: float) -> dict[str, float]:  # fmt: skip
    """The official rule: a question whose no-answer probability is strictly above `thresh` scores as an abstention
    (1.0 on a question without answers, 0.0 otherwise), whatever was predicted."""
    return {qid: float(not has_answer[qid]) if na_probs[qid] > thresh else s for qid, s in scores.items()}


def find_best_thresh(preds: dict[str, str], scores: dict[str, float], na_probs: dict[str, float],
                     has_answer: dict[str, bool]) -> tuple[float, float]:  # fmt: skip
    """(best score in %, its threshold), exactly the official `find_best_thresh`.

    Start from "abstain on everything" (one point per question without answers); walk the questions by increasing
    no-answer probability (a stable sort: ties in the probability file's order), each time letting one more question
    keep its prediction: + its score when it has answers, - 1 when it has none and the prediction is non-empty (the
    raw text, not normalised). The best running total wins (only a strict improvement moves it) and its threshold is
    the probability of the question reached there. Within a tie the official walk may stop between questions that
    no threshold separates; kept as is, so the numbers are the official ones.
    """
    current = sum(1 for v in has_answer.values() if not v)
    best, best_thresh = current, 0.0
    for qid in sorted(na_probs, key=lambda k: na_probs[k]):
        if qid not in scores:
            continue
        if has_answer[qid]:
            diff = scores[qid]
        elif preds[qid]:
            diff = -1
        else:
            diff = 0
        current += diff
        if current > best:
            best, best_thresh = current, na_probs[qid]
    return 100.0 * best / len(scores), best_thresh


def check_na_probs(na_probs: Any, questions: list[Question], source: str) -> None:
    """A no-answer probability file: {id: number}, finite, one per question (ids unknown to the data are ignored, as
    the official script does)."""
    if not isinstance(na_probs, dict):
        raise LaffiError(
            f"{source}: expected a JSON object {{question_id: probability}}, got {type(na_probs).__name__}"
        )
    for qid, p in na_probs.items():
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not math.isfinite(p):
            raise LaffiError(f"{source}: '{printable(qid)}': probability must be a finite number, got {p!r}")
    missing = [q.id for q in questions if q.id not in na_probs]
    if missing:
        raise LaffiError(f"{source}: no probability for {len(missing)} of {len(questions)} questions "
                         f"(e.g. '{printable(missing[0])}')")  # fmt: skip


def abstain_predictions(questions: list[Question]) -> dict[str, str]:
    """The trivial baseline every results table shows: abstain on every question."""
    return {q.id: "" for q in questions}
