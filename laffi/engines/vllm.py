"""Answering with vLLM (`answer.engine: vllm`): the same prompts, token for token, and the same parsing as the
transformers engine (engines/generation.py), with vLLM's batching, prefix caching (the shots and passages that prompts
share are computed once) and LoRA support (the adapter is served as a LoRARequest, not merged).

Greedy decoding on both engines; answers may still differ where two tokens' logits are within float rounding of each
other (different kernels). tests/integration/test_vllm_engine.py checks that at least 98 % of 200 answers are
identical; it needs a GPU and vLLM and is skipped without them. vLLM is not a dependency of laffi: install it on the
GPU machine (`pip install vllm`). Revision rounds and resuming a half-done answer file are transformers-only: vLLM
answers a whole set in one call.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

from laffi import prompts
from laffi.errors import LaffiError
from laffi.records import Generation, Question

# LoRA ranks vLLM accepts for `max_lora_rank`; the adapter's rank is rounded up to one of them.
LORA_RANKS = (8, 16, 32, 64, 128, 256, 320, 512)


def require_vllm() -> None:
    if importlib.util.find_spec("vllm") is None:
        raise LaffiError("answer.engine: 'vllm' is not installed (pip install vllm, on a machine with a GPU)")


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


def load(model_path: str, dtype: str, adapter: str | None) -> Any:
    """A vLLM engine over `model_path` (a directory or hub id), with LoRA enabled when an adapter is served."""
    require_vllm()
    from vllm import LLM

    lora = {"enable_lora": True, "max_lora_rank": lora_rank(adapter), "max_loras": 1} if adapter else {}
    return LLM(model=model_path, tokenizer=model_path, dtype=dtype, enable_prefix_caching=True, seed=0, **lora)


def generate(llm: Any, token_ids: list[list[int]], max_new_tokens: int, stops: list[int],
             adapter: str | None) -> list[str]:  # fmt: skip
    """Greedy continuations of prompts given as token ids (so vLLM adds no BOS and tokenizes nothing itself)."""
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt
    from vllm.lora.request import LoRARequest

    params = SamplingParams(temperature=0.0, max_tokens=max_new_tokens, stop_token_ids=stops,
                            skip_special_tokens=True)  # fmt: skip
    request = LoRARequest("laffi-adapter", 1, str(adapter)) if adapter else None
    outputs = llm.generate([TokensPrompt(prompt_token_ids=ids) for ids in token_ids], params, lora_request=request)
    return [o.outputs[0].text.strip() for o in outputs]


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
    """`laffi.engines.generation.answer_questions` on vLLM: the same prompt text and tokens, the same parsing."""
    texts = [prompts.render(prompts.qa_messages(q, shots), tokenizer) + answer_prefix for q in questions]
    token_ids = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    raws = generate(llm, token_ids, max_new_tokens, stops, adapter)
    return [Generation(id=q.id, raw=raw, answer=prompts.parse_answer(raw, q.context, require_in_context))
            for q, raw in zip(questions, raws, strict=True)]  # fmt: skip
