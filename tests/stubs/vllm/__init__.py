"""A stand-in for vLLM in the tests (no GPU, vLLM not installed): the parts of its API laffi uses, computed with a
real transformers model, and a record of what laffi asked for.

- `LLM(**kwargs)` refuses a keyword that is not a field of vLLM's `EngineArgs` (tests/engines/vllm_api.py, copied
  from vLLM's source) and loads the model with transformers; each engine built is appended to `ENGINES`.
- `LLM.generate` refuses a keyword vLLM's does not take, decodes greedily (float32 logits, one prompt at a time),
  and returns vLLM's output shape: `outputs[0].text`, `.token_ids` and `.logprobs` (one dict per generated token,
  {token id: Logprob}), with vLLM's logprob semantics: `logprobs=k` gives the top k and the sampled token,
  `logprob_token_ids` gives exactly those tokens and the sampled one; values are raw log-softmax of the logits.
  Every request (prompt token ids, SamplingParams, LoRARequest) is appended to the engine's `requests`.
- LoRA as vLLM serves it: adapters are kept by `lora_int_id` (a second adapter under an id already loaded is not
  read: the first is served), refused when LoRA is off or the adapter's rank is above `max_lora_rank`.
- Shutting down (`llm.llm_engine.engine_core.shutdown()`) and `vllm.distributed.parallel_state`'s teardown append
  to `EVENTS`.
"""

from __future__ import annotations

import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

_API = Path(__file__).resolve().parents[2] / "engines" / "vllm_api.py"
_spec = importlib.util.spec_from_file_location("vllm_api", _API)
vllm_api = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(vllm_api)

__version__ = "0.33.0"

ENGINES: list[LLM] = []
EVENTS: list[str] = []


def _check(kind: str, given: dict[str, Any], allowed: frozenset[str]) -> None:
    unknown = sorted(set(given) - allowed)
    if unknown:
        raise TypeError(f"{kind}: unexpected keyword(s) {unknown} (not in the pinned vLLM's API)")


class SamplingParams:
    def __init__(self, **kwargs: Any) -> None:
        _check("SamplingParams", kwargs, vllm_api.SAMPLING_PARAMS)
        self.temperature = 1.0
        self.max_tokens = 16
        self.stop_token_ids: list[int] | None = None
        self.skip_special_tokens = True
        self.logprobs: int | None = None
        self.logprob_token_ids: list[int] | None = None
        self.__dict__.update(kwargs)
        ids = self.logprob_token_ids
        if ids is not None and self.logprobs is not None and self.logprobs != len(ids):
            raise ValueError("When both logprobs and logprob_token_ids are set, logprobs must equal "
                             "len(logprob_token_ids)")  # fmt: skip
        self.kwargs = kwargs


@dataclass
class Logprob:
    logprob: float
    rank: int | None = None
    decoded_token: str | None = None


class _Core:
    def shutdown(self, timeout: float | None = None) -> None:
        EVENTS.append("shutdown")


class LLM:
    def __init__(self, **kwargs: Any) -> None:
        _check("LLM / EngineArgs", kwargs, vllm_api.ENGINE_ARGS)
        from transformers import AutoTokenizer

        self.kwargs = kwargs
        self.requests: list[dict[str, Any]] = []
        self.tokenizer = AutoTokenizer.from_pretrained(kwargs.get("tokenizer") or kwargs["model"])
        self.base = self._load(None)
        self.adapters: dict[int, Any] = {}
        self.llm_engine = SimpleNamespace(engine_core=_Core())
        ENGINES.append(self)

    def _load(self, adapter: str | None) -> Any:
        import torch
        from transformers import AutoModelForCausalLM

        dtype = self.kwargs.get("dtype", "auto")
        torch_dtype = getattr(torch, dtype) if dtype != "auto" else "auto"
        lm = AutoModelForCausalLM.from_pretrained(self.kwargs["model"], dtype=torch_dtype)
        if adapter is not None:
            from peft import PeftModel

            lm = PeftModel.from_pretrained(lm, adapter).merge_and_unload()
        return lm.eval()

    def _model(self, lora: LoRARequest | None) -> Any:
        if lora is None:
            return self.base
        if not self.kwargs.get("enable_lora"):
            raise ValueError("LoRA is not enabled")
        if lora.lora_int_id not in self.adapters:
            r = json.loads((Path(lora.lora_path) / "adapter_config.json").read_text())["r"]
            if r > self.kwargs.get("max_lora_rank", 16):
                raise ValueError(f"LoRA rank {r} is greater than max_lora_rank")
            self.adapters[lora.lora_int_id] = self._load(lora.lora_path)
        return self.adapters[lora.lora_int_id]

    def generate(self, prompts: Any, sampling_params: SamplingParams | None = None, **kwargs: Any) -> list[Any]:
        _check("LLM.generate", kwargs, vllm_api.GENERATE)
        params = sampling_params or SamplingParams()
        if params.temperature != 0.0:
            raise NotImplementedError("the stub decodes greedily only (temperature=0.0)")
        lora = kwargs.get("lora_request")
        model = self._model(lora)
        out = []
        for prompt in prompts:
            ids = list(prompt["prompt_token_ids"])
            self.requests.append({"prompt_token_ids": ids, "params": params, "lora_request": lora})
            out.append(SimpleNamespace(prompt_token_ids=ids, outputs=[self._complete(model, ids, params)]))
        return out

    def _complete(self, model: Any, ids: list[int], params: SamplingParams) -> Any:
        import torch

        stops = set(params.stop_token_ids or [])
        if self.tokenizer.eos_token_id is not None:
            stops.add(self.tokenizer.eos_token_id)
        tokens: list[int] = []
        logprobs: list[dict[int, Logprob]] = []
        with torch.inference_mode():
            for _ in range(params.max_tokens):  # the whole sequence each step: no cache API to depend on
                logits = model(input_ids=torch.tensor([ids + tokens])).logits[0, -1]
                row = torch.log_softmax(logits.float(), dim=-1)
                token = int(row.argmax().item())
                if params.logprobs is not None or params.logprob_token_ids is not None:
                    logprobs.append(self._logprobs(row, token, params))
                tokens.append(token)
                if token in stops:
                    break
        kept = tokens[:-1] if tokens and tokens[-1] in stops else tokens
        text = self.tokenizer.decode(kept, skip_special_tokens=params.skip_special_tokens)
        return SimpleNamespace(text=text, token_ids=tokens, logprobs=logprobs if logprobs else None)

    @staticmethod
    def _logprobs(row: Any, sampled: int, params: SamplingParams) -> dict[int, Logprob]:
        if params.logprob_token_ids is not None:
            wanted = [sampled, *params.logprob_token_ids]
        else:
            wanted = [sampled, *row.topk(params.logprobs).indices.tolist()] if params.logprobs else [sampled]
        return {t: Logprob(float(row[t].item())) for t in wanted}


class LoRARequest:
    def __init__(self, **kwargs: Any) -> None:
        _check("LoRARequest", kwargs, vllm_api.LORA_REQUEST)
        self.__dict__.update(kwargs)
        if self.lora_int_id < 1:
            raise ValueError(f"id must be > 0, got {self.lora_int_id}")
