"""`laffi experiment --plan` / `laffi run --plan`: what a grid costs, before it runs.

For every cell of the grid: its training examples, optimizer steps and token positions, counted exactly with the
tokenizer, the same split, step schedule and shared-prefix packing as the run (`plan`, `step_schedule`, `pack_step`);
its questions to answer; and an estimate of peak memory and wall time on the chosen hardware. Nothing is written to
the run directory and no model is trained or answers saved.

Where the run's feedback is not made yet (laffi, laffi+sft, coh, critique, refine train on feedback on answers the
run has not generated), each question's example is counted with the reference annotator's feedback on an abstention
and marked "~": feedback on a real answer is about as long. Methods that make their own data (refine, critique) are
counted from those feedback examples too, marked "~". A method that samples while it trains (sdft) adds what its
`Method.step_positions` counts: its sampling and teacher passes, at the longest completion.

Memory (`training_memory`): the model built on the `meta` device from its config (no weights read), with the run's
LoRA settings applied to it, gives the exact parameter counts; bytes are base weights in the run's dtype, LoRA
weights, gradients and AdamW's two moments in float32, the activations gradient checkpointing keeps (one hidden
state per layer and token position, plus what `train.checkpoint_keep` saves), one layer's recomputation, the packed
rows' 4-D mask, and float32 logits of the loss positions. An estimate: allocator slack and kernel workspaces are not
counted.

Time: on the machine itself (`--plan-for here`, the default) a probe trains two steps of the first trained cell and
answers a few questions with the real model in a temporary directory, and scales by token positions and questions;
for other hardware (`--plan-for h100` ...) from FLOPs at an assumed 30 % of the bf16 peak for training and prefill,
and from reading the weights once per decode step at 60 % of the memory bandwidth.
"""

from __future__ import annotations

import math
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from laffi import methods
from laffi.config import ExperimentConfig, TrainConfig
from laffi.errors import LaffiError

GIB = 2**30


@dataclass(frozen=True)
class Hardware:
    name: str
    bf16_flops: float  # dense peak, FLOP/s
    fp32_flops: float
    bandwidth: float  # memory, bytes/s
    memory_gib: float


# Vendor datasheet peaks (dense, no sparsity).
HARDWARE = {
    "h100": Hardware("NVIDIA H100 SXM 80GB", 989e12, 67e12, 3.35e12, 80),
    "h200": Hardware("NVIDIA H200 141GB", 989e12, 67e12, 4.8e12, 141),
    "a100": Hardware("NVIDIA A100 SXM 80GB", 312e12, 19.5e12, 2.04e12, 80),
    "l4": Hardware("NVIDIA L4 24GB", 121e12, 30e12, 0.3e12, 24),
}
TRAIN_MFU = 0.30  # assumed share of the peak reached by LoRA training and by prefill
DECODE_BANDWIDTH = 0.60  # assumed share of the memory bandwidth a decode step reaches


@dataclass
class CellPlan:
    cell: str
    examples: int = 0
    steps: int = 0
    example_tokens: int = 0  # tokens of the training examples over all steps
    computed_tokens: int = 0  # token positions the forward passes compute (packing shares prompt prefixes)
    loss_tokens: int = 0
    exact: bool = True  # False: counted with stand-in feedback (not made yet)
    # The forward pass that needs the most memory: its token positions (rows x width), 4-D mask elements (packed rows)
    # and loss positions.
    widest_positions: int = 0
    widest_mask: int = 0
    widest_loss: int = 0
    peak_gib: float = 0.0
    train_seconds: float = 0.0
    questions: int = 0  # answered (evaluation + calibration)
    answer_seconds: float = 0.0


@dataclass
class GridPlan:
    hardware: str
    dtype: str
    cells: list[CellPlan] = field(default_factory=list)
    # Answering that belongs to no cell: the base model's training answers (what feedback judges) and the headroom
    # probe's re-answers. Rows of the same table, after the cells.
    stages: list[CellPlan] = field(default_factory=list)
    parameters: int = 0
    lora_parameters: int = 0
    probe: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def train_seconds(self) -> float:
        return sum(c.train_seconds for c in self.cells)

    @property
    def answer_seconds(self) -> float:
        return sum(c.answer_seconds for c in [*self.cells, *self.stages])


