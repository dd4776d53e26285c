"""`laffi feedback-report`: how AI feedback compares with human feedback on the same items, and what each cost.

- Agreement: on items both sides annotated, the share of equal verdicts and Cohen's kappa (agreement corrected for
  chance; written out here because it is four lines and scikit-learn is not otherwise needed).
- Contradictions: AI feedback that contradicts the gold answers: it calls an answer correct that scores below the
  threshold against the gold answers (or the reverse), or the right answer it states is not one of the gold answers
  (or it states one for an unanswerable question). Flagged per id; `filter_contradictions` drops them.
- Right answers: the share of each side's records whose feedback states a right answer `prompts.parse_feedback` reads,
  of all records and of those with an incorrect verdict, and the share stating
  one that is not a gold answer after SQuAD normalisation (`stated_answer_agrees`).
- Cost: human minutes per item (from the annotation app's timing) against AI tokens and seconds per item.
- Provenance: the annotator labels of each side; a side made by the simulated human is said to be simulated.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from laffi import prompts
from laffi.config import CORRECT_THRESHOLD
from laffi.metrics import compute_f1, normalize_answer
from laffi.records import FeedbackRecord
from laffi.stats import roc_auc


def cohen_kappa(a: list[str], b: list[str]) -> float:
    """Cohen's kappa of two raters' labels on the same items (1 = perfect, 0 = chance). Undefined cases give 1.0
    when the raters agree on everything (a single shared label) and 0.0 otherwise."""
    n = len(a)
    if n == 0:
        return float("nan")
    observed = sum(x == y for x, y in zip(a, b, strict=True)) / n
    ca, cb = Counter(a), Counter(b)
    expected = sum(ca[k] * cb[k] for k in ca) / (n * n)
    if expected == 1.0:
        return 1.0 if observed == 1.0 else 0.0
    return (observed - expected) / (1.0 - expected)


def gold_verdict(r: FeedbackRecord, threshold: float = CORRECT_THRESHOLD) -> str:
    """The verdict the gold answers imply (SQuAD 2.0 F1 as in the reference annotator)."""
    if not r.gold_answers:
        return "correct" if not r.predicted_answer.strip() else "incorrect"
    if not r.predicted_answer.strip():
        return "incorrect"
    f1 = max(compute_f1(g, r.predicted_answer) for g in r.gold_answers)
    return "correct" if f1 >= threshold else "incorrect"


def contradiction(r: FeedbackRecord, threshold: float = CORRECT_THRESHOLD) -> str | None:
    """Why this feedback contradicts the gold answers, or None."""
    expected = gold_verdict(r, threshold)
    if r.verdict != expected:
        return f"verdict '{r.verdict}' but the gold answers make the answer {expected}"
    _, stated = prompts.parse_feedback(r.feedback)
    if stated is None:
        return None
    if not r.gold_answers and stated:
        return f'states the answer "{stated}" but the question is unanswerable'
    if r.gold_answers and not stated:
        return "says the question is unanswerable but it has gold answers"
    if r.gold_answers and not any(normalize_answer(stated) == normalize_answer(g) or compute_f1(g, stated) >= threshold
                                  for g in r.gold_answers):  # fmt: skip
        return f'states the answer "{stated}", which is not a gold answer'
    return None


def stated_answer_agrees(stated: str, gold: list[str]) -> bool:
    """Whether a right answer stated in feedback ("" = abstain) agrees with the gold answers: equal to one of them after
    SQuAD normalisation, or an abstention on a question without gold answers (unanswerable)."""
    if not gold:
        return not stated.strip()
    return bool(stated.strip()) and any(normalize_answer(stated) == normalize_answer(g) for g in gold)


def answer_shares(records: list[FeedbackRecord]) -> dict[str, Any]:
    """How often feedback states a right answer that `prompts.parse_feedback` reads: `states_answer` (share of all
    records), `states_answer_incorrect` (share of the `incorrect_verdicts` records whose verdict is incorrect) and
    `states_non_gold_answer` (share of all records stating an answer that `stated_answer_agrees` rejects). NaN
    where there is nothing to divide by."""
    stated = [prompts.parse_feedback(r.feedback)[1] for r in records]
    incorrect = [a for r, a in zip(records, stated, strict=True) if r.verdict == "incorrect"]
    n = len(records)
    return {
        "states_answer": sum(a is not None for a in stated) / n if n else float("nan"),
        "incorrect_verdicts": len(incorrect),
        "states_answer_incorrect": sum(a is not None for a in incorrect) / len(incorrect) if incorrect
        else float("nan"),
        "states_non_gold_answer": sum(a is not None and not stated_answer_agrees(a, r.gold_answers)
                                      for r, a in zip(records, stated, strict=True)) / n if n else float("nan"),
    }  # fmt: skip


def filter_contradictions(records: list[FeedbackRecord], threshold: float = CORRECT_THRESHOLD) -> list[FeedbackRecord]:
    return [r for r in records if contradiction(r, threshold) is None]


def _is_simulated(labels: list[str]) -> bool:
    return any(label.startswith("simulated-human") for label in labels)


def feedback_report(human: list[FeedbackRecord], ai: list[FeedbackRecord], failures: int | None = None,
                    threshold: float = CORRECT_THRESHOLD) -> dict[str, Any]:  # fmt: skip
    """Agreement, contradictions and cost (see the module docstring). `failures`: the AI's unparsed replies."""
    human_by_id = {r.id: r for r in human}
    both = [(human_by_id[r.id], r) for r in ai if r.id in human_by_id]
    hv, av = [h.verdict for h, _ in both], [a.verdict for _, a in both]
    flags = {r.id: why for r in ai if (why := contradiction(r, threshold)) is not None}
    human_seconds = [h.meta["seconds"] for h in human if isinstance(h.meta.get("seconds"), (int, float))]
    ai_tokens = [a.meta.get("prompt_tokens", 0) + a.meta.get("completion_tokens", 0) for a in ai]
    ai_seconds = [a.meta["seconds"] for a in ai if isinstance(a.meta.get("seconds"), (int, float))]
    human_labels = sorted({r.annotator for r in human})
    return {
        "human_annotators": human_labels,
        "human_is_simulated": _is_simulated(human_labels),
        "ai_annotators": sorted({r.annotator for r in ai}),
        "human_items": len(human),
        "ai_items": len(ai),
        "ai_parse_failures": failures,
        "both": len(both),
        "agreement": sum(x == y for x, y in zip(hv, av, strict=True)) / len(both) if both else float("nan"),
        "cohen_kappa": cohen_kappa(hv, av),
        "confusion": dict(Counter(f"human {x} / ai {y}" for x, y in zip(hv, av, strict=True))),
        "ai_contradicts_gold": len(flags),
        "ai_contradictions": flags,
        "right_answers": {"human": answer_shares(human), "ai": answer_shares(ai)},
        "cost": {
            "human_minutes_per_item": sum(human_seconds) / 60 / len(human_seconds) if human_seconds else None,
            "human_items_timed": len(human_seconds),
            "ai_tokens_per_item": sum(ai_tokens) / len(ai) if ai else None,
            "ai_tokens_total": sum(ai_tokens),
            "ai_seconds_per_item": sum(ai_seconds) / len(ai_seconds) if ai_seconds else None,
        },
    }


