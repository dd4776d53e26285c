"""`vllm.inputs.TokensPrompt` (a TypedDict in vLLM): a dict, with its keys checked against vLLM's."""

from typing import Any

from vllm import _check, vllm_api


def TokensPrompt(**kwargs: Any) -> dict[str, Any]:  # noqa: N802 (vLLM's name)
    _check("TokensPrompt", kwargs, vllm_api.TOKENS_PROMPT)
    return dict(kwargs)
