"""What the greedy decoders do besides taking the most likely token: a no-answer score at the first answer position,
and span answers (a logits mask), the same on the prefix-cached path (prefix_cache.py) and the plain `generate` path
(`logits_processor`).

No-answer score (`na_prob`): at the first answer position, the probability of the abstention phrase's first token
against the model's own first token, normalised over the two: sigmoid(logit[abstain] - logit[own]). When the model's
own first token is the abstention token, "own" is the best other token, so the score is above 0.5 exactly when the
model starts its answer with the abstention phrase. It comes from the logits the decoder already has (the last
prompt token's), so it costs no forward pass. Under a span constraint both tokens are taken among the allowed ones.

Span answers (`SpanConstraint`): the answer must be a run of the passage's own tokens (as the passage was tokenized
inside the prompt, so with their leading spaces: " Rollo") or the abstention phrase's tokens. The first token may
also be a passage token's form without its leading space ("Rollo", when that is one token): a reply starts without a
space, and a model asked to start with " Rollo" mostly prefers to abstain (the bundled model abstained on 20 of 20
questions without this, 18 of 20 with it). After a generated sequence, the allowed next tokens are those that
continue one of its occurrences in the passage, plus end of turn when it is a whole span; spans start and end on
character boundaries (a token that shares a character with its neighbour, a split multi-byte character, cannot begin
or end one).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from laffi import prompts


def abstain_token_ids(tokenizer: Any, prompt: str) -> list[int]:
    """The abstention phrase's tokens as the model writes them right after `prompt` (a chat prompt ends with a new
    line, the plain-text fallback with 'Assistant:', where a space comes first)."""
    sep = "" if prompt.endswith(("\n", " ")) else " "
    before = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    after = tokenizer(prompt + sep + prompts.ABSTAIN_PHRASE, add_special_tokens=False)["input_ids"]
    n = 0
    while n < min(len(before), len(after)) and before[n] == after[n]:
        n += 1
    return after[n:]


def na_probability(logits: Any, chosen: int, abstain: int, allowed: list[int] | None = None) -> float:
    """sigmoid(logit[abstain] - logit[own]) at the first answer position (see the module docstring); `logits` is one
    row (vocab,), `chosen` the token the decoder took there, `allowed` the tokens it could take (None: all)."""
    import torch

    row = logits.float()
    if allowed is not None:
        row = row[torch.tensor(allowed, device=row.device)]
        ids = allowed
        pos = {t: k for k, t in enumerate(allowed)}
        a, own = row[pos[abstain]].item(), pos[chosen]
    else:
        ids = None
        a, own = row[abstain].item(), chosen
    if (ids[own] if ids is not None else own) == abstain:
        if row.numel() < 2:
            return 1.0
        top = torch.topk(row, 2)
        first, second = top.indices.tolist()
        other = second if first == own else first
        return _sigmoid(a - row[other].item())
    return _sigmoid(a - row[own].item())


def _sigmoid(d: float) -> float:
    if math.isnan(d):
        return 0.5
    if d >= 0:
        return 1.0 / (1.0 + math.exp(-d))
    e = math.exp(d)  # d = -inf gives 0.0
    return e / (1.0 + e)


@dataclass
class SpanConstraint:
    """The tokens a span answer may take next (see the module docstring)."""

    passage: list[int]
    starts: list[int]  # positions where a span may begin
    ends: set[int]  # positions (exclusive) where a span may end
    abstain: list[int]
    stops: list[int]
    # First tokens only: a passage token's form without its leading space ("Rollo" for " Rollo"), which the model
    # prefers at the start of its reply; it stands for the passage tokens it maps to, and the span goes on from there.
    alias: dict[int, set[int]] = field(default_factory=dict)
    _first: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        firsts = {self.passage[p] for p in self.starts}
        aliases = {a for a, originals in self.alias.items() if originals & firsts}
        self._first = sorted(firsts | aliases | ({self.abstain[0]} if self.abstain else set()))

    def _starts_with(self, p: int, first: int) -> bool:
        return self.passage[p] == first or self.passage[p] in self.alias.get(first, ())

    def allowed(self, generated: list[int]) -> list[int]:
        """Allowed next token ids, ascending (ties in the logits then go to the lowest id, as argmax does)."""
        n = len(generated)
        if n == 0:
            return self._first
        out: set[int] = set()
        if generated == self.abstain[:n]:
            out.update(self.stops if n == len(self.abstain) else [self.abstain[n]])
        for p in self.starts:
            if p + n <= len(self.passage) and self._starts_with(p, generated[0]) and (
                self.passage[p + 1 : p + n] == generated[1:]
            ):
                if p + n < len(self.passage):
                    out.add(self.passage[p + n])
                if p + n in self.ends:
                    out.update(self.stops)
        return sorted(out) or sorted(self.stops)  # a dead end (cannot happen from allowed tokens): stop


def span_constraint(tokenizer: Any, prompt: str, passage: str, stops: list[int],
                    abstain: list[int]) -> SpanConstraint:  # fmt: skip
    """The constraint for one prompt: the passage's tokens as tokenized inside `prompt` (its last occurrence)."""
    enc = tokenizer(prompt, add_special_tokens=False, return_offsets_mapping=True)
    start = prompt.rfind(passage)
    end = start + len(passage)
    picked = [(t, o) for t, o in zip(enc["input_ids"], enc["offset_mapping"], strict=True) if o[1] > start and
              o[0] < end]  # fmt: skip
    ids = [t for t, _ in picked]
    offsets = [tuple(o) for _, o in picked]
    starts = [p for p in range(len(ids)) if p == 0 or offsets[p][0] >= offsets[p - 1][1]]
    ends = {e for e in range(1, len(ids) + 1) if e == len(ids) or offsets[e - 1][1] <= offsets[e][0]}
    alias: dict[int, set[int]] = {}
    for t in {ids[p] for p in starts}:
        text = tokenizer.decode([t])
        if text.startswith(" ") and len(text) > 1:
            bare = tokenizer(text[1:], add_special_tokens=False)["input_ids"]
            if len(bare) == 1 and bare[0] != t:
                alias.setdefault(bare[0], set()).add(t)
    return SpanConstraint(ids, starts, ends, abstain, sorted(stops), alias)