def plan_grid(cfg: ExperimentConfig, hardware: str = "here", probe: bool = True, log: Any = print,
              model_config: Any = None) -> GridPlan:  # fmt: skip
    """The plan of `cfg`'s grid on `hardware` ('here' or a key of HARDWARE). `model_config`: plan for a model of
    this (transformers) config instead of `model.name`'s, with `model.name`'s tokenizer (no probe then)."""
    from laffi.data import load_squad, resolve_data_path, sample_questions, sample_training
    from laffi.grid import plan
    from laffi.models import load_tokenizer, resolve_model
    from laffi.pipeline.experiment import with_dtypes_resolved, with_sizes_resolved
    from laffi.pipeline.shared import calibration_questions, train_and_eval

    if hardware != "here" and hardware not in HARDWARE:
        raise LaffiError(f"--plan-for: expected here or one of {', '.join(HARDWARE)}, got '{hardware[:80]}'")
    source = load_squad(resolve_data_path(cfg.data.path))
    if hardware == "here":
        cfg = with_dtypes_resolved(with_sizes_resolved(cfg, source))
    else:  # planned for a GPU this machine may not have: bf16 unless asked otherwise
        cfg = with_sizes_resolved(cfg, source)
        dtype = "bfloat16" if cfg.model.dtype == "auto" else cfg.model.dtype
        cfg = replace(cfg, model=replace(cfg.model, dtype=dtype, device="cuda:0"))
    train_all, eval_all = train_and_eval(cfg, source)
    largest = max([*cfg.train_sizes, cfg.ablation_size])
    train_qs = sample_training(train_all, largest, cfg.data.split_seed, cfg.data.sample_by)
    eval_qs = sample_questions(eval_all, cfg.data.eval_questions or None, cfg.data.split_seed)
    calibration = calibration_questions(cfg, train_all, train_qs)
    tokenizer = load_tokenizer(cfg.model.name)
    config = model_config if model_config is not None else _model_config(resolve_model(cfg.model.name))
    probe = probe and model_config is None
    main, ablation = plan(cfg)
    out = GridPlan(hardware=HARDWARE[hardware].name if hardware != "here" else f"here ({cfg.model.device})",
                   dtype=cfg.model.dtype)  # fmt: skip
    memory = None
    trained: list[tuple[CellPlan, list, TrainConfig]] = []
    for cell in dict.fromkeys(main + ablation):
        method = methods.get(cell.method)
        cp = CellPlan(cell.path, questions=len(eval_qs) + len(calibration) * (1 if not method.revise else 2))
        if method.trains:
            tcfg = TrainConfig(**{**asdict(cfg.train), "method": cell.method, "seed": cell.seed})
            rows, keys, exact, examples = _rows(cell.method, train_qs[: cell.size], tokenizer, cfg, tcfg)
            _count(cp, rows, keys, tcfg, config)
            if method.step_positions:  # sdft: sampling and the teacher's pass, each time an example is trained on
                per_epoch = sum(method.step_positions(e, tokenizer, tcfg) for e in examples)
                epochs = cp.example_tokens / max(1, sum(len(r["input_ids"]) for r in rows))
                cp.computed_tokens += round(per_epoch * epochs)
            cp.exact = exact
            memory = memory or training_memory(config, tcfg, cfg.model.dtype)
            cp.peak_gib = memory.peak(cp) / GIB
            trained.append((cp, rows, tcfg))
        out.cells.append(cp)
    out.stages = _stage_rows(cfg, main + ablation, len(train_qs))
    if memory is not None:
        out.parameters, out.lora_parameters = memory.parameters, memory.lora_parameters
    if hardware == "here":
        if probe and trained:
            out.probe = _probe(cfg, trained[0], eval_qs, tokenizer, log)
        rate_train = out.probe.get("seconds_per_token_position")
        rate_answer = out.probe.get("seconds_per_question")
        for cp in out.cells:
            cp.train_seconds = cp.computed_tokens * rate_train if rate_train else 0.0
        for cp in [*out.cells, *out.stages]:
            cp.answer_seconds = cp.questions * rate_answer if rate_answer else 0.0
        if not out.probe:
            out.notes.append("no probe: times not estimated (run without --no-probe)")
    else:
        hw = HARDWARE[hardware]
        flops = hw.bf16_flops if cfg.model.dtype in ("bfloat16", "float16") else hw.fp32_flops
        n = memory.parameters if memory is not None else _parameter_count(config)
        weight_bytes = n * _bytes(cfg.model.dtype)
        prompt = _mean_prompt_tokens(eval_qs[:50], tokenizer, cfg.answer.shots)
        for cp in out.cells:
            # LoRA: forward 2N, backward to the inputs only 2N, checkpointing's recomputed forward 2N per position.
            cp.train_seconds = 6 * n * cp.computed_tokens / (flops * TRAIN_MFU)
        for cp in [*out.cells, *out.stages]:
            batches = math.ceil(cp.questions / max(1, cfg.answer.batch_size))
            decode = batches * cfg.answer.max_new_tokens * weight_bytes / (hw.bandwidth * DECODE_BANDWIDTH)
            cp.answer_seconds = 2 * n * prompt * cp.questions / (flops * TRAIN_MFU) + decode
        out.notes.append(f"times from FLOPs ({TRAIN_MFU:.0%} of the {cfg.model.dtype} peak) and bandwidth "
                         f"({DECODE_BANDWIDTH:.0%}); engine start-up not counted")  # fmt: skip
    out.notes.append(f"Not counted: {', '.join(_not_counted(cfg))}.")
    return out


