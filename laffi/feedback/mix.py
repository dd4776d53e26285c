"""The hybrid mix: a seeded share of the training questions take human feedback, the rest AI feedback.

The ids are shuffled once with the seed and the first round(fraction * n) take the human record, so with one seed the
human share of a larger fraction contains that of a smaller one (the ablation's fractions are nested). Each record
keeps its own `annotator`, so provenance survives into training and reports.
"""

from __future__ import annotations

import random
from typing import Any

from laffi.errors import LaffiError
from laffi.records import FeedbackRecord


def _by_id(records: list[FeedbackRecord], side: str) -> dict[str, FeedbackRecord]:
    out: dict[str, FeedbackRecord] = {}
    for r in records:
        if r.id in out:
            raise LaffiError(f"{side} feedback: question id '{r.id}' appears twice")
        out[r.id] = r
    return out


def human_share(ids: list[str], fraction: float, seed: int) -> list[str]:
    """The seeded round(fraction * n) of `ids` that take human feedback, in `ids`' order."""
    if not 0.0 <= fraction <= 1.0:
        raise LaffiError(f"human fraction: must be between 0 and 1, got {fraction}")
    shuffled = list(ids)
    random.Random(seed).shuffle(shuffled)
    chosen = set(shuffled[: round(fraction * len(ids))])
    return [i for i in ids if i in chosen]


def mix_feedback(
    human: list[FeedbackRecord], ai: list[FeedbackRecord], fraction: float, seed: int,
    human_ids: list[str] | None = None,
) -> tuple[list[FeedbackRecord], dict[str, Any]]:  # fmt: skip
    """One record per question id present in both lists; a seeded round(fraction * n) of them take the human record.

    `human_ids`: the ids that take the human record, chosen beforehand (`human_share`; e.g. the share a learned
    annotator learned from, whose AI list then covers only the other questions): every id with a human record that
    is among them or has an AI record is kept.

    Returns the records (in the human list's order) and the split: counts, seed, fraction and which ids took which."""
    if not 0.0 <= fraction <= 1.0:
        raise LaffiError(f"human fraction: must be between 0 and 1, got {fraction}")
    human_by_id, ai_by_id = _by_id(human, "human"), _by_id(ai, "AI")
    if human_ids is None:
        ids = [r.id for r in human if r.id in ai_by_id]
        chosen = set(human_share(ids, fraction, seed))
    else:
        chosen = set(human_ids) & set(human_by_id)
        ids = [r.id for r in human if r.id in chosen or r.id in ai_by_id]
    n_human = len(chosen)
    records = [human_by_id[i] if i in chosen else ai_by_id[i] for i in ids]
    split = {
        "fraction": fraction,
        "seed": seed,
        "questions": len(ids),
        "human": n_human,
        "ai": len(ids) - n_human,
        "human_ids": [i for i in ids if i in chosen],
        "ai_ids": [i for i in ids if i not in chosen],
        "dropped_human_only": len(human_by_id) - len(ids),
        "dropped_ai_only": len(set(ai_by_id) - set(ids)),
        "annotators": sorted({r.annotator for r in records}),
    }
    return records, split
