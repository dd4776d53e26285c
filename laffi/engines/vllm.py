"""Answering with vLLM (`answer.engine: vllm`): the same prompts, token for token, the same parsing and the same
no-answer scores as the transformers engine (engines/generation.py), with vLLM's batching, prefix caching (the shots
and passages that prompts share are computed once) and LoRA support (an adapter is served as a LoRARequest, not
merged).

One engine per process: `engine()` keeps the `LLM` it built and serves every later answer set with it while the model
and dtype stay the same (an engine with LoRA enabled also serves the base model and any adapter up to its LoRA rank).
vLLM reserves most of the GPU's memory for its cache, so `release()` shuts the engine down and frees that memory; it
is called before anything else in the process loads a model (`laffi.models.load_model`: training, in-process
annotation, attention, the transformers engine) and before a training launcher starts its processes.

No-answer score (`Generation.na_prob`, steering.py): sigmoid(logit[abstain] - logit[own]) at the first answer
position, where "own" is the first token the model generated, or the best other token when that is the abstention
token. A difference of logits is the difference of log-probabilities, so it is read from vLLM's logprobs of the first
generated step: the answering request asks for the abstention token's logprob beside the sampled token's
(`SamplingParams.logprob_token_ids`); for the prompts whose first token is the abstention token, a second one-token
request asks for the top two (prefix-cached: it costs one token's decoding). `answer.na_score: verdict` is one
one-token request per question on the feedback prompt, with the logprobs of " incorrect" and " correct".

Greedy decoding on both engines; answers may still differ where two tokens' logits are within float rounding of each
other (different kernels). vLLM is not a dependency of laffi: install it on the GPU machine with `pip install
'laffi[gpu]'` (vLLM releases in `SUPPORTED`; see docs/scaling.md). Revision rounds, span-constrained answers and
resuming a half-done answer file are transformers-only: vLLM answers a whole set in one call.
"""

from __future__ import annotations

import importlib.util
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from laffi import prompts
from laffi.errors import LaffiError
from laffi.records import Generation, Question

# The vLLM releases laffi runs with: the `gpu` extra in pyproject.toml says the same. Every keyword passed below is a
# field of their `EngineArgs`, `SamplingParams` and `LoRARequest` (tests/engines/vllm_api.py lists them).
SUPPORTED = (">=0.20", "<0.34")

# LoRA ranks vLLM accepts for `max_lora_rank`; the adapter's rank is rounded up to one of them.
LORA_RANKS = (8, 16, 32, 64, 128, 256, 320, 512)


def require_vllm() -> None:
    """Refuse, in one line, a missing vLLM or one outside `SUPPORTED`."""
    if importlib.util.find_spec("vllm") is None:
        raise LaffiError("answer.engine: 'vllm' is not installed (pip install 'laffi[gpu]', on a machine with a GPU)")
    from packaging.version import InvalidVersion, Version

    found = installed_version()
    low, high = (s.lstrip("<>=") for s in SUPPORTED)
    try:
        inside = Version(low) <= Version(found) < Version(high)
    except InvalidVersion:
        inside = False
    if not inside:
        spec = ",".join(SUPPORTED)
        raise LaffiError(f"answer.engine: vllm {found} is installed; laffi runs with vllm{spec} (pip install "
                         f"'vllm{spec}')")  # fmt: skip


def installed_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("vllm")
    except PackageNotFoundError:  # importable without distribution metadata (a source tree on sys.path)
        import vllm

        return str(getattr(vllm, "__version__", "unknown"))


def lora_rank(adapter: str) -> int:
    """The smallest rank vLLM accepts that holds the adapter's."""
    config = Path(adapter) / "adapter_config.json"
    if not config.exists():
        raise LaffiError(f"{adapter}: not a PEFT adapter directory (no adapter_config.json)")
    r = int(json.loads(config.read_text(encoding="utf-8"))["r"])
    for rank in LORA_RANKS:
        if rank >= r:
            return rank
    raise LaffiError(f"{config}: LoRA rank {r} is above vLLM's largest ({LORA_RANKS[-1]})")


def engine_args(model_path: str, dtype: str, adapter: str | None) -> dict[str, Any]:
    """The `LLM(...)` keywords (fields of vLLM's `EngineArgs`) for `model_path`, with LoRA when an adapter is served."""
    args: dict[str, Any] = {"model": model_path, "tokenizer": model_path, "dtype": dtype, "enable_prefix_caching": True,
                            "seed": 0}  # fmt: skip
    if adapter:
        args.update(enable_lora=True, max_lora_rank=lora_rank(adapter), max_loras=1)
    return args