def _feedback_sources(cfg: ExperimentConfig, cells: list) -> list[str]:
    """The feedback files on the base model's training answers that the cells need (as
    `laffi.pipeline.shared.feedback_sources`, which makes them): 'ai' and/or 'human'."""
    from laffi.pipeline.shared import learns

    shares = {c.human_fraction for c in cells if c.human_fraction is not None}
    sources = ["ai"] if any(p == 0 if learns(cfg) else p < 1 for p in shares) else []
    return sources + (["human"] if any(p > 0 for p in shares) else [])


def _stage_rows(cfg: ExperimentConfig, cells: list, n_train: int) -> list[CellPlan]:
    """The answering outside the cells: the base model on the training questions (when a cell takes feedback) and,
    with `headroom: true`, the probe's four re-answered conditions per feedback source (laffi/feedback/headroom.py;
    `first` is the training answers themselves) and per mixed share's records (one per size, seed and share: the
    methods of a cell share its records)."""
    sources = _feedback_sources(cfg, cells)
    if not sources:
        return []
    rows = [CellPlan("(base model on the training questions)", questions=n_train)]
    if cfg.headroom:
        rows += [CellPlan(f"(headroom probe, {s} feedback)", questions=4 * n_train) for s in sources]
        mixed = {c.name: c.size for c in cells if c.size and c.human_fraction and c.human_fraction < 1}
        rows += [CellPlan(f"(headroom probe, {name} records)", questions=4 * size) for name, size in mixed.items()]
    return rows


def _not_counted(cfg: ExperimentConfig) -> list[str]:
    """What the plan leaves out for `cfg`: the stages it does not time, as far as the config turns them on."""
    from laffi.feedback import annotators
    from laffi.pipeline.shared import learns

    left = []
    if annotators.get(cfg.annotate.annotator).runs_model:
        left.append("LLM annotation")
    if learns(cfg):
        left.append("the learned annotator's training")
        if cfg.annotate.human_selection == "uncertain":
            left.append(f"the {cfg.annotate.selection_rounds} human-selection rounds (a learned annotator each)")
    if cfg.attention_questions:
        left.append("attention analysis")
    return [*left, "model loads"]


