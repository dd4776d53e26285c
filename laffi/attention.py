"""Attention analysis: does feedback training change how the model reads the passage?

For each model (the base model, and the base model with each adapter) and the same questions, per layer and head:

- entropy: mean over query rows of -sum_j a_ij log a_ij (nats). 0 = each token looks at one token; log(n) = uniform
  over n tokens.
- distance: mean over query rows of sum_j a_ij |i - j| (tokens): how far tokens look (local vs global).
- local_share: mean over query rows of the attention within LOCAL_WINDOW tokens of the query (|i - j| <= window).
- passage_share, span_share, question_share: the attention from the answer-generation position (the last prompt
  token, whose output predicts the first answer token) to the passage, to the gold answer span inside the passage
  (answerable questions only), and to the question.

The query rows averaged for entropy, distance and local_share run from the first passage token to the end of the
prompt: the system text and the few-shot examples before it are the same for every question, and would dilute the
part that differs.

Prompts are exactly the QA prompts used to answer (`prompts.qa_messages` + `prompts.render`); the passage, question and
gold span are located in tokens through the tokenizer's offset mapping on the rendered text. Weights come from eager
attention, caught by forward hooks on the attention modules one layer at a time and reduced at once, and questions run
one at a time into running sums: memory is one layer's (heads x T x T) weights, whatever the number of questions.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from laffi import prompts
from laffi.errors import LaffiError
from laffi.files import atomic_write_text, read_json, write_json
from laffi.models import model_device
from laffi.records import Question

MEASURES = ("entropy", "distance", "local_share", "passage_share", "span_share", "question_share")
LABELS = {
    "entropy": "entropy (nats)",
    "distance": "distance (tokens)",
    "local_share": "local share",
    "passage_share": "passage share",
    "span_share": "gold-span share",
    "question_share": "question share",
}
LOCAL_WINDOW = 8  # tokens; "local" attention for local_share
BASE = "base"


# ------------------------------------------------------------------------------------------------ the measures
# Each takes attention weights of shape (..., T_query, T_key) whose rows sum to 1 and returns shape (...): one value
# per head. `first_row` drops the query rows before it from the averages.


def entropy(attn: Any, first_row: int = 0) -> Any:
    rows = attn[..., first_row:, :]
    # xlogy(0, 0) = 0: masked (future) keys add nothing.
    return -(rows.xlogy(rows)).sum(-1).mean(-1)


def _distances(attn: Any, first_row: int) -> Any:
    import torch

    queries = torch.arange(first_row, attn.shape[-2], device=attn.device)
    keys = torch.arange(attn.shape[-1], device=attn.device)
    return (queries[:, None] - keys[None, :]).abs().to(attn.dtype)


def mean_distance(attn: Any, first_row: int = 0) -> Any:
    return (attn[..., first_row:, :] * _distances(attn, first_row)).sum(-1).mean(-1)


def local_share(attn: Any, first_row: int = 0, window: int = LOCAL_WINDOW) -> Any:
    near = (_distances(attn, first_row) <= window).to(attn.dtype)
    return (attn[..., first_row:, :] * near).sum(-1).mean(-1)


def share_from_last(attn: Any, keys: tuple[int, int]) -> Any:
    """Attention of the last query row on the key positions [start, end)."""
    start, end = keys
    return attn[..., -1, start:end].sum(-1)


# ------------------------------------------------------------------------------------------------ prompt layout


@dataclass
class Layout:
    """A question's QA prompt as token ids, with [start, end) token ranges of its parts."""

    input_ids: list[int]
    passage: tuple[int, int]
    question: tuple[int, int]
    span: tuple[int, int] | None  # the first gold answer; None for an unanswerable question


def token_range(offsets: list[tuple[int, int]], start: int, end: int) -> tuple[int, int] | None:
    """[first, last + 1) of the tokens whose characters overlap [start, end); None if none does."""
    hits = [k for k, (s, e) in enumerate(offsets) if s < end and e > start]
    return (hits[0], hits[-1] + 1) if hits else None