def _num(x: Any, fmt: str = ".3f") -> str:
    return "n/a" if x is None or x != x else format(x, fmt)


def report_markdown(rep: dict[str, Any]) -> str:
    human = ", ".join(rep["human_annotators"]) or "none"
    lines = ["# Feedback report", ""]
    if rep["human_is_simulated"]:
        lines += ["**The human side is SIMULATED** (`simulated-human:*`: written by a program or by the developers, "
                  "not by annotators).", ""]  # fmt: skip
    cost = rep["cost"]
    failures = rep["ai_parse_failures"]
    lines += [
        f"- human side: {human} ({rep['human_items']} items)",
        f"- AI side: {', '.join(rep['ai_annotators']) or 'none'} ({rep['ai_items']} items"
        + (f", {failures} unparsed replies recorded as failures)" if failures is not None else ")"),
        f"- items annotated by both: {rep['both']}",
        f"- verdict agreement: {_num(rep['agreement'])}; Cohen's kappa: {_num(rep['cohen_kappa'])}",
        f"- confusion: {', '.join(f'{k}: {v}' for k, v in sorted(rep['confusion'].items())) or 'n/a'}",
        f"- AI feedback contradicting the gold answers: {rep['ai_contradicts_gold']} of {rep['ai_items']}",
        *(f"- {side} feedback stating a parseable right answer: {_num(a['states_answer'])} of all records, "
          f"{_num(a['states_answer_incorrect'])} of the {a['incorrect_verdicts']} with an incorrect verdict; "
          f"stating one that is not a gold answer: {_num(a['states_non_gold_answer'])}"
          for side, a in (("human", rep["right_answers"]["human"]), ("AI", rep["right_answers"]["ai"]))),
        f"- cost: human {_num(cost['human_minutes_per_item'], '.2f')} minutes per item "
        f"({cost['human_items_timed']} timed); AI {_num(cost['ai_tokens_per_item'], '.0f')} tokens and "
        f"{_num(cost['ai_seconds_per_item'], '.2f')} s per item ({cost['ai_tokens_total']} tokens in all)",
    ]  # fmt: skip
    if rep["ai_contradictions"]:
        lines += ["", "Flagged AI feedback:", ""]
        lines += [f"- `{qid}`: {why}" for qid, why in sorted(rep["ai_contradictions"].items())]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------------- annotators