def model_shape(path: Path) -> Any:
    """A transformers config read from a config.json file (a model's architecture, without its weights)."""
    from transformers import AutoConfig

    from laffi.files import read_json

    data = read_json(Path(path), "model shape")
    if not isinstance(data, dict) or "model_type" not in data:
        raise LaffiError(f"--plan-shape {path}: not a transformers config (no 'model_type')")
    try:
        return AutoConfig.for_model(**data)
    except (ValueError, TypeError, KeyError) as e:
        raise LaffiError(f"--plan-shape {path}: {str(e).splitlines()[0][:200]}") from None


def _model_config(path: str) -> Any:
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(path)
    except (OSError, ValueError) as e:
        raise LaffiError(f"model '{path}': cannot read its config ({str(e).splitlines()[0][:200]})") from None


def _rows(method: str, questions: list, tokenizer: Any, cfg: ExperimentConfig,
          tcfg: TrainConfig) -> tuple[list[dict], list | None, bool, list]:  # fmt: skip
    """Tokenized training rows of a cell, exactly as the run makes them where they need no generated data."""
    from laffi.feedback.reference import annotate as reference
    from laffi.training.examples import tokenize_example
    from laffi.training.packing import group_keys

    m = methods.get(method)
    exact = not m.reads_feedback and m.prepare is None and m.answers_from != "judge"
    feedback = None if exact else [reference(q, "") for q in questions]
    # A method that makes its data first (refine, critique) is planned with the examples of the first method that
    # predicts feedback from the run's records (laffi): examples of the same shape, needing nothing generated.
    stand_in = next(n for n in methods.names(trained=True)
                    if methods.get(n).predicts_feedback and methods.get(n).reads_feedback)  # fmt: skip
    own = (m.prepare is None or m.step_positions is not None) and m.answers_from != "judge"
    build = method if own else stand_in
    examples = methods.build_examples(build, questions, feedback, tokenizer, cfg.answer.shots, tcfg.seed,
                                      train=tcfg)
    rows = [tokenize_example(e, tokenizer, tcfg.max_length) for e in examples]
    return rows, group_keys(examples) if tcfg.shared_prefix else None, exact, examples


def _count(cp: CellPlan, rows: list[dict], keys: list | None, tcfg: TrainConfig, config: Any) -> None:
    from laffi.training.loop import step_schedule
    from laffi.training.packing import attention_tokens, pack_step, packed_width

    schedule = step_schedule(rows, tcfg, keys)
    cp.examples, cp.steps = len(rows), len(schedule)
    cp.example_tokens = sum(len(rows[i]["input_ids"]) for step in schedule for mb in step for i in mb)
    cp.loss_tokens = sum(sum(rows[i]["completion_mask"]) for step in schedule for mb in step for i in mb)
    passes = []  # (positions, mask elements, loss positions) of each forward pass
    if keys is None:
        cp.computed_tokens = cp.example_tokens
        for step in schedule:
            for mb in step:
                width = max(len(rows[i]["input_ids"]) for i in mb)
                passes.append((len(mb) * width, 0, sum(sum(rows[i]["completion_mask"]) for i in mb)))
    else:
        attention = attention_tokens(config)
        plans = [pack_step(rows, keys, [i for mb in step for i in mb], tcfg.micro_batch_tokens, attention,
                           tcfg.micro_batch_size) for step in schedule]  # fmt: skip
        cp.computed_tokens = sum(packed_width(rows, members) for p in plans for mb in p for members in mb)
        for p in plans:
            for mb in p:
                width = max(packed_width(rows, members) for members in mb)
                loss = sum(sum(rows[i]["completion_mask"]) for members in mb for i in members)
                passes.append((len(mb) * width, len(mb) * width * width, loss))
    cp.widest_positions, cp.widest_mask, cp.widest_loss = max(passes)