def prompt_layout(q: Question, tokenizer: Any, shots: int) -> Layout:
    text = prompts.render(prompts.qa_messages(q, shots), tokenizer)
    user = prompts.qa_user_text(q.context, q.question)
    at = text.rfind(user)
    if at < 0:
        raise LaffiError(f"question {q.id}: the rendered prompt does not hold its passage and question verbatim")
    passage_at = at + user.index(q.context)
    question_at = at + user.rindex(q.question)
    if not getattr(tokenizer, "is_fast", False):
        raise LaffiError("attention: needs a fast tokenizer (offset mapping) to locate the passage in tokens")
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)  # as generation.generate encodes
    offsets = [tuple(o) for o in enc["offset_mapping"]]
    passage = token_range(offsets, passage_at, passage_at + len(q.context))
    question = token_range(offsets, question_at, question_at + len(q.question))
    if passage is None or question is None:
        raise LaffiError(f"question {q.id}: empty passage or question")
    span = None
    if not q.is_impossible and q.answers:
        start = passage_at + q.answer_starts[0]
        span = token_range(offsets, start, start + len(q.answers[0]))
    return Layout(list(enc["input_ids"]), passage, question, span)


# ------------------------------------------------------------------------------------------------ one model


class _Recorder:
    """Forward hooks on every attention module: reduce each layer's weights at once into running sums."""

    def __init__(self, lm: Any):
        modules = attention_modules(lm)
        self.layers = len(modules)
        self.sums: dict[str, Any] = {}
        self.counts = dict.fromkeys(MEASURES, 0)
        self.layout: Layout | None = None
        self.question_values: dict[str, list[Any]] = {}  # this question's per-layer head values
        self.keep_last_row = False
        self.last_rows: list[Any] = []
        self.handles = [m.register_forward_hook(self._hook(i)) for i, m in enumerate(modules)]

    def _hook(self, layer: int) -> Any:
        def hook(module: Any, args: Any, output: Any) -> None:
            weights = output[1] if isinstance(output, tuple) and len(output) > 1 else None
            if weights is None:
                raise LaffiError("attention: the model returned no attention weights (eager attention is needed)")
            self._reduce(layer, weights[0].float())

        return hook

    def _reduce(self, layer: int, attn: Any) -> None:
        lay = self.layout
        first = lay.passage[0]
        values = {
            "entropy": entropy(attn, first),
            "distance": mean_distance(attn, first),
            "local_share": local_share(attn, first),
            "passage_share": share_from_last(attn, lay.passage),
            "question_share": share_from_last(attn, lay.question),
        }
        if lay.span is not None:
            values["span_share"] = share_from_last(attn, lay.span)
        for name, v in values.items():
            self.question_values.setdefault(name, [None] * self.layers)[layer] = v.double()
        if self.keep_last_row:
            self.last_rows.append(attn[:, -1, first:].mean(0).tolist())

    def run(self, lm: Any, layout: Layout, keep_last_row: bool = False) -> dict[str, float]:
        """One forward pass over one prompt; adds it to the sums and returns its means over layers and heads."""
        import torch

        self.layout, self.question_values, self.keep_last_row = layout, {}, keep_last_row
        self.last_rows = []
        with torch.inference_mode():
            lm(input_ids=torch.tensor([layout.input_ids], device=model_device(lm)), use_cache=False)
        means = {}
        for name, per_layer in self.question_values.items():
            stacked = torch.stack(per_layer)  # (layers, heads)
            self.sums[name] = self.sums[name] + stacked if name in self.sums else stacked
            self.counts[name] += 1
            means[name] = stacked.mean().item()
        return means

    def close(self) -> None:
        for h in self.handles:
            h.remove()


def attention_modules(lm: Any) -> list[Any]:
    """The modules whose output carries the attention weights, in layer order.

    transformers 5 names them per architecture in `_can_record_outputs["attentions"]` (what output_attentions uses)."""
    import torch.nn as nn

    for module in lm.modules():
        spec = (getattr(module, "_can_record_outputs", None) or {}).get("attentions")
        if spec is None:
            continue
        spec = spec[0] if isinstance(spec, list) else spec
        target = getattr(spec, "target_class", spec)
        class_name = getattr(spec, "class_name", None) or (spec if isinstance(spec, str) else None)
        found = [
            m
            for m in lm.modules()
            if (isinstance(target, type) and isinstance(m, target))
            or (class_name and type(m).__name__.endswith(class_name))
        ]
        if found and all(isinstance(m, nn.Module) for m in found):
            return found
    raise LaffiError(f"attention: cannot find the attention modules of {type(lm).__name__}")