def annotator_summary(records: list[FeedbackRecord], failures: int | None = None, threshold: float = CORRECT_THRESHOLD,
                      training_seconds: float | None = None) -> dict[str, Any]:  # fmt: skip
    """One annotator's feedback against the gold answers (`laffi annotators-compare`): verdict agreement and Cohen's
    kappa with the reference annotator's verdict (`gold_verdict`, the reference annotator's rule), agreement within
    each reference class (the share of the reference's correct / incorrect items it calls the same), feedback that
    contradicts the gold answers, feedback whose stated right answer parses (`prompts.parse_feedback`; of all records
    and of those with an incorrect verdict: `answer_shares`), and cost."""
    ref = [gold_verdict(r, threshold) for r in records]
    got = [r.verdict for r in records]
    per_class = {}
    for label in ("correct", "incorrect"):
        mine = [g for x, g in zip(ref, got, strict=True) if x == label]
        per_class[label] = {"items": len(mine), "agreement": sum(g == label for g in mine) / len(mine) if mine
                            else float("nan")}  # fmt: skip
    tokens = [r.meta.get("prompt_tokens", 0) + r.meta.get("completion_tokens", 0) for r in records]
    seconds = [r.meta["seconds"] for r in records if isinstance(r.meta.get("seconds"), (int, float))]
    n = len(records)
    return {
        "annotators": sorted({r.annotator for r in records}),
        "items": n,
        "failures": failures,
        "abstentions": sum(not r.predicted_answer.strip() for r in records),
        "agreement": sum(x == y for x, y in zip(ref, got, strict=True)) / n if n else float("nan"),
        "cohen_kappa": cohen_kappa(ref, got),
        "per_class": per_class,
        "called_correct": sum(g == "correct" for g in got),
        "contradicts_gold": sum(contradiction(r, threshold) is not None for r in records) / n if n else float("nan"),
        **answer_shares(records),
        # An LLM annotator's records: the share whose right-answer sentence was appended from the gold answers.
        "answer_appended": sum(r.meta.get("right_answer") == "appended" for r in records) / n
        if n and any("right_answer" in r.meta for r in records) else None,
        "tokens_per_item": sum(tokens) / n if n else None,
        "seconds_per_item": sum(seconds) / len(seconds) if seconds else None,
        "training_seconds": training_seconds,
        # annotate.verdict 'score': how well the annotator's P(incorrect) ranks the reference's incorrect items first.
        "incorrect_prob_auc": roc_auc([r.meta["incorrect_prob"] for r in records], [x == "incorrect" for x in ref])
        if records and all(isinstance(r.meta.get("incorrect_prob"), (int, float)) for r in records) else None,
    }  # fmt: skip


def compare_markdown(summaries: dict[str, dict[str, Any]]) -> str:
    """The comparison table, one row per annotator."""
    lines = ["| annotator | items (unparsed) | agreement with reference | Cohen's κ | agreement on reference-correct / "
             "-incorrect | P(incorrect) AUC | contradicts gold | states a parseable right answer: all / incorrect "
             "verdicts | tokens / item | s / item | training s |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for name, s in summaries.items():
        pc = s["per_class"]
        lines.append(
            f"| {name} | {s['items']} ({'n/a' if s['failures'] is None else s['failures']}) | {_num(s['agreement'])} | "
            f"{_num(s['cohen_kappa'])} | {_num(pc['correct']['agreement'])} (of {pc['correct']['items']}) / "
            f"{_num(pc['incorrect']['agreement'])} (of {pc['incorrect']['items']}) | "
            f"{_num(s.get('incorrect_prob_auc'))} | {_num(s['contradicts_gold'])} | "
            f"{_num(s['states_answer'])} / {_num(s.get('states_answer_incorrect'))} "
            f"(of {s.get('incorrect_verdicts', 'n/a')}) | {_num(s['tokens_per_item'], '.0f')} | "
            f"{_num(s['seconds_per_item'], '.2f')} | {_num(s['training_seconds'], '.0f')} |")  # fmt: skip
    labels = {name: ", ".join(s["annotators"]) for name, s in summaries.items()}
    lines += ["", "Annotators: " + "; ".join(f"{k} = {v}" for k, v in labels.items()) + ". Reference verdict: the "
              "reference annotator's rule on the gold answers (SQuAD F1 >= threshold; an abstention is correct only "
              "on an unanswerable question)."]  # fmt: skip
    return "\n".join(lines) + "\n"