@dataclass
class Steering:
    """Per decoding call: the abstention token (for `na_prob`; None: no scores), one constraint per prompt (None
    entries or no list: unconstrained), and where the scores go (`na[i]` for prompt i)."""

    abstain: int | None = None
    constraints: list[SpanConstraint | None] | None = None
    na: list[float | None] | None = None
    # Score sigmoid(logit[abstain] - logit[versus]) instead (a fixed pair, e.g. " incorrect" vs " correct").
    versus: int | None = None

    @property
    def constrained(self) -> bool:
        return self.constraints is not None

    def allowed(self, i: int, generated: list[int]) -> list[int] | None:
        c = self.constraints[i] if self.constraints is not None else None
        return c.allowed(generated) if c is not None else None

    def pick(self, i: int, generated: list[int], logits: Any) -> int:
        """The greedy choice among the allowed tokens (all when unconstrained)."""
        allowed = self.allowed(i, generated)
        if allowed is None:
            return int(logits.argmax().item())
        import torch

        return allowed[int(logits[torch.tensor(allowed, device=logits.device)].argmax().item())]

    def first(self, i: int, logits: Any) -> int:
        """The first answer token of prompt i, recording its no-answer score on the way."""
        token = self.pick(i, [], logits)
        if self.abstain is not None and self.na is not None:
            self.na[i] = self.score(i, logits, token)
        return token

    def score(self, i: int, logits: Any, token: int) -> float:
        if self.versus is not None:
            return _sigmoid(logits[self.abstain].item() - logits[self.versus].item())
        return na_probability(logits, token, self.abstain, self.allowed(i, []))


def logits_processor(steering: Steering, rows: list[int], width: int, stops: list[int]) -> Any:
    """A transformers LogitsProcessor doing `steering` on the plain path: batch row r is prompt `rows[r]`, prompts
    left-padded to `width` tokens. It masks disallowed tokens to -inf and records the first step's scores."""
    import torch
    from transformers import LogitsProcessor

    stop_set = set(stops)

    class Steer(LogitsProcessor):
        def __call__(self, input_ids: Any, scores: Any) -> Any:
            step = input_ids.shape[1] - width
            if steering.constrained:
                scores = scores.clone()
                for r, i in enumerate(rows):
                    generated = input_ids[r, width:].tolist()
                    if stop_set.intersection(generated):
                        continue  # finished: generate pads it whatever we do
                    allowed = steering.allowed(i, generated)
                    if allowed is not None:
                        index = torch.tensor(allowed, device=scores.device)
                        keep = scores[r, index]
                        scores[r] = float("-inf")
                        scores[r, index] = keep
            if step == 0 and steering.abstain is not None and steering.na is not None:
                for r, i in enumerate(rows):
                    token = int(scores[r].argmax().item())
                    steering.na[i] = steering.score(i, scores[r], token)
            return scores

    return Steer()
