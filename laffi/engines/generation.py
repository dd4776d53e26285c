"""Batched greedy decoding, and the answer and revise loops built on it (resumable, with progress).

By default the key/value cache of shared prompt prefixes (shots; passage) is computed once and reused, and only each
prompt's own suffix is prefilled (prefix_cache.py). The plain path (`reuse_prefix=False`, and the fallback for
models whose cache cannot be sliced) sorts prompts by length so each batch pads little. Every sequence stops at the
model's end of turn. Results come back in the caller's order.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from laffi import prompts
from laffi.engines import prefix_cache, steering
from laffi.files import JsonlAppender, iter_chunks
from laffi.metrics import normalize_answer
from laffi.models import model_device
from laffi.records import Generation, Question, Revision, read_jsonl

Progress = Callable[[int], None]


@dataclass
class DecodeSettings:
    max_new_tokens: int = 32
    batch_size: int = 8
    # Reuse the key/value cache of prefixes shared between prompts (same answers up to float rounding, much faster).
    reuse_prefix: bool = True
    # Decoding threads sharing out the passages, each with an equal share of torch's threads (prefix path only).
    workers: int = 1
    # Guessed next tokens checked per decode step (prompt lookup, prefix path only; 0: one token per step).
    draft_tokens: int = 0


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
    na: list[float | None] | None = None,
    passages: list[str] | None = None,
    na_pair: tuple[int, int] | None = None,
) -> list[str]:
    """Greedy continuations of `texts`. `on_batch(indices, outputs)` is called after each batch (for resume).

    With `na` (a list as long as `texts`), `na[i]` gets prompt i's no-answer score (steering.py: the abstention
    phrase's first token against the model's own first token), before `on_batch` reports it. With `passages` (one
    per text), each answer is a span of its passage or the abstention phrase (steering.SpanConstraint)."""
    import torch

    encoded = tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else []  # one call: ~2x faster
    outputs: list[str] = [""] * len(texts)
    stops = stop_token_ids(tokenizer, model)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stops[0]
    steer = _steering(tokenizer, texts, stops, na, passages)
    if steer is not None and na_pair is not None:  # a fixed pair of first tokens instead (`verdict_scores`)
        steer.abstain, steer.versus = na_pair
    if settings.reuse_prefix and texts and not getattr(model.config, "is_encoder_decoder", False):

        def decoded(indices: list[int], tokens: list[list[int]]) -> None:
            for i, ids in zip(indices, tokens, strict=True):
                outputs[i] = tokenizer.decode(ids, skip_special_tokens=True).strip()
            if on_batch is not None:
                on_batch(indices, [outputs[i] for i in indices])

        args = (settings.max_new_tokens, settings.batch_size, stops, pad_id, decoded, settings.workers,
                settings.draft_tokens)  # fmt: skip
        if prefix_cache.greedy_ids(model, encoded, *args, steering=steer) is not None:
            return outputs
    order = sorted(range(len(texts)), key=lambda i: -len(encoded[i]))
    device = model_device(model)
    for idx in iter_chunks(order, settings.batch_size):
        width = max(len(encoded[i]) for i in idx)
        # Left padding: every row's last prompt token sits at the same position, where decoding starts. Built as
        # lists and made tensors once, on the model's device.
        input_ids = torch.tensor([[pad_id] * (width - len(encoded[i])) + encoded[i] for i in idx], dtype=torch.long,
                                 device=device)  # fmt: skip
        attention = torch.tensor([[0] * (width - len(encoded[i])) + [1] * len(encoded[i]) for i in idx],
                                 dtype=torch.long, device=device)  # fmt: skip
        extra = {}
        if steer is not None:
            from transformers import LogitsProcessorList

            extra["logits_processor"] = LogitsProcessorList([steering.logits_processor(steer, idx, width, stops)])
        with torch.inference_mode():
            out = model.generate(
                input_ids=input_ids,
                attention_mask=attention,
                max_new_tokens=settings.max_new_tokens,
                do_sample=False,
                eos_token_id=stops,
                pad_token_id=pad_id,
                **extra,
            )
        texts_out = tokenizer.batch_decode(out[:, width:], skip_special_tokens=True)
        for i, text in zip(idx, texts_out, strict=True):
            outputs[i] = text.strip()
        if on_batch is not None:
            on_batch(list(idx), [outputs[i] for i in idx])
    return outputs


def _steering(tokenizer: Any, texts: list[str], stops: list[int], na: list[float | None] | None,
              passages: list[str] | None) -> steering.Steering | None:  # fmt: skip
    """What `generate` asks of the decoders besides plain greedy choices (None: nothing)."""
    if not texts or (na is None and passages is None):
        return None
    abstain = steering.abstain_token_ids(tokenizer, texts[0])  # every prompt ends with the same assistant start
    constraints = None
    if passages is not None:
        constraints = [steering.span_constraint(tokenizer, t, p, stops, abstain)
                       for t, p in zip(texts, passages, strict=True)]  # fmt: skip
    return steering.Steering(abstain=abstain[0] if abstain and na is not None else None, constraints=constraints,
                             na=na)  # fmt: skip


def generate_records(
    model: Any,
    tokenizer: Any,
    jobs: list[tuple[str, str]],
    settings: DecodeSettings,
    parse: Callable[[str, str], str],
    partial: Path | None = None,
    progress: Progress | None = None,
    na_scores: bool = False,
    passages: dict[str, str] | None = None,
) -> dict[str, Generation]:
    """Generate for each `(id, prompt)` job and parse the output with `parse(id, raw)`.

    With `partial`, each finished record is appended there at once and a re-run skips what it holds (resume).
    `na_scores`: each record gets its no-answer score (`Generation.na_prob`); `passages` ({id: passage}): span
    answers (see `generate`)."""
    done: dict[str, Generation] = {}
    if partial and partial.exists():
        done = {g.id: g for g in read_jsonl(partial, Generation, tolerate_torn_tail=True)}
    todo = [(qid, text) for qid, text in jobs if qid not in done]
    if progress:
        progress(len(jobs) - len(todo))
    appender = JsonlAppender(partial) if partial else None
    na: list[float | None] | None = [None] * len(todo) if na_scores else None

    def keep(indices: list[int], raws: list[str]) -> None:
        for i, raw in zip(indices, raws, strict=True):
            qid = todo[i][0]
            done[qid] = Generation(id=qid, raw=raw, answer=parse(qid, raw), na_prob=na[i] if na else None)
            if appender:
                appender.append(done[qid])
        if progress:
            progress(len(indices))

    extra: dict[str, Any] = {}
    if na is not None:
        extra["na"] = na
    if passages is not None:
        extra["passages"] = [passages[qid] for qid, _ in todo]
    try:
        generate(model, tokenizer, [text for _, text in todo], settings, on_batch=keep, **extra)
    finally:
        if appender:
            appender.close()
    return done


def answer_questions(
    model: Any,
    tokenizer: Any,
    questions: list[Question],
    shots: int,
    settings: DecodeSettings,
    partial: Path | None = None,
    require_in_context: bool = False,
    progress: Progress | None = None,
    answer_prefix: str = "",
    constrain: str = "none",
) -> list[Generation]:
    """Answer every question with the few-shot QA prompt (resumable through `partial`). `answer_prefix` ends each
    prompt, after the start of the assistant turn (a Chain of Hindsight adapter's positive marker). Every answer
    gets its no-answer score (`na_prob`); `constrain="span"` decodes span answers only (steering.py)."""
    by_id = {q.id: q for q in questions}
    jobs = [(q.id, prompts.render(prompts.qa_messages(q, shots), tokenizer) + answer_prefix) for q in questions]

    def parse(qid: str, raw: str) -> str:
        return prompts.parse_answer(raw, by_id[qid].context, require_in_context)

    passages = {q.id: q.context for q in questions} if constrain == "span" else None
    done = generate_records(model, tokenizer, jobs, settings, parse, partial, progress, na_scores=True,
                            passages=passages)  # fmt: skip
    return [done[q.id] for q in questions]


def verdict_scores(model: Any, tokenizer: Any, questions: list[Question], answers: dict[str, str],
                   settings: DecodeSettings) -> dict[str, float]:  # fmt: skip
    """A LaFFi adapter's no-answer score of its own answers (answer.na_score: verdict): on the feedback prompt it was
    trained on, with its answer and the reply started with "Verdict:", the probability of " incorrect" against
    " correct" (normalised over the two): one prefill per question (prefix-cached), no decoding."""
    texts = [prompts.render(prompts.feedback_messages(q, answers[q.id]), tokenizer) + "Verdict:" for q in questions]
    probs = pair_probabilities(model, tokenizer, texts, (" incorrect", " correct"), settings)
    return {q.id: p for q, p in zip(questions, probs, strict=True)}


def pair_probabilities(model: Any, tokenizer: Any, texts: list[str], words: tuple[str, str],
                       settings: DecodeSettings) -> list[float]:  # fmt: skip
    """For each text, the probability of continuing with `words[0]` against `words[1]`, normalised over the two
    (sigmoid of the difference of their first tokens' logits): one prefill per text (prefix-cached), no decoding.
    The words' first tokens are read after the first text (they must differ)."""
    from dataclasses import replace

    if not texts:
        return []
    before = tokenizer(texts[0], add_special_tokens=False)["input_ids"]
    firsts = []
    for word in words:
        after = tokenizer(texts[0] + word, add_special_tokens=False)["input_ids"]
        firsts.append(after[prefix_cache.common_prefix_len(before, after)])
    if firsts[0] == firsts[1]:
        raise ValueError(f"pair_probabilities: {words[0]!r} and {words[1]!r} start with the same token")
    out: list[float | None] = [None] * len(texts)
    generate(model, tokenizer, texts, replace(settings, max_new_tokens=1, draft_tokens=0), na=out,
             na_pair=(firsts[0], firsts[1]))  # fmt: skip
    return [float(p) for p in out]


def answer_prefix(adapter: str | Path | None) -> str:
    """The text an adapter's training put after the start of the assistant turn, which answering must repeat: read
    from the adapter's laffi_train.json ("" for the base model, for sft/laffi adapters and for adapters made
    elsewhere)."""
    import json

    info = Path(adapter) / "laffi_train.json" if adapter else None
    if info is None or not info.exists():
        return ""
    return json.loads(info.read_text(encoding="utf-8")).get("answer_prefix", "")


def revise_answers(
    model: Any,
    tokenizer: Any,
    questions: list[Question],
    first: list[Generation],
    rounds: int,
    settings: DecodeSettings,
    partial: Path | None = None,
    require_in_context: bool = False,
    progress: Progress | None = None,
    threshold: float = 0.0,
    incorrect_probs: dict[str, float] | None = None,
) -> list[Revision]:
    """Answer -> predicted feedback -> revised answer, for up to `rounds` rounds.

    `threshold` > 0: only the answers whose probability of "Verdict: incorrect" (`incorrect_probs`, by default
    `verdict_scores` on the first answers) is above it go through the rounds; the others keep their first answer
    (`Revision.revised` False). Each `Revision` records its probability when there is one.

    Each round asks the model (with the LaFFi training prompt) for feedback on its current answer. When the predicted
    verdict is "incorrect" and the feedback states a different right answer (parsed by `prompts.parse_feedback`, the
    parser the training targets were written for), that answer replaces the current one; otherwise the question is
    settled and leaves later rounds. Round r resumes from `partial` + ".round<r>".
    """
    by_id = {q.id: q for q in questions}
    probs = incorrect_probs
    if threshold > 0 and probs is None:
        probs = verdict_scores(model, tokenizer, questions, {g.id: g.answer for g in first}, settings)
    history = {g.id: Revision(id=g.id, first_answer=g.answer, final_answer=g.answer,
                              incorrect_prob=probs[g.id] if probs is not None else None,
                              revised=threshold <= 0 or probs[g.id] > threshold) for g in first}  # fmt: skip
    active = [q.id for q in questions if history[q.id].revised]
    for r in range(1, rounds + 1):
        if not active:
            break
        jobs = [(qid, prompts.render(prompts.feedback_messages(by_id[qid], history[qid].final_answer), tokenizer))
                for qid in active]  # fmt: skip

        def parse(qid: str, raw: str) -> str:
            return revised_answer(raw, history[qid].final_answer, by_id[qid].context, require_in_context)[1]

        round_partial = partial.with_name(f"{partial.name}.round{r}") if partial else None
        done = generate_records(model, tokenizer, jobs, settings, parse, round_partial, progress)
        still_active = []
        for qid in active:
            verdict, new = revised_answer(done[qid].raw, history[qid].final_answer, by_id[qid].context,
                                          require_in_context)  # fmt: skip
            h = history[qid]
            h.feedback.append(done[qid].raw)
            h.verdicts.append(verdict)
            h.answers.append(new)
            if new != h.final_answer:
                h.final_answer = new
                still_active.append(qid)
        active = still_active
    return [history[q.id] for q in questions]


def revised_answer(feedback: str, current: str, context: str, require_in_context: bool = False) -> tuple[str, str]:
    """(verdict, answer after this feedback). Only an "incorrect" verdict with a stated, different answer changes it."""
    verdict, stated = prompts.parse_feedback(feedback)
    if verdict is None:
        return "unparsed", current
    if verdict == "correct" or stated is None:
        return verdict, current
    new = prompts.parse_answer(f'"{stated}"', context, require_in_context) if stated else ""
    if normalize_answer(new) == normalize_answer(current) and bool(new) == bool(current):
        return verdict, current
    return verdict, new