@dataclass
class TrainingMemory:
    """Bytes of LoRA training of one model (see the module docstring)."""

    parameters: int
    lora_parameters: int
    weight_bytes: int
    hidden: int
    intermediate: int
    layers: int
    vocab: int
    act_bytes: int
    keep: tuple[str, ...]

    def fixed(self) -> int:
        return self.weight_bytes + 16 * self.lora_parameters  # LoRA fp32 weights, gradients, AdamW m and v

    def activations(self, positions: int, loss_positions: int, mask_bytes: int = 0) -> int:
        per_layer = self.hidden * self.act_bytes  # the layer input checkpointing keeps
        if "attention" in self.keep:
            per_layer += self.hidden * self.act_bytes
        if "down" in self.keep:
            per_layer += self.intermediate * self.act_bytes
        kept = self.layers * per_layer * positions
        # One layer recomputed in the backward pass: its projections, MLP and their gradients.
        recompute = 2 * (6 * self.hidden + 3 * self.intermediate) * self.act_bytes * positions
        logits = 3 * 4 * self.vocab * loss_positions  # float32 logits, softmax and their gradient
        return kept + recompute + logits + mask_bytes

    def peak(self, cp: CellPlan) -> int:
        """Peak bytes of the cell's widest forward and backward pass."""
        return self.fixed() + self.activations(cp.widest_positions, cp.widest_loss, cp.widest_mask * self.act_bytes)


def training_memory(config: Any, tcfg: TrainConfig, dtype: str) -> TrainingMemory:
    """Parameter counts from the model built on `meta` with `tcfg`'s LoRA applied (no weights read, no memory used)."""
    import torch
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    from laffi.models import peft_quietly
    from laffi.training.loop import _keep_names, lora_config

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    n = sum(p.numel() for p in model.parameters())
    try:
        with peft_quietly():
            lora = get_peft_model(model, lora_config(tcfg))
    except ValueError as e:
        raise LaffiError(f"train.target_modules: {str(e).splitlines()[0][:200]}") from None
    n_lora = sum(p.numel() for p in lora.parameters() if p.requires_grad)
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    b = _bytes(dtype)
    return TrainingMemory(parameters=n, lora_parameters=n_lora, weight_bytes=n * b, hidden=text.hidden_size,
                          intermediate=getattr(text, "intermediate_size", 4 * text.hidden_size),
                          layers=text.num_hidden_layers, vocab=text.vocab_size, act_bytes=b,
                          keep=tuple(_keep_names(tcfg.checkpoint_keep)) if tcfg.gradient_checkpointing else ())


def _parameter_count(config: Any) -> int:
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        return sum(p.numel() for p in AutoModelForCausalLM.from_config(config).parameters())


def _bytes(dtype: str) -> int:
    return 4 if dtype == "float32" else 2


def _mean_prompt_tokens(questions: list, tokenizer: Any, shots: int) -> float:
    from laffi import prompts

    if not questions:
        return 0.0
    lengths = [len(tokenizer(prompts.render(prompts.qa_messages(q, shots), tokenizer), add_special_tokens=False)
                   ["input_ids"]) for q in questions]  # fmt: skip
    return sum(lengths) / len(lengths)


