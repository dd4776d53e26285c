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


def mix_feedback(
    human: list[FeedbackRecord], ai: list[FeedbackRecord], fraction: float, seed: int
) -> tuple[list[FeedbackRecord], dict[str, Any]]:
    """One record per question id present in both lists; a seeded round(fraction * n) of them take the human record.

    Returns the records (in the human list's order) and the split: counts, seed, fraction and which ids took which."""
    if not 0.0 <= fraction <= 1.0:
        raise LaffiError(f"human fraction: must be between 0 and 1, got {fraction}")
    human_by_id, ai_by_id = _by_id(human, "human"), _by_id(ai, "AI")
    ids = [r.id for r in human if r.id in ai_by_id]
    shuffled = list(ids)
    random.Random(seed).shuffle(shuffled)
    n_human = round(fraction * len(ids))
    chosen = set(shuffled[:n_human])
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
        "dropped_ai_only": len(ai_by_id) - len(ids),
        "annotators": sorted({r.annotator for r in records}),
    }
    return records, split