def measure_model(
    lm: Any, tokenizer: Any, questions: list[Question], shots: int, example_id: str | None = None,
    progress: bool = True, desc: str = "attention",
) -> dict[str, Any]:  # fmt: skip
    """All measures for one model over `questions`, one question at a time; per head, per layer and overall."""
    from tqdm.auto import tqdm

    recorder = _Recorder(lm)
    per_question: dict[str, dict[str, float]] = {}
    example = None
    try:
        for q in tqdm(questions, desc=desc, unit="q", disable=not progress):
            layout = prompt_layout(q, tokenizer, shots)
            per_question[q.id] = recorder.run(lm, layout, keep_last_row=q.id == example_id)
            if q.id == example_id:
                example = _example(q, layout, recorder.last_rows)
    finally:
        recorder.close()
    result: dict[str, Any] = {"questions": len(questions), "counts": recorder.counts, "layers": recorder.layers}
    per_head = {name: (recorder.sums[name] / recorder.counts[name]) for name in recorder.sums}
    result["heads"] = int(next(iter(per_head.values())).shape[1]) if per_head else 0
    result["per_head"] = {name: t.tolist() for name, t in per_head.items()}
    result["per_layer"] = {name: t.mean(1).tolist() for name, t in per_head.items()}
    result["mean"] = {name: t.mean().item() for name, t in per_head.items()}
    result["per_question"] = per_question
    result["example"] = example
    return result


def _example(q: Question, layout: Layout, last_rows: list[list[float]]) -> dict[str, Any]:
    first = layout.passage[0]

    def rel(r: tuple[int, int] | None) -> list[int] | None:
        return None if r is None else [r[0] - first, r[1] - first]

    return {
        "id": q.id, "question": q.question, "answer": q.answers[0] if q.answers else "",
        "first_token": first, "prompt_tokens": len(layout.input_ids),
        "span": rel(layout.span), "question_tokens": rel(layout.question),
        "attention": last_rows,  # layers x (tokens from the passage start to the end), mean over heads
    }  # fmt: skip


# ------------------------------------------------------------------------------------------------ the report


def parse_adapters(spec: str) -> dict[str, str | None]:
    """'base,DIR1,name=DIR2' -> {"base": None, <DIR1's name>: DIR1, "name": DIR2}.

    A directory's name is its own, or its parent's when it is called 'adapter' (runs/pool/laffi/adapter -> laffi)."""
    out: dict[str, str | None] = {}
    for item in (s.strip() for s in spec.split(",")):
        if not item:
            continue
        if item == BASE:
            name, path = BASE, None
        elif "=" in item:
            name, path = (s.strip() for s in item.split("=", 1))
            path = None if path == BASE else path
        else:
            p = Path(item.rstrip("/"))
            name, path = (p.parent.name if p.name == "adapter" and p.parent.name else p.name), item
        if not name:
            raise LaffiError(f"--adapters: '{item}': empty name")
        if name in out:
            raise LaffiError(f"--adapters: the name '{name}' is used twice (write NAME=DIR to name them)")
        if path is not None and not (Path(path) / "adapter_config.json").exists():
            raise LaffiError(f"--adapters: {path}: not a PEFT adapter directory (no adapter_config.json)")
        out[name] = path
    if not out:
        raise LaffiError("--adapters: no model given (e.g. --adapters base,runs/pool/laffi/adapter)")
    return out


