"""What the training loop trains on: an `Example` (a prompt and a completion, loss on the completion only) and its
tokenization. `laffi.methods` makes examples; `laffi.training.loop` trains on their token rows.

Prompt and completion are tokenized separately, the prompt exactly as generation renders it, so a trained sequence is
the inference prompt token for token.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass
class Example:
    kind: str  # the method that made it (critique examples say "critique", laffi+sft ones "sft" or "laffi")
    id: str
    prompt: str
    completion: str
    # (text, carries loss) pieces whose concatenation is `completion`; None: the whole completion carries loss.
    parts: list[tuple[str, bool]] | None = None
    # Examples of one kind with the same group share the start of their prompt (the passage): shared-prefix training
    # (laffi/training/packing.py) orders them together and computes that start once. "": a group of its own.
    group: str = ""
    # On-policy self-distillation (sdft): the teacher's prompt; the student samples the completion from `prompt` while
    # training (laffi.training.distill.SelfDistillation), so `completion` is unused. None: train on `completion`.
    teacher_prompt: str | None = None


def completion_tokens(ex: Example, tokenizer: Any) -> tuple[list[int], list[int]]:
    """Token ids of the completion + end of turn, and which of them carry loss (the end of turn always does).

    Pieces are tokenized one by one so a loss boundary never falls inside a token."""
    parts = ex.parts if ex.parts is not None else [(ex.completion, True)]
    ids: list[int] = []
    mask: list[int] = []
    for text, loss in parts:
        piece = tokenizer(text, add_special_tokens=False)["input_ids"]
        ids += piece
        mask += [int(loss)] * len(piece)
    return ids + [tokenizer.eos_token_id], mask + [1]


def tokenize_example(ex: Example, tokenizer: Any, max_length: int) -> dict[str, list[int]]:
    """input_ids = prompt + completion + end of turn; completion_mask marks the tokens that carry loss."""
    prompt_ids = tokenizer(ex.prompt, add_special_tokens=False)["input_ids"]
    completion_ids, completion_mask = completion_tokens(ex, tokenizer)
    # Keep the completion whole and cut the prompt from the left (its passage start) if the sequence is too long.
    room = max_length - len(completion_ids)
    if room < 1:
        completion_ids, completion_mask = completion_ids[: max_length - 1], completion_mask[: max_length - 1]
        room = 1
    prompt_ids = prompt_ids[-room:]
    mask = [0] * len(prompt_ids) + completion_mask
    return {"input_ids": prompt_ids + completion_ids, "completion_mask": mask}