def _probe(cfg: ExperimentConfig, first: tuple[CellPlan, list, TrainConfig], eval_qs: list, tokenizer: Any,
           log: Any) -> dict[str, float]:  # fmt: skip
    """Two training steps of the first trained cell and a few answers, with the real model, in a temporary directory:
    seconds per computed token position and per question on this machine."""
    from laffi.engines.generation import DecodeSettings, answer_questions
    from laffi.methods import build_examples, get, names
    from laffi.models import load_model
    from laffi.training.loop import train as run_training

    cp, _, tcfg = first
    work = Path(tempfile.mkdtemp(prefix="laffi-plan-"))
    try:
        log(f"plan: probing 2 training steps of {cp.cell} and 8 answers on {cfg.model.device}")
        questions = eval_qs[: max(1, tcfg.batch_size)]
        # The plain QA method (sft): examples of the same shape as every method's, needing no feedback.
        plain = next(n for n in names(trained=True)
                     if not (get(n).reads_feedback or get(n).prepare or get(n).answers_from))  # fmt: skip
        examples = build_examples(plain, questions, None, tokenizer, cfg.answer.shots, tcfg.seed)
        probe_cfg = replace(tcfg, method=plain, max_steps=2, save_steps=10_000, report_to="")
        start = time.perf_counter()
        info = run_training(cfg.model.name, cfg.model.dtype, examples, probe_cfg, work / "adapter", progress=False,
                            tokenizer=tokenizer, device=cfg.model.device)  # fmt: skip
        train_s = time.perf_counter() - start
        lm = load_model(cfg.model.name, dtype=cfg.model.dtype, device=cfg.model.device)
        settings = DecodeSettings(cfg.answer.max_new_tokens, cfg.answer.batch_size, workers=cfg.answer.workers,
                                  draft_tokens=cfg.answer.draft_tokens)  # fmt: skip
        sample = eval_qs[:8]
        start = time.perf_counter()
        answer_questions(lm, tokenizer, sample, cfg.answer.shots, settings)
        answer_s = time.perf_counter() - start
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return {"seconds_per_token_position": train_s / max(1, info["tokens_computed"]),
            "seconds_per_question": answer_s / max(1, len(sample)), "probe_train_seconds": train_s,
            "probe_answer_seconds": answer_s, "probe_peak_gib": _measured_peak(cfg.model.device)}  # fmt: skip


def _measured_peak(device: str) -> float:
    """The probe's measured peak: CUDA memory allocated on a GPU, the process's peak resident set on a CPU (which
    also holds the Python process, its libraries and the allocator's slack)."""
    import resource

    import torch

    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated(device) / GIB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GIB


def markdown(p: GridPlan) -> str:
    """The plan as a table, one row per cell, and the totals."""
    lines = [f"Plan on {p.hardware}, dtype {p.dtype}: {len(p.cells)} cells; model {p.parameters / 1e6:,.1f}M "
             f"parameters, LoRA {p.lora_parameters / 1e6:,.2f}M.", "",
             "| cell | examples | steps | example tokens | token positions computed | est. peak GiB | est. training "
             "| questions answered | est. answering |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
    for c in [*p.cells, *p.stages]:
        mark = "" if c.exact else "~"
        peak = f"{c.peak_gib:.1f}" if c.steps else "-"
        lines.append(f"| {c.cell} | {mark}{c.examples or '-'} | {mark}{c.steps or '-'} | "
                     f"{mark}{c.example_tokens:,} | {mark}{c.computed_tokens:,} | {peak} | "
                     f"{duration(c.train_seconds) if c.steps else '-'} | {c.questions} | "
                     f"{duration(c.answer_seconds)} |")  # fmt: skip
    total = p.train_seconds + p.answer_seconds
    lines += ["", f"Total: {sum(c.steps for c in p.cells):,} optimizer steps, "
              f"{sum(c.computed_tokens for c in p.cells):,} token positions; estimated {duration(p.train_seconds)} "
              f"training + {duration(p.answer_seconds)} answering = {duration(total)}; peak "
              f"{max((c.peak_gib for c in p.cells), default=0):.1f} GiB (estimate).",
              "~: counted with stand-in feedback (the reference annotator's on an abstention): the run's own "
              "feedback is not made yet."]  # fmt: skip
    if p.probe:
        lines.append(f"Probe on this machine: {p.probe['probe_train_seconds']:.1f} s for 2 training steps, "
                     f"{p.probe['seconds_per_question']:.2f} s per answer; measured peak "
                     f"{p.probe['probe_peak_gib']:.1f} GiB (on a CPU the whole process).")  # fmt: skip
    lines += p.notes
    return "\n".join(lines)


def duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.1f} s"
    if seconds < 5400:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"