def attention_report(
    model_name: str, data_path: str | Path, adapters: dict[str, str | None], questions: int, out_dir: Path,
    *, shots: int = 2, dtype: str = "float32", seed: int = 0, progress: bool = True, log: Any = None,
    device: str = "cpu",
) -> dict[str, Any]:  # fmt: skip
    """Measure every model on the same `questions` (a seeded sample of the data file) and write the report.

    Writes to `out_dir`: attention.json (everything), attention.md (tables), attention_layers.png (per-layer curves,
    one line per model, one panel per measure) and attention_example_<model>.png (one example's heatmap per model).
    Finished models are kept in out_dir/.attention.partial.json, so a re-run with the same settings resumes.
    Returns the JSON's content, whose "files" entry holds the paths written and "markdown" the tables."""
    from laffi.data import load_squad, resolve_data_path, sample_questions
    from laffi.models import load_model, load_tokenizer

    if not adapters:
        raise LaffiError("attention: no model given")
    data_file = resolve_data_path(str(data_path))
    picked = sample_questions(load_squad(data_file), questions, seed)
    if not picked:
        raise LaffiError(f"{data_file}: no questions")
    answerable = [q for q in picked if not q.is_impossible]
    example_id = (answerable or picked)[0].id
    out_dir = Path(out_dir)
    settings = {
        "model": model_name, "data": str(data_file), "question_ids": [q.id for q in picked], "shots": shots,
        "dtype": dtype, "prompt_version": prompts.QA_TEMPLATE_VERSION, "local_window": LOCAL_WINDOW,
        "example_id": example_id,
    }  # fmt: skip
    partial_file = out_dir / ".attention.partial.json"
    done = _read_partial(partial_file)
    tokenizer = load_tokenizer(model_name)
    results: dict[str, Any] = {}
    for name, adapter in adapters.items():
        key = _key({**settings, "adapter": _adapter_identity(adapter)})
        if key in done:
            results[name] = done[key]
            continue
        if log:
            log(f"attention: {name} ({adapter or 'no adapter'})")
        lm = load_model(model_name, dtype=dtype, adapter=adapter, device=device)
        lm.set_attn_implementation("eager")  # sdpa/flash kernels return no weights
        results[name] = {"adapter": adapter, **measure_model(lm, tokenizer, picked, shots, example_id, progress,
                                                             desc=f"attention {name}")}  # fmt: skip
        del lm
        done[key] = results[name]
        write_json(partial_file, done)
    report = {**settings, "questions": len(picked), "answerable": len(answerable), "models": results}
    report["comparisons"] = comparisons(results)
    report["files"] = write_outputs(report, out_dir)
    report["markdown"] = markdown(report)
    partial_file.unlink(missing_ok=True)
    return report


def _adapter_identity(adapter: str | None) -> str | None:
    """An adapter's path and weights' hash: a retrained adapter in the same place is measured again."""
    if adapter is None:
        return None
    weights = sorted(Path(adapter).glob("adapter_model.*"))
    digest = hashlib.sha256(b"".join(w.read_bytes() for w in weights)).hexdigest()[:16]
    return f"{Path(adapter).resolve()}#{digest}"


