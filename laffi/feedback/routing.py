"""Where the human budget goes: a seeded random share (`laffi.feedback.mix.human_share`), or the questions the learned
annotator is least sure of (`annotate.human_selection: uncertain`).

The uncertain selection spends the same budget, round(fraction x n) human records, in rounds:

    round 0     a seeded random share of the budget (`first_round`): the first ids of the same seeded shuffle that
                `human_share` takes, so it is contained in the random selection of the same seed and fraction
    round 1..R  the learned annotator, fine-tuned on the human records given so far, scores every item no person has
                yet (P(incorrect) after "Verdict:", laffi/feedback/llm.py) and the round goes to the items whose
                P(incorrect) is closest to its cut (`annotate.verdict_threshold`; -1: the cut that judges the human
                records' share of the items incorrect); ties go by the seeded shuffle

The rest of the budget is split evenly over the R later rounds (the earlier rounds take the remainder). This module
chooses; the caller trains and scores (`score(chosen ids, round) -> ({id: P(incorrect)} of the other ids, cut)`:
`laffi.pipeline.cells.uncertain_selection`), so the choice itself needs no model.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

from laffi.errors import LaffiError

SELECTIONS = ("random", "uncertain")

Scorer = Callable[[list[str], int], tuple[dict[str, float], float]]


def budget(n: int, fraction: float) -> int:
    """Human records for `n` items at `fraction` (as `human_share`: round(fraction x n))."""
    if not 0.0 <= fraction <= 1.0:
        raise LaffiError(f"human fraction: must be between 0 and 1, got {fraction}")
    return round(fraction * n)


def round_sizes(total: int, first_round: float, rounds: int) -> list[int]:
    """How many records each round gives: round(first_round x total) (at least 1 when there is a budget) first, the
    rest evenly over `rounds` later rounds (the earlier ones take the remainder); empty rounds are left out."""
    if total <= 0:
        return []
    first = min(total, max(1, round(first_round * total)))
    rest = total - first
    later = [rest // rounds + (1 if i < rest % rounds else 0) for i in range(rounds)]
    return [first, *(s for s in later if s)]


def seeded_order(ids: list[str], seed: int) -> list[str]:
    """The seeded shuffle of `ids` that `human_share` takes its prefix of."""
    shuffled = list(ids)
    random.Random(seed).shuffle(shuffled)
    return shuffled


def closest_to_cut(probs: dict[str, float], cut: float, k: int, order: dict[str, int]) -> list[str]:
    """The `k` ids whose P(incorrect) is closest to `cut`, closest first; ties by `order` (the seeded shuffle)."""
    return sorted(probs, key=lambda i: (abs(probs[i] - cut), order[i]))[:k]


def select_uncertain(ids: list[str], fraction: float, seed: int, first_round: float, rounds: int,
                     score: Scorer) -> dict[str, Any]:  # fmt: skip
    """The uncertain selection of round(fraction x len(ids)) of `ids` (see the module's doc).

    Returns {"selection", "fraction", "seed", "budget", "first_round", "selection_rounds", "human_ids" (in `ids`'
    order), "rounds": [{"round", "how": "random" | "uncertain", "ids" (in the order given), and for uncertain rounds
    "cut", "learned_from", "scored"}], "incorrect_prob": {id: P(incorrect) when it was chosen} (ids of uncertain
    rounds)}."""
    if len(set(ids)) != len(ids):
        raise LaffiError("human selection: an id appears twice")
    total = budget(len(ids), fraction)
    shuffled = seeded_order(ids, seed)
    order = {i: k for k, i in enumerate(shuffled)}
    sizes = round_sizes(total, first_round, rounds)
    chosen: list[str] = shuffled[: sizes[0]] if sizes else []
    log: list[dict[str, Any]] = [{"round": 0, "how": "random", "ids": list(chosen)}] if sizes else []
    at_selection: dict[str, float] = {}
    for r, size in enumerate(sizes[1:], start=1):
        taken = set(chosen)
        probs, cut = score(list(chosen), r)
        rest = {i: probs[i] for i in ids if i not in taken}
        if len(rest) != len(ids) - len(taken):
            missing = next(i for i in ids if i not in taken and i not in probs)
            raise LaffiError(f"human selection, round {r}: no P(incorrect) for id '{missing}'")
        picked = closest_to_cut(rest, cut, size, order)
        at_selection.update({i: rest[i] for i in picked})
        log.append({"round": r, "how": "uncertain", "cut": cut, "learned_from": len(chosen), "scored": len(rest),
                    "ids": picked})  # fmt: skip
        chosen += picked
    taken = set(chosen)
    return {"selection": "uncertain", "fraction": fraction, "seed": seed, "budget": total,
            "first_round": first_round, "selection_rounds": rounds, "human_ids": [i for i in ids if i in taken],
            "rounds": log, "incorrect_prob": at_selection}  # fmt: skip


def queue(probs: dict[str, float], cut: float, k: int, order: list[str]) -> list[str]:
    """The `k` items a person should annotate first: P(incorrect) closest to the cut first, ties in `order`."""
    position = {i: n for n, i in enumerate(order)}
    return closest_to_cut(probs, cut, k, position)