def _serves(built: dict[str, Any], wanted: dict[str, Any]) -> bool:
    """Whether an engine built with `built` can answer what `wanted` describes: the same model and dtype, and LoRA
    enabled at a rank at least the adapter's when an adapter is wanted."""
    same = ("model", "tokenizer", "dtype", "enable_prefix_caching", "seed")
    if any(built.get(k) != wanted.get(k) for k in same):
        return False
    if not wanted.get("enable_lora"):
        return True
    return bool(built.get("enable_lora")) and built.get("max_lora_rank", 0) >= wanted["max_lora_rank"]


@dataclass
class _Engine:
    llm: Any
    args: dict[str, Any]
    adapters: dict[tuple[str, int, int], int] = field(default_factory=dict)  # (path, mtime, size) -> lora_int_id


_ENGINE: _Engine | None = None


def engine(model_path: str, dtype: str, adapter: str | None) -> Any:
    """The process's vLLM engine for `model_path` (built on first use, reused while it serves the request; another
    model or dtype, or an adapter above its LoRA rank, releases it and builds a new one)."""
    global _ENGINE
    require_vllm()
    wanted = engine_args(model_path, dtype, adapter)
    if _ENGINE is not None and _serves(_ENGINE.args, wanted):
        return _ENGINE.llm
    release()
    from vllm import LLM

    from laffi import models

    _ENGINE = _Engine(LLM(**wanted), wanted)
    if release not in models.BEFORE_LOAD:
        models.BEFORE_LOAD.append(release)
    return _ENGINE.llm


def load(model_path: str, dtype: str, adapter: str | None) -> Any:
    """`engine()` (kept for callers that load and answer in two steps)."""
    return engine(model_path, dtype, adapter)


def release() -> None:
    """Shut the process's engine down and free its GPU memory (nothing when no engine was built). vLLM runs its
    engine core in a child process that holds the weights and cache: shutting it down frees them; then vLLM's
    parallel state is torn down and the CUDA cache emptied."""
    global _ENGINE
    if _ENGINE is None:
        return
    llm, _ENGINE = _ENGINE.llm, None
    core = getattr(getattr(llm, "llm_engine", None), "engine_core", None)
    if core is not None and hasattr(core, "shutdown"):
        core.shutdown()
    del llm
    import gc

    gc.collect()
    try:
        from vllm.distributed.parallel_state import destroy_distributed_environment, destroy_model_parallel
    except ImportError:
        pass
    else:
        destroy_model_parallel()
        destroy_distributed_environment()
    gc.collect()
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def lora_request(adapter: str | None) -> Any:
    """The adapter as a LoRARequest for the current engine. vLLM keeps loaded adapters by their integer id, so each
    adapter directory (as its weights are now: a retrained adapter at the same path is another) gets its own id."""
    if not adapter:
        return None
    from vllm.lora.request import LoRARequest

    assert _ENGINE is not None, "lora_request: no engine (call engine() first)"
    path = Path(adapter).resolve()
    weights = [p for p in sorted(path.iterdir()) if p.name.startswith("adapter_model")]
    stat = (weights[0] if weights else path / "adapter_config.json").stat()
    key = (str(path), stat.st_mtime_ns, stat.st_size)
    lora_id = _ENGINE.adapters.setdefault(key, len(_ENGINE.adapters) + 1)
    return LoRARequest(lora_name=f"laffi-adapter-{lora_id}", lora_int_id=lora_id, lora_path=str(path))


def _sigmoid(d: float) -> float:
    from laffi.engines.steering import _sigmoid as sigmoid

    return sigmoid(d)


def _logprob(entry: Any) -> float:
    """A logprob value from vLLM's output (a `Logprob`, or a float)."""
    return float(getattr(entry, "logprob", entry))