def _key(settings: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def _read_partial(path: Path) -> dict[str, Any]:
    if not path.exists():
        return {}
    try:
        data = read_json(path)
    except LaffiError:
        return {}  # a damaged cache only costs recomputation
    return data if isinstance(data, dict) else {}


def comparisons(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Paired bootstrap over the same questions, each later model against each earlier one, per measure (the
    question's mean over layers and heads)."""
    from laffi.stats import paired_bootstrap

    names = list(results)
    rows = []
    for i, a in enumerate(names):
        for b in names[:i]:
            row: dict[str, Any] = {"a": a, "b": b}
            qa, qb = results[a]["per_question"], results[b]["per_question"]
            for m in MEASURES:
                ids = [k for k in qa if m in qa[k] and m in qb.get(k, {})]
                if ids:
                    row[m] = paired_bootstrap([qa[k][m] for k in ids], [qb[k][m] for k in ids])
            rows.append(row)
    return rows


# ------------------------------------------------------------------------------------------------ outputs


def markdown(report: dict[str, Any]) -> str:
    models = report["models"]
    lines = [
        f"Attention of `{report['model']}` on {report['questions']} questions ({report['answerable']} answerable) of "
        f"`{Path(report['data']).name}`, {report['shots']}-shot QA prompt `{report['prompt_version']}`, "
        f"{report['dtype']}. Mean over layers, heads and questions; entropy, distance and local share (|i-j| <= "
        f"{report['local_window']}) over the query rows from the passage to the end of the prompt; the shares are the "
        "attention from the last prompt token (where the answer starts) to the passage, the gold answer span "
        "(answerable questions only) and the question.",
        "",
        "| model | " + " | ".join(LABELS[m] for m in MEASURES) + " |",
        "|---|" + "---:|" * len(MEASURES),
    ]
    for name, r in models.items():
        cells = [_fmt(m, r["mean"].get(m)) for m in MEASURES]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    if report.get("comparisons"):
        lines += ["", "Paired bootstrap over the same questions (difference of means, 95% CI):", "",
                  "| comparison | " + " | ".join(LABELS[m] for m in MEASURES) + " |",
                  "|---|" + "---:|" * len(MEASURES)]  # fmt: skip
        for row in report["comparisons"]:
            cells = []
            for m in MEASURES:
                c = row.get(m)
                cells.append("—" if c is None else f"{_fmt(m, c['mean_diff'], True)} ({_fmt(m, c['ci_low'], True)} to "
                             f"{_fmt(m, c['ci_high'], True)})")  # fmt: skip
            lines.append(f"| {row['a']} vs {row['b']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _fmt(measure: str, value: float | None, signed: bool = False) -> str:
    if value is None:
        return "—"
    digits = 2 if measure == "distance" else 3
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"


def write_outputs(report: dict[str, Any], out_dir: Path) -> dict[str, Any]:
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    out_dir.mkdir(parents=True, exist_ok=True)
    files: dict[str, Any] = {
        "json": str(out_dir / "attention.json"),
        "markdown": str(out_dir / "attention.md"),
        "layers_png": str(out_dir / "attention_layers.png"),
        "example_png": {},
    }
    plot_layers(report["models"], Path(files["layers_png"]))
    for name, r in report["models"].items():
        if r.get("example"):
            path = out_dir / f"attention_example_{_safe(name)}.png"
            plot_example(name, r["example"], path)
            files["example_png"][name] = str(path)
    atomic_write_text(files["markdown"], markdown(report))
    write_json(files["json"], {**report, "files": files})
    return files


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_+." else "_" for c in name)


def plot_layers(models: dict[str, Any], path: Path) -> None:
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, axes = plt.subplots(2, 3, figsize=(13, 7), constrained_layout=True)
    for ax, m in zip(axes.flat, MEASURES, strict=True):
        for name, r in models.items():
            if m in r["per_layer"]:
                ax.plot(range(len(r["per_layer"][m])), r["per_layer"][m], marker=".", label=name)
        ax.set_title(LABELS[m])
        ax.set_xlabel("layer")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    axes.flat[0].legend()
    fig.suptitle("Attention per layer (mean over heads and questions)")
    _save(fig, path)


def plot_example(name: str, example: dict[str, Any], path: Path) -> None:
    """Layers x key tokens (passage start to prompt end) of the last prompt token's attention, mean over heads."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, ax = plt.subplots(figsize=(13, 5), constrained_layout=True)
    image = ax.imshow(example["attention"], aspect="auto", cmap="viridis", interpolation="nearest")
    fig.colorbar(image, ax=ax, label="attention from the last prompt token")
    for label, rng, color in (("gold span", example["span"], "red"), ("question", example["question_tokens"], "white")):
        if rng:
            ax.axvspan(rng[0] - 0.5, rng[1] - 0.5, fill=False, edgecolor=color, linewidth=1.5, label=label)
    ax.legend(loc="upper left", fontsize=8)
    ax.set_xlabel(f"token from the passage start (prompt token {example['first_token']} onward)")
    ax.set_ylabel("layer")
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_title(f"{name}: {example['id']} — {example['question']} (gold: {example['answer'] or 'unanswerable'})",
                 fontsize=9)  # fmt: skip
    _save(fig, path)


def _save(fig: Any, path: Path) -> None:
    """savefig to a temporary file in the same folder, then rename: never a half-written PNG."""
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".png")
    os.close(fd)
    try:
        fig.savefig(tmp, dpi=110, format="png")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    finally:
        plt.close(fig)
