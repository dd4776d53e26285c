"""Batched greedy decoding, and the `answer` stage built on it (resumable, with progress).

Prompts are sorted by length before batching so each batch pads little, and every sequence stops at the model's end
of turn. Results come back in the caller's order.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from laffi import prompts
from laffi.records import Generation, JsonlAppender, Question, iter_chunks, read_jsonl


@dataclass
class DecodeSettings:
    max_new_tokens: int = 32
    batch_size: int = 8


def stop_token_ids(tokenizer: Any, model: Any) -> list[int]:
    """End-of-turn ids: the tokenizer's eos plus the generation config's (chat models often have both)."""
    ids = set()
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if isinstance(configured, int):
        ids.add(configured)
    elif configured:
        ids.update(configured)
    return sorted(ids)


def generate(
    model: Any,
    tokenizer: Any,
    texts: list[str],
    settings: DecodeSettings,
    on_batch: Callable[[list[int], list[str]], None] | None = None,
) -> list[str]:
    """Greedy continuations of `texts`. `on_batch(indices, outputs)` is called after each batch (for resume)."""
    import torch

    encoded = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    order = sorted(range(len(texts)), key=lambda i: -len(encoded[i]))
    outputs: list[str] = [""] * len(texts)
    stops = stop_token_ids(tokenizer, model)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stops[0]
    for idx in iter_chunks(order, settings.batch_size):
        width = max(len(encoded[i]) for i in idx)
        # Left padding: every row's last prompt token sits at the same position, where decoding starts.
        input_ids = torch.full((len(idx), width), pad_id, dtype=torch.long)
        attention = torch.zeros((len(idx), width), dtype=torch.long)
        for row, i in enumerate(idx):
            ids = encoded[i]
            input_ids[row, width - len(ids) :] = torch.tensor(ids)
            attention[row, width - len(ids) :] = 1
        with torch.inference_mode():
            out = model.generate(
                input_ids=input_ids,
                attention_mask=attention,
                max_new_tokens=settings.max_new_tokens,
                do_sample=False,
                eos_token_id=stops,
                pad_token_id=pad_id,
            )
        texts_out = tokenizer.batch_decode(out[:, width:], skip_special_tokens=True)
        for i, text in zip(idx, texts_out, strict=True):
            outputs[i] = text.strip()
        if on_batch is not None:
            on_batch(list(idx), [outputs[i] for i in idx])
    return outputs


def answer_questions(
    model: Any,
    tokenizer: Any,
    questions: list[Question],
    shots: int,
    settings: DecodeSettings,
    partial: Path | None = None,
    require_in_context: bool = False,
    progress: Callable[[int], None] | None = None,
) -> list[Generation]:
    """Answer every question with the few-shot QA prompt. With `partial`, finished answers are appended there as
    they come, and a re-run skips them (resume after a crash)."""
    done = {}
    if partial and partial.exists():
        done = {g.id: g for g in read_jsonl(partial, Generation, tolerate_torn_tail=True)}
    todo = [q for q in questions if q.id not in done]
    if progress:
        progress(len(questions) - len(todo))
    texts = [prompts.render(prompts.qa_messages(q, shots), tokenizer) for q in todo]
    appender = JsonlAppender(partial) if partial else None

    def keep(indices: list[int], raws: list[str]) -> None:
        for i, raw in zip(indices, raws, strict=True):
            q = todo[i]
            g = Generation(id=q.id, raw=raw, answer=prompts.parse_answer(raw, q.context, require_in_context))
            done[q.id] = g
            if appender:
                appender.append(g)
        if progress:
            progress(len(indices))

    try:
        generate(model, tokenizer, texts, settings, on_batch=keep)
    finally:
        if appender:
            appender.close()
    return [done[q.id] for q in questions]