def generate(llm: Any, token_ids: list[list[int]], max_new_tokens: int, stops: list[int], adapter: str | None,
             abstain: int | None = None) -> tuple[list[str], list[float | None]]:  # fmt: skip
    """Greedy continuations of prompts given as token ids (so vLLM adds no BOS and tokenizes nothing itself), and with
    `abstain` (the abstention phrase's first token) each prompt's no-answer score (None without)."""
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    request = lora_request(adapter)
    scored = {"logprobs": 1, "logprob_token_ids": [abstain]} if abstain is not None else {}
    params = SamplingParams(temperature=0.0, max_tokens=max_new_tokens, stop_token_ids=stops,
                            skip_special_tokens=True, **scored)  # fmt: skip
    outputs = llm.generate([TokensPrompt(prompt_token_ids=ids) for ids in token_ids], params, use_tqdm=False,
                           lora_request=request)  # fmt: skip
    texts = [o.outputs[0].text.strip() for o in outputs]
    na: list[float | None] = [None] * len(token_ids)
    if abstain is None:
        return texts, na
    again = []  # prompts whose first token is the abstention token: the best other token is needed
    for i, o in enumerate(outputs):
        out = o.outputs[0]
        if not out.token_ids or not out.logprobs:
            continue
        own = out.token_ids[0]
        if own == abstain:
            again.append(i)
        else:
            first = out.logprobs[0]
            na[i] = _sigmoid(_logprob(first[abstain]) - _logprob(first[own]))
    if again:
        top = SamplingParams(temperature=0.0, max_tokens=1, logprobs=2)
        for i, o in zip(again, llm.generate([TokensPrompt(prompt_token_ids=token_ids[i]) for i in again], top,
                                            use_tqdm=False, lora_request=request), strict=True):  # fmt: skip
            first = o.outputs[0].logprobs[0]
            others = [t for t in first if t != abstain]
            if not others:  # a vocabulary of one token
                na[i] = 1.0
                continue
            other = max(others, key=lambda t: _logprob(first[t]))
            na[i] = _sigmoid(_logprob(first[abstain]) - _logprob(first[other]))
    return texts, na


def answer_questions(
    llm: Any,
    tokenizer: Any,
    questions: list[Question],
    shots: int,
    max_new_tokens: int,
    stops: list[int],
    adapter: str | None = None,
    require_in_context: bool = False,
    answer_prefix: str = "",
) -> list[Generation]:
    """`laffi.engines.generation.answer_questions` on vLLM: the same prompt text and tokens, the same parsing, and
    each answer's no-answer score (`na_prob`)."""
    from laffi.engines import steering

    texts = [prompts.render(prompts.qa_messages(q, shots), tokenizer) + answer_prefix for q in questions]
    if not texts:
        return []
    token_ids = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    abstain = steering.abstain_token_ids(tokenizer, texts[0])  # every prompt ends with the same assistant start
    raws, na = generate(llm, token_ids, max_new_tokens, stops, adapter, abstain[0] if abstain else None)
    return [Generation(id=q.id, raw=raw, answer=prompts.parse_answer(raw, q.context, require_in_context),
                       na_prob=p) for q, raw, p in zip(questions, raws, na, strict=True)]  # fmt: skip


def verdict_scores(llm: Any, tokenizer: Any, questions: list[Question], answers: dict[str, str],
                   adapter: str) -> dict[str, float]:  # fmt: skip
    """`laffi.engines.generation.verdict_scores` on vLLM: on the feedback prompt with the answer and the reply started
    with "Verdict:", sigmoid(logprob(" incorrect") - logprob(" correct")) of the words' first tokens (read after the
    first prompt, as `pair_probabilities` does), one one-token request per question."""
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    from laffi.engines.prefix_cache import common_prefix_len

    texts = [prompts.render(prompts.feedback_messages(q, answers[q.id]), tokenizer) + "Verdict:" for q in questions]
    if not texts:
        return {}
    before = tokenizer(texts[0], add_special_tokens=False)["input_ids"]
    firsts = []
    for word in (" incorrect", " correct"):
        after = tokenizer(texts[0] + word, add_special_tokens=False)["input_ids"]
        firsts.append(after[common_prefix_len(before, after)])
    if firsts[0] == firsts[1]:
        raise ValueError("verdict_scores: ' incorrect' and ' correct' start with the same token")
    params = SamplingParams(temperature=0.0, max_tokens=1, logprobs=2, logprob_token_ids=firsts)
    token_ids = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    outputs = llm.generate([TokensPrompt(prompt_token_ids=ids) for ids in token_ids], params, use_tqdm=False,
                           lora_request=lora_request(adapter))  # fmt: skip
    scores = {}
    for q, o in zip(questions, outputs, strict=True):
        first = o.outputs[0].logprobs[0]
        scores[q.id] = _sigmoid(_logprob(first[firsts[0]]) - _logprob(first[firsts[1]]))
    return scores
