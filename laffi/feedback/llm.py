"""The LLM annotator: a model, taught by a few human-written feedback records, writes feedback on each answer.

Prompt: a system message saying what to write and in which form, `shots` solved examples (human feedback records,
a seeded sample with both verdicts represented, the same for every question so prompts share their prefix), then the
item: passage, question, gold answers and the model's answer. The reply must be

    Verdict: correct|incorrect
    Feedback: <text>

Backends: a local transformers model (batched greedy decoding of `laffi.engines.generation`) or any OpenAI-compatible
endpoint through the `openai` client (bounded concurrency; the client retries connection errors, timeouts,
408/409/429 and 5xx with exponential backoff, honouring Retry-After; laffi retries a malformed, empty or unparsable
completion the same way). Every good completion is appended to a cache keyed by (backend, model, prompt) beside the
output file, so an interrupted run resumes and a repeated prompt is never paid for twice. Token counts and seconds
are kept per record. A reply that cannot be parsed is never guessed: it goes to `OUT.failures.jsonl` with its raw
text (a request that failed, with the HTTP status and body). Endpoint failures are not cached, so a re-run asks again
for exactly the failures; a local model's unparsable greedy reply is cached, as asking again gives the same text.

A record whose verdict is incorrect always states the right answer, as the annotation app's right-answer field
makes people do: unless the model's feedback already states one (`prompts.parse_feedback`), the sentence composed from
the first gold answer (`prompts.right_answer_sentence`; the annotator sees the gold answers) is appended. A stated
answer that is not a gold one is kept as written, for the contradiction filter (`report.contradiction`). Each record
says which in `meta["right_answer"]`: `appended`, `agrees` (stated, a gold answer after SQuAD normalisation, or an
abstention on an unanswerable question), `contradicts` (stated, neither) or `none` (a correct verdict stating none).
The raw reply is kept in `meta["raw"]` and in the prompt cache, so the cache holds model output only.

The prompt lives here rather than in `laffi.prompts` because only this annotator uses it; `TEMPLATE_VERSION` versions
the prompt and how replies become records (the learned annotator has its own).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from laffi import prompts
from laffi.config import AnnotateConfig
from laffi.errors import LaffiError
from laffi.feedback.report import stated_answer_agrees
from laffi.files import JsonlAppender, read_json, write_json, write_jsonl
from laffi.records import FeedbackRecord, Question, read_jsonl

TEMPLATE_VERSION = "llm-annotator-v2"
LEARNED_TEMPLATE_VERSION = "llm-learned-v2"  # the learned annotator's records (laffi/feedback/learned.py)

SYSTEM = (
    "You are an annotator. You see a passage, a question, the gold answers and a model's proposed answer. Judge "
    "whether the proposed answer is correct (it matches a gold answer; when there are no gold answers the passage "
    f"does not answer the question and the only correct answer is {prompts.ABSTAIN_PHRASE}). Then write one or two "
    "sentences of feedback: why, and what the right answer is. Reply in exactly this form:\n"
    "Verdict: correct or incorrect\nFeedback: your feedback"
)

_VERDICT_LINE = re.compile(r"^[\s*#]*verdict[\s*]*[:\-][\s*]*(correct|incorrect)\b[\s.*:,;\-]*(.*)$", re.I | re.S)
_FEEDBACK_LABEL = re.compile(r"^[\s*]*feedback[\s*]*[:\-][\s*]*", re.I)


@dataclass
class Completion:
    """One model reply with what it cost."""

    key: str
    raw: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    seconds: float = 0.0
    backend: str = ""


@dataclass
class Failure:
    """A reply that could not be parsed (or a request that failed after its retries): kept, never guessed."""

    id: str
    reason: str
    raw: str
    annotator: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    meta: dict[str, Any] = field(default_factory=dict)


def default_examples_path() -> Path:
    return Path(__file__).resolve().parents[1] / "resources" / "handwritten_feedback.jsonl"


def failures_path(out: Path) -> Path:
    return out.with_suffix(".failures.jsonl")


def cache_path(out: Path) -> Path:
    return out.with_name(f".{out.name}.llm-cache.jsonl")


# ---------------------------------------------------------------------------------------------------- prompt


def select_examples(examples: list[FeedbackRecord], k: int, seed: int) -> list[FeedbackRecord]:
    """A seeded sample of k examples, alternating verdicts so both are shown whenever both exist and k >= 2."""
    pools: dict[str, list[FeedbackRecord]] = {"incorrect": [], "correct": []}
    for r in sorted(examples, key=lambda r: r.id):
        pools.setdefault(r.verdict, []).append(r)
    rng = random.Random(seed)
    for pool in pools.values():
        rng.shuffle(pool)
    picked: list[FeedbackRecord] = []
    order = ["incorrect", "correct"]
    while len(picked) < k and any(pools[v] for v in order):
        for v in order:
            if pools[v] and len(picked) < k:
                picked.append(pools[v].pop())
    return picked


def item_text(context: str, question: str, gold: list[str], predicted: str) -> str:
    gold_text = "; ".join(f'"{g}"' for g in dict.fromkeys(gold)) if gold else (
        f"none (the passage does not answer the question: the right answer is {prompts.ABSTAIN_PHRASE})")
    return (f"{prompts.qa_user_text(context, question)}\n\nGold answers: {gold_text}\n\n"
            f"Proposed answer: {prompts.answer_as_text(predicted)}")  # fmt: skip


def reply_text(verdict: str, feedback: str) -> str:
    return f"Verdict: {verdict}\nFeedback: {feedback}"


def messages(q: Question, predicted: str, shots: list[FeedbackRecord]) -> list[dict[str, str]]:
    out = [{"role": "system", "content": SYSTEM}]
    for r in shots:
        out.append({"role": "user", "content": item_text(r.context, r.question, r.gold_answers, r.predicted_answer)})
        out.append({"role": "assistant", "content": reply_text(r.verdict, r.feedback)})
    out.append({"role": "user", "content": item_text(q.context, q.question, q.answers, predicted)})
    return out


def parse_reply(raw: str) -> tuple[str, str] | str:
    """(verdict, feedback) from a reply, or a string saying why it cannot be parsed.

    Accepts the asked-for form and its close variants ("Verdict: incorrect. <text>" on one line, a missing
    "Feedback:" label, markdown bold); the verdict must be stated and the feedback must not be empty."""
    text = raw.strip()
    m = _VERDICT_LINE.match(text)
    if not m:
        return "no 'Verdict: correct|incorrect' at the start of the reply"
    verdict, rest = m.group(1).lower(), m.group(2).strip()
    feedback = _FEEDBACK_LABEL.sub("", rest).strip()
    if not feedback:
        return "empty feedback"
    return verdict, feedback


# Where a feedback text begins a right-answer statement: a text that begins one it never finishes is cut there.
_STATEMENT = re.compile(r"the right answer is", re.I)
_TRAILING = " \t\r\n:;,-"


def with_right_answer(verdict: str, feedback: str, gold: list[str]) -> tuple[str, str]:
    """(feedback, what it states): the feedback of an incorrect verdict that states no right answer gets the sentence
    composed from the first gold answer appended (`prompts.right_answer_sentence`; unanswerable: the abstention
    sentence); any other feedback is returned as is. What: `appended`, `agrees` (it states a gold answer after SQuAD
    normalisation, or abstains on an unanswerable question), `contradicts` (it states another answer: left for the
    contradiction filter) or `none` (a correct verdict that states no answer).

    The appended sentence is what `prompts.parse_feedback` reads from the result: where the text begins a
    right-answer statement that does not parse (no closing quote, an answer not in quotes), the text is cut before it,
    since such a statement would run into the appended one."""
    stated = prompts.parse_feedback(feedback)[1]
    if stated is not None:
        return feedback, "agrees" if stated_answer_agrees(stated, gold) else "contradicts"
    if verdict != "incorrect":
        return feedback, "none"
    sentence = prompts.right_answer_sentence(gold[0] if gold else "")
    answer = prompts.parse_feedback(sentence)[1]
    text = _joined(feedback, sentence)
    if prompts.parse_feedback(text)[1] != answer and (begun := _STATEMENT.search(feedback)):
        text = _joined(feedback[: begun.start()], sentence)
    return text, "appended"


def _joined(text: str, sentence: str) -> str:
    text = text.rstrip(_TRAILING)
    if not text:
        return sentence
    return f"{text} {sentence}" if text.endswith((".", "!", "?", '."', ".'", '!"', '?"')) else f"{text}. {sentence}"


def prompt_key(backend: str, model: str, max_new_tokens: int, msgs: list[dict[str, str]]) -> str:
    payload = json.dumps([backend, model, max_new_tokens, msgs], sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(payload.encode()).hexdigest()


# ---------------------------------------------------------------------------------------------------- backends

OnDone = Callable[[Completion], None]


def complete_local(jobs: list[tuple[str, list[dict[str, str]]]], cfg: AnnotateConfig, on_done: OnDone,
                   adapter: str | None = None, prefixes: dict[str, str] | None = None,
                   loaded: tuple[Any, Any] | None = None) -> None:  # fmt: skip
    """Greedy replies of a local transformers model (with a PEFT `adapter` merged in, if given), in batches;
    `on_done` is called as each batch finishes. `prefixes` ({key: text}): the reply already begun with this text (a
    chosen verdict), which the model continues; the raw reply is the prefix + the continuation. `loaded`: the
    (tokenizer, model) to use instead of loading them."""
    from laffi.engines.generation import DecodeSettings, generate

    tokenizer, lm = loaded or load_local(cfg, adapter)
    prefixes = prefixes or {}
    heads = [prefixes.get(key, "") for key, _ in jobs]
    texts = [prompts.render(msgs, tokenizer) + head for (_, msgs), head in zip(jobs, heads, strict=True)]
    started = [time.perf_counter()]

    def finished(indices: list[int], outputs: list[str]) -> None:
        # generate() gives one duration per batch; each record gets an equal share of it.
        seconds = (time.perf_counter() - started[0]) / len(indices)
        for i, out in zip(indices, outputs, strict=True):
            raw = f"{heads[i]} {out}" if heads[i] else out
            on_done(Completion(
                key=jobs[i][0], raw=raw, seconds=seconds, backend="local",
                prompt_tokens=len(tokenizer(texts[i], add_special_tokens=False)["input_ids"]),
                completion_tokens=len(tokenizer(out, add_special_tokens=False)["input_ids"]),
            ))  # fmt: skip
        started[0] = time.perf_counter()

    generate(lm, tokenizer, texts, DecodeSettings(cfg.max_new_tokens, cfg.batch_size), on_batch=finished)


def load_local(cfg: AnnotateConfig, adapter: str | None) -> tuple[Any, Any]:
    """(tokenizer, model) of the local annotator, with `adapter` merged in if given."""
    from laffi.models import load_model, load_tokenizer, resolve_device

    device = resolve_device(cfg.device, "annotate.device")
    return load_tokenizer(cfg.model), load_model(cfg.model, dtype=cfg.dtype, adapter=adapter, device=device)


# ---------------------------------------------------------------------------------------------------- scored verdicts


def verdict_head(verdict: str) -> str:
    """The start of a reply whose verdict was chosen by score: the model writes the feedback after it."""
    return f"Verdict: {verdict}\nFeedback:"


def incorrect_probabilities(msgs_list: list[list[dict[str, str]]], cfg: AnnotateConfig,
                            loaded: tuple[Any, Any]) -> list[float]:  # fmt: skip
    """P(" incorrect") against P(" correct") right after "Verdict:" at the start of the reply, per prompt."""
    from laffi.engines.generation import DecodeSettings, pair_probabilities

    tokenizer, lm = loaded
    texts = [prompts.render(msgs, tokenizer) + "Verdict:" for msgs in msgs_list]
    return pair_probabilities(lm, tokenizer, texts, (" incorrect", " correct"), DecodeSettings(1, cfg.batch_size))


def choose_threshold(probs: list[float], threshold: float, incorrect_share: float | None) -> float:
    """The cut above which an item is judged incorrect: `threshold` when it is a probability; with -1, the midpoint
    between the k-th and (k+1)-th highest probability, k = round(incorrect_share x items), so that k items are
    judged incorrect (fewer where probabilities tie across the cut)."""
    if threshold >= 0:
        return threshold
    if incorrect_share is None:
        raise LaffiError("annotate.verdict_threshold: -1 needs human records to take the share of incorrect "
                         "verdicts from (annotate.examples)")
    ranked = sorted(probs, reverse=True)
    k = round(incorrect_share * len(ranked))
    if k <= 0:
        return 1.0
    if k >= len(ranked):
        return 0.0
    return (ranked[k - 1] + ranked[k]) / 2


def incorrect_share(records: list[FeedbackRecord]) -> float | None:
    """The share of `records` whose verdict is incorrect (None without records)."""
    return sum(r.verdict == "incorrect" for r in records) / len(records) if records else None


# The openai client's own backoff (openai/_constants.py): laffi's retries of bad completions wait the same way.
RETRY_DELAY_S, MAX_RETRY_DELAY_S = 0.5, 8.0


class EndpointFailure(Exception):
    """A request that still failed after its retries, with the raw response (HTTP status and body, or reply text)."""

    def __init__(self, reason: str, raw: str):
        super().__init__(reason)
        self.reason, self.raw = reason, raw


def retry_delay(retry: int) -> float:
    """Seconds before retry number `retry` (1, 2, ...): exponential, capped, with up to 25% jitter off."""
    return min(RETRY_DELAY_S * 2 ** (retry - 1), MAX_RETRY_DELAY_S) * (1 - 0.25 * random.random())


def ask_endpoint(client: Any, cfg: AnnotateConfig, key: str, msgs: list[dict[str, str]]) -> Completion:
    """One prompt, answered. HTTP errors and timeouts are retried by the openai client (exponential backoff,
    Retry-After honoured); a 200 whose body is not a chat completion, or whose reply is empty or not in the asked-for
    form, is retried here with the same backoff. Raises EndpointFailure when the retries are spent."""
    import openai

    start = time.perf_counter()
    for retry in range(cfg.max_retries + 1):
        if retry:
            time.sleep(retry_delay(retry))
        try:
            resp = client.chat.completions.with_raw_response.create(
                model=cfg.api_model, messages=msgs, max_tokens=cfg.max_new_tokens, temperature=0.0)
        except openai.APIStatusError as e:  # the client's own retries are spent
            raise EndpointFailure(f"request failed after {cfg.max_retries} retries: {type(e).__name__}: {e}",
                                  f"HTTP {e.status_code}: {e.response.text}") from None  # fmt: skip
        except openai.OpenAIError as e:  # timeouts and connection errors: no response to keep
            raise EndpointFailure(f"request failed after {cfg.max_retries} retries: {type(e).__name__}: {e}",
                                  "") from None  # fmt: skip
        body = resp.http_response.text
        try:
            parsed = resp.parse()
            text, usage = (parsed.choices[0].message.content or "").strip(), parsed.usage
        except Exception as e:  # any body that is not a chat completion (not JSON, no choices, ...)
            reason, raw = f"malformed response ({type(e).__name__}: {e})", body
            continue
        if not text:
            reason, raw = "empty completion", body
            continue
        if isinstance(problem := parse_reply(text), str):
            reason, raw = problem, text
            continue
        return Completion(key=key, raw=text, backend="endpoint", seconds=time.perf_counter() - start,
                          prompt_tokens=getattr(usage, "prompt_tokens", 0) or 0,
                          completion_tokens=getattr(usage, "completion_tokens", 0) or 0)  # fmt: skip
    raise EndpointFailure(f"{reason} (after {cfg.max_retries} retries)", raw)


def complete_endpoint(jobs: list[tuple[str, list[dict[str, str]]]], cfg: AnnotateConfig, on_done: OnDone,
                      on_error: Callable[[str, str, str], None]) -> None:  # fmt: skip
    """Replies of an OpenAI-compatible endpoint, at most `cfg.concurrency` requests in flight. A prompt that still
    fails after its retries goes to `on_error(key, reason, raw response)`; only good replies reach `on_done`."""
    from concurrent.futures import ThreadPoolExecutor, as_completed

    import openai

    if not cfg.api_model:
        raise LaffiError("annotate.api_model: the model name to send to the endpoint is required with an endpoint")
    client = openai.OpenAI(base_url=cfg.endpoint, api_key=os.environ.get("OPENAI_API_KEY") or "not-needed",
                           max_retries=cfg.max_retries, timeout=cfg.timeout)  # fmt: skip

    with ThreadPoolExecutor(max_workers=cfg.concurrency) as pool:
        futures = {pool.submit(ask_endpoint, client, cfg, key, msgs): key for key, msgs in jobs}
        for fut in as_completed(futures):  # results are handled here, in one thread: no lock needed for the cache
            try:
                on_done(fut.result())
            except EndpointFailure as e:
                on_error(futures[fut], e.reason, e.raw)


# ---------------------------------------------------------------------------------------------------- annotate


def annotator_id(cfg: AnnotateConfig) -> str:
    return f"llm:{cfg.api_model}" if cfg.endpoint else f"llm:{cfg.model}"


def output_version(cfg: AnnotateConfig) -> str | None:
    """The version of the records the configured LLM annotator writes (few-shot or learned), None for any other
    annotator: for cache keys of its output, so records written by another version are made again (their replies
    come from the prompt cache: only how replies become records is redone)."""
    if cfg.annotator != "llm":
        return None
    return LEARNED_TEMPLATE_VERSION if cfg.learn_from_examples else TEMPLATE_VERSION


def annotate_llm(questions: list[Question], predictions: dict[str, str], examples: list[FeedbackRecord], out: Path,
                 cfg: AnnotateConfig, progress: bool = True) -> list[FeedbackRecord]:  # fmt: skip
    """Feedback on every question that has a prediction. Writes `out` (parsed records) and `OUT.failures.jsonl`;
    resumes from the prompt cache beside `out`. Returns the parsed records."""
    shots = select_examples(examples, cfg.shots, cfg.seed)
    items = [(q, predictions[q.id]) for q in questions if q.id in predictions]
    meta = {"examples": [r.id for r in shots], "shots": len(shots)}
    return run_prompts(items, [messages(q, pred, shots) for q, pred in items], out, cfg, annotator_id(cfg),
                       TEMPLATE_VERSION, meta, progress=progress, share=incorrect_share(examples))  # fmt: skip


def run_prompts(items: list[tuple[Question, str]], prompts_: list[list[dict[str, str]]], out: Path,
                cfg: AnnotateConfig, who: str, template_version: str, meta: dict[str, Any], adapter: str | None = None,
                adapter_key: str = "", progress: bool = True,
                share: float | None = None) -> list[FeedbackRecord]:  # fmt: skip
    """Ask the annotator model one prompt per (question, answer) item, cached and resumable; write the parsed records
    (annotator `who`, `meta` added to each) and the failures. `adapter`: a PEFT adapter on the local model, and
    `adapter_key` a hash of its weights (part of the cache key: another adapter is another annotator).

    `cfg.verdict == "score"`: every prompt is first scored (P(incorrect) after "Verdict:"; scores kept in
    `.OUT.verdict-scores.json`), the verdicts are cut at `choose_threshold` (`share`: the human records' share of
    incorrect verdicts), and the model then writes each reply after its chosen verdict (`verdict_head`)."""
    from tqdm.auto import tqdm

    out = Path(out)
    backend = "endpoint" if cfg.endpoint else "local"
    model = f"{cfg.endpoint}|{cfg.api_model}" if cfg.endpoint else cfg.model
    if adapter is not None:
        model = f"{model}|adapter:{adapter_key}"
    if not items:
        raise LaffiError(f"{out}: no question has a prediction to annotate")
    heads: dict[str, str] = {}
    loaded: tuple[Any, Any] | None = None
    if cfg.verdict == "score":
        loaded = load_local(cfg, adapter)
        probs, threshold = scored_verdicts(prompts_, out, cfg, backend, model, loaded, share)
        meta = {**meta, "verdict": "score", "verdict_threshold": round(threshold, 6)}
        keyed = []
        for msgs, p in zip(prompts_, probs, strict=True):
            head = verdict_head("incorrect" if p > threshold else "correct")
            key = prompt_key(backend, model, cfg.max_new_tokens, [*msgs, {"role": "assistant", "content": head}])
            heads[key] = head
            keyed.append((key, msgs))
        item_meta = {key: {"incorrect_prob": round(p, 6)} for (key, _), p in zip(keyed, probs, strict=True)}
    else:
        keyed = [(prompt_key(backend, model, cfg.max_new_tokens, msgs), msgs) for msgs in prompts_]
        item_meta = {}
    cache = cache_path(out)
    done: dict[str, Completion] = {}
    if cache.exists():
        done = {c.key: c for c in read_jsonl(cache, Completion, tolerate_torn_tail=True)}
    cached_keys = set(done)
    todo = list({key: msgs for key, msgs in keyed if key not in done}.items())
    errors: dict[str, tuple[str, str]] = {}
    unique = len({key for key, _ in keyed})  # identical prompts are asked once
    with JsonlAppender(cache) as appender, tqdm(total=unique, initial=unique - len(todo), desc=f"annotate {out.name}",
                                                 unit="q", disable=not progress) as bar:
        def on_done(c: Completion) -> None:
            done[c.key] = c
            appender.append(c)
            bar.update(1)

        def on_error(key: str, reason: str, raw: str) -> None:
            errors[key] = (reason, raw)  # not cached: a re-run tries again
            bar.update(1)

        if todo and cfg.endpoint:
            complete_endpoint(todo, cfg, on_done, on_error)
        elif todo:
            complete_local(todo, cfg, on_done, adapter, heads, loaded)
    return _write_outputs(items, keyed, done, cached_keys, errors, out, who, template_version, meta, item_meta)


def scored_verdicts(prompts_: list[list[dict[str, str]]], out: Path, cfg: AnnotateConfig, backend: str, model: str,
                    loaded: tuple[Any, Any], share: float | None) -> tuple[list[float], float]:  # fmt: skip
    """P(incorrect) per prompt (cached beside `out`: a re-run scores only new prompts) and the threshold."""
    path = out.with_name(f".{out.name}.verdict-scores.json")
    keys = [prompt_key(f"{backend}-score", model, 0, msgs) for msgs in prompts_]
    known: dict[str, float] = read_json(path) if path.exists() else {}
    todo = sorted({k: i for i, k in enumerate(keys) if k not in known}.values())
    if todo:
        for i, p in zip(todo, incorrect_probabilities([prompts_[i] for i in todo], cfg, loaded), strict=True):
            known[keys[i]] = p
        write_json(path, known)
    probs = [known[k] for k in keys]
    return probs, choose_threshold(probs, cfg.verdict_threshold, share)


def _write_outputs(items: list[tuple[Question, str]], keyed: list[tuple[str, Any]], done: dict[str, Completion],
                   cached_keys: set[str], errors: dict[str, tuple[str, str]], out: Path, who: str,
                   template_version: str, meta: dict[str, Any],
                   item_meta: dict[str, dict[str, Any]] | None = None) -> list[FeedbackRecord]:  # fmt: skip
    records, failures = [], []
    item_meta = item_meta or {}
    for (q, pred), (key, _) in zip(items, keyed, strict=True):
        if key in errors:
            failures.append(Failure(id=q.id, reason=errors[key][0], raw=errors[key][1], annotator=who))
            continue
        c = done[key]
        cost = {"prompt_tokens": c.prompt_tokens, "completion_tokens": c.completion_tokens,
                "seconds": round(c.seconds, 4), "cached": key in cached_keys, "backend": c.backend}  # fmt: skip
        parsed = parse_reply(c.raw)
        if isinstance(parsed, str):
            failures.append(Failure(id=q.id, reason=parsed, raw=c.raw, annotator=who,
                                    prompt_tokens=c.prompt_tokens, completion_tokens=c.completion_tokens, meta=cost))
            continue
        verdict, text = parsed
        feedback, stated = with_right_answer(verdict, text, list(q.answers))
        records.append(FeedbackRecord(
            id=q.id, question=q.question, context=q.context, predicted_answer=pred, gold_answers=list(q.answers),
            verdict=verdict, feedback=feedback, annotator=who, template_version=template_version, title=q.title,
            is_impossible=not q.answers,
            meta={**cost, "raw": c.raw, "right_answer": stated, **meta, **item_meta.get(key, {})},
        ))  # fmt: skip
    write_jsonl(failures_path(out), failures)
    write_jsonl(out, records)
    return records


def read_failures(path: Path) -> list[Failure]:
    return read_jsonl(path, Failure)


def summary(records: list[FeedbackRecord], failures: list[Failure]) -> dict[str, Any]:
    """Counts and cost of one LLM annotation run."""
    tokens = [r.meta.get("prompt_tokens", 0) + r.meta.get("completion_tokens", 0) for r in records]
    tokens += [f.prompt_tokens + f.completion_tokens for f in failures]
    return {"records": len(records), "failures": len(failures), "tokens": sum(tokens),
            "seconds": round(sum(r.meta.get("seconds", 0.0) for r in records) +
                             sum(f.meta.get("seconds", 0.0) for f in failures), 2)}  # fmt: skip


