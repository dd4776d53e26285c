"""Device placement, proven without a GPU.

Three kinds of check, each aimed at a bug a CPU-only run cannot show by itself:
- a source check: every tensor factory in the code that feeds a model names its device (or is allow-listed with its
  reason), so nothing is built on the CPU by default while the model sits on a GPU;
- fake CUDA (`torch.cuda.is_available` and friends patched, `Module.to` onto CUDA recorded instead of executed):
  `auto` resolves per device, and every stage that runs a model moves it to the chosen device;
- the meta device: the prefix-cache decoder and a training step run with the model on `meta`, and every tensor the
  model is given must be on `meta` too. A tensor made on the CPU by default is a device error there, as it would be
  on a GPU; shapes are checked by the meta kernels.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from laffi import models
from laffi.errors import LaffiError

ROOT = Path(__file__).resolve().parents[1]

# ------------------------------------------------------------------------------------------------------ source check

# torch functions that make a tensor and take `device=` (the *_like and Tensor.new_* kinds inherit their input's).
FACTORIES = {"tensor", "as_tensor", "zeros", "ones", "full", "empty", "arange", "linspace", "eye", "rand", "randn",
             "randint", "randperm", "tril_indices", "triu_indices", "from_numpy"}  # fmt: skip
# Scanned: the code that makes the tensors a model sees.
SCANNED = ["laffi/engines", "laffi/training", "laffi/attention.py", "laffi/feedback"]
# (file, function, factory): why it may make a CPU tensor.
ALLOWED = {
    ("laffi/training/dropout.py", "forward", "randint"): "FastDropout's CPU path only (a seed for numpy's generator); "
                                                         "on other devices it calls torch's own dropout",
    ("laffi/training/dropout.py", "forward", "from_numpy"): "FastDropout's CPU path only (the mask numpy drew)",
}


def _factory_calls(path: Path) -> list[tuple[str, str, int, bool]]:
    """(function, factory, line, names a device) for each `torch.<factory>(...)` call in `path`. `from_numpy(...)`
    counts as naming one when its result is moved at once (`torch.from_numpy(x).to(device)`)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = []
    moved = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "to" \
                and isinstance(node.func.value, ast.Call):
            moved.add(id(node.func.value))

    def visit(node: ast.AST, function: str) -> None:
        for child in ast.iter_child_nodes(node):
            name = child.name if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)) else function
            if isinstance(child, ast.Call) and isinstance(child.func, ast.Attribute) \
                    and isinstance(child.func.value, ast.Name) and child.func.value.id == "torch" \
                    and child.func.attr in FACTORIES:
                named = any(k.arg == "device" for k in child.keywords) or id(child) in moved
                found.append((function, child.func.attr, child.lineno, named))
            visit(child, name)

    visit(tree, "<module>")
    return found


def _scanned_files() -> list[Path]:
    files = []
    for entry in SCANNED:
        path = ROOT / entry
        files += sorted(path.rglob("*.py")) if path.is_dir() else [path]
    return files


def test_every_tensor_factory_names_its_device():
    unplaced = []
    for path in _scanned_files():
        rel = str(path.relative_to(ROOT))
        for function, factory, line, named in _factory_calls(path):
            if not named and (rel, function, factory) not in ALLOWED:
                unplaced.append(f"{rel}:{line} {function}: torch.{factory}(...) without device=")
    assert not unplaced, "tensors made on the CPU by default:\n" + "\n".join(unplaced)


def test_the_source_check_finds_a_planted_factory(tmp_path):
    planted = tmp_path / "planted.py"
    planted.write_text("import torch\n\ndef f(model):\n    a = torch.zeros(3, device=model.device)\n"
                       "    b = torch.from_numpy(x).to(model.device)\n    return torch.tensor([1, 2])\n")
    assert [(f, k, named) for f, k, _, named in _factory_calls(planted)] == [
        ("f", "zeros", True), ("f", "from_numpy", True), ("f", "tensor", False)]


def test_allow_list_entries_still_exist():
    present = {(str(p.relative_to(ROOT)), f, k) for p in _scanned_files() for f, k, _, _ in _factory_calls(p)}
    assert set(ALLOWED) <= present, "an allow-list entry names code that is gone: remove it"


# --------------------------------------------------------------------------------------------------------- fake CUDA


@pytest.fixture()
def fake_cuda(monkeypatch):
    """One CUDA device that is not there: torch says it is available, and `Module.to` onto CUDA is recorded and
    skipped (the model stays on the CPU, so the stage still runs). Returns the list of recorded moves."""
    moves: list[str] = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)  # auto -> float32: runs on this CPU
    original = torch.nn.Module.to

    def to(self, *args, **kwargs):
        target = kwargs.get("device", args[0] if args else None)
        if target is not None and str(target).startswith("cuda"):
            moves.append(str(target))
            return self
        return original(self, *args, **kwargs)

    monkeypatch.setattr(torch.nn.Module, "to", to)
    return moves


def test_device_auto_resolves_to_the_first_cuda_device(fake_cuda, monkeypatch):
    assert models.resolve_device("auto") == "cuda:0"
    assert models.resolve_device("cuda") == "cuda:0" and models.resolve_device("cpu") == "cpu"
    with pytest.raises(LaffiError, match=r"model.device: 'cuda:1': this machine has 1 CUDA device"):
        models.resolve_device("cuda:1")
    with pytest.raises(LaffiError, match="expected auto, cpu, cuda or cuda:N"):
        models.resolve_device("tpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert models.resolve_device("auto") == "cpu"
    with pytest.raises(LaffiError, match="no CUDA device"):
        models.resolve_device("cuda")


def test_dtype_auto_is_resolved_for_the_device_that_does_the_work(fake_cuda, monkeypatch):
    cpu_bf16 = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert models.resolve_dtype("auto", "cuda:0") == "bfloat16"
    # The same CUDA machine, with the model on its CPU: the CPU's answer, not the GPU's.
    assert models.resolve_dtype("auto", "cpu") == ("bfloat16" if cpu_bf16 else "float32")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert models.resolve_dtype("auto", "cuda:0") == "float32"


def _questions(excerpt_questions, n=4):
    answerable = [q for q in excerpt_questions if not q.is_impossible]
    impossible = [q for q in excerpt_questions if q.is_impossible]
    return answerable[: n // 2] + impossible[: n - n // 2]


def test_answer_and_revise_move_the_model_to_the_device(fake_cuda, tiny_model_dir, excerpt_questions, tmp_path):
    from laffi.config import AnswerConfig, ModelConfig
    from laffi.pipeline import stages

    qs = _questions(excerpt_questions)
    model = ModelConfig(name=str(tiny_model_dir), dtype="auto", device="auto")
    stages.answer(qs, tmp_path / "a.json", model, AnswerConfig(max_new_tokens=3, workers=1), progress=False)
    assert fake_cuda == ["cuda:0"]
    adapter = _tiny_adapter(tiny_model_dir, excerpt_questions, tmp_path)
    fake_cuda.clear()
    revise = AnswerConfig(max_new_tokens=3, feedback_max_new_tokens=4, workers=1, revise_rounds=1,
                          na_score="verdict")  # fmt: skip
    stages.answer(qs, tmp_path / "r.json", model, revise, adapter=str(adapter), progress=False)
    assert fake_cuda == ["cuda:0"]  # one model, loaded once, answers, scores and revises there


def _tiny_adapter(tiny_model_dir, excerpt_questions, tmp_path) -> Path:
    """An sft adapter of the tiny model, trained for one step on the CPU (device "cpu": no move)."""
    from laffi.config import ModelConfig, TrainConfig
    from laffi.pipeline import stages

    out = tmp_path / "adapter"
    stages.train(_questions(excerpt_questions), None, out, ModelConfig(str(tiny_model_dir), "float32", "cpu"),
                 TrainConfig(method="sft", max_steps=1, lora_r=2, batch_size=2, micro_batch_size=2), 0,
                 progress=False)  # fmt: skip
    return out


def test_training_moves_the_model_to_the_device(fake_cuda, tiny_model_dir, excerpt_questions, tmp_path):
    from laffi.config import ModelConfig, TrainConfig
    from laffi.pipeline import stages

    info = stages.train(_questions(excerpt_questions), None, tmp_path / "sft", ModelConfig(str(tiny_model_dir)),
                        TrainConfig(method="sft", max_steps=1, lora_r=2, batch_size=2, micro_batch_size=2,
                                    save_steps=100), 0, progress=False)  # fmt: skip
    assert info["steps"] == 1 and fake_cuda == ["cuda:0"]


def test_float16_training_is_refused_in_one_line(tiny_model_dir, excerpt_questions, tmp_path):
    from laffi.config import ModelConfig, TrainConfig
    from laffi.pipeline import stages

    with pytest.raises(LaffiError, match="dtype float16 is not supported for training"):
        stages.train(_questions(excerpt_questions), None, tmp_path / "sft",
                     ModelConfig(str(tiny_model_dir), "float16", "cpu"),
                     TrainConfig(method="sft", max_steps=1, lora_r=2, batch_size=2, micro_batch_size=2), 0,
                     progress=False)  # fmt: skip
    assert not (tmp_path / "sft").exists()


@pytest.mark.parametrize("kind", ["few-shot", "scored", "learned"])
def test_local_annotators_move_their_model_to_the_device(kind, fake_cuda, tiny_model_dir, excerpt_questions,
                                                         tmp_path):  # fmt: skip
    from laffi.config import AnnotateConfig
    from laffi.feedback.simulated import simulated_human_feedback
    from laffi.files import write_jsonl
    from laffi.pipeline import stages

    qs = _questions(excerpt_questions, 6)
    preds = {q.id: "" for q in qs}
    examples = tmp_path / "human.jsonl"
    write_jsonl(examples, simulated_human_feedback(qs[:2] + qs[-2:], preds))
    extra = {"few-shot": {}, "scored": {"verdict": "score"},
             "learned": {"learn_from_examples": True, "learn_max_steps": 1, "learn_lora_r": 2,
                         "learn_batch_size": 2}}[kind]  # fmt: skip
    cfg = AnnotateConfig(annotator="llm", model=str(tiny_model_dir), shots=2, max_new_tokens=4, batch_size=4,
                         examples=str(examples), **extra)  # fmt: skip
    stages.annotate(qs, preds, tmp_path / "ai.jsonl", cfg, progress=False)
    # learned: the training loop's model, then the annotating model with the adapter merged.
    assert fake_cuda == (["cuda:0", "cuda:0"] if kind == "learned" else ["cuda:0"])


def test_attention_moves_each_model_to_the_device(fake_cuda, tiny_model_dir, small_squad, tmp_path):
    from laffi import attention

    attention.attention_report(str(tiny_model_dir), small_squad, {"base": None}, 2, tmp_path / "att",
                               progress=False, device=models.resolve_device("auto"))  # fmt: skip
    assert fake_cuda == ["cuda:0"]


def test_a_grid_cell_runs_every_stage_on_the_device(fake_cuda, tiny_model_dir, grid_data, tmp_path):
    from laffi.config import ExperimentConfig, load_run_config
    from laffi.experiment import run_and_report

    data = grid_data(2)
    cfg = load_run_config(None, [
        f"out_dir={tmp_path / 'exp'}", f"model.name={tiny_model_dir}", f"data.path={data}", "methods=[base, sft]",
        "seeds=[0]", "train_sizes=[2]", "example_questions=0", "answer.max_new_tokens=3", "answer.workers=1",
        "train.max_steps=1", "train.lora_r=2", "train.batch_size=2", "train.micro_batch_size=2",
        "data.calibration_questions=0",
    ], ExperimentConfig)  # fmt: skip
    run_and_report(cfg, log=lambda m: None, progress=False)
    import yaml

    written = yaml.safe_load((tmp_path / "exp" / "config.yaml").read_text())
    assert written["model"]["device"] == "cuda:0" and written["model"]["dtype"] == "float32"
    # Every model the cell loads goes to the device: the base model's evaluation answers, sft's training, its answers.
    assert fake_cuda == ["cuda:0"] * 3


# ------------------------------------------------------------------------------------------------------ meta device


def _meta_model(tiny_model_dir, attention: str = "sdpa"):
    """The tiny model's architecture on `meta`. Training uses eager attention here: SDPA's mask code reads a value
    (`.item()`) to decide whether it may skip the mask, which meta tensors do not have."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(tiny_model_dir)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, attn_implementation=attention)
    return model.eval()


def _tensors(value):
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from _tensors(v)
    elif isinstance(value, dict):
        for v in value.values():
            yield from _tensors(v)
    elif hasattr(value, "layers"):  # a transformers cache
        for layer in value.layers:
            yield from _tensors([getattr(layer, "keys", None), getattr(layer, "values", None)])


def test_the_prefix_cache_decoder_feeds_the_model_on_its_device(tiny_model_dir, excerpt_questions):
    """The decoder with the model on `meta`: every input of every forward pass (ids, masks, positions, the cache and
    the shared prefix) must be on `meta`. The logits are replaced by real (zero) CPU logits so that the decoder can
    read its choices; everything else stays on `meta` and is shape-checked by its kernels."""
    from laffi import prompts
    from laffi.engines import prefix_cache
    from laffi.models import load_tokenizer

    model = _meta_model(tiny_model_dir)
    seen: list[str] = []

    def check(module, args, kwargs):
        for t in _tensors([args, kwargs]):
            seen.append(str(t.device))
            assert t.device.type == "meta", f"a {tuple(t.shape)} input on {t.device}, the model is on meta"

    def real_logits(module, args, kwargs, output):
        output.logits = torch.zeros(output.logits.shape, dtype=torch.float32)
        return output

    model.register_forward_pre_hook(check, with_kwargs=True)
    model.register_forward_hook(real_logits, with_kwargs=True)
    tokenizer = load_tokenizer(str(tiny_model_dir))
    qs = _questions(excerpt_questions, 6)
    encoded = [tokenizer(prompts.render(prompts.qa_messages(q, 2), tokenizer), add_special_tokens=False)["input_ids"]
               for q in qs]  # fmt: skip
    out = prefix_cache.greedy_ids(model, encoded, 3, 4, [tokenizer.eos_token_id], tokenizer.pad_token_id,
                                  draft_tokens=2)  # fmt: skip
    assert out is not None and [len(o) for o in out] == [3] * len(qs)  # zero logits: token 0, never a stop
    assert seen and set(seen) == {"meta"}


@pytest.mark.parametrize("packed", [False, True])
def test_a_training_step_runs_with_the_model_on_meta(packed, tiny_model_dir, excerpt_questions):
    """A training micro-batch's forward and backward with the LoRA model on `meta`: the collated batch must follow
    the model there (a CPU batch is a device error, as it would be beside a GPU model)."""
    from peft import get_peft_model

    from laffi.config import TrainConfig
    from laffi.methods import build_examples
    from laffi.models import load_tokenizer
    from laffi.training.examples import tokenize_example
    from laffi.training.loop import lora_config
    from laffi.training.loss import completion_loss_sum
    from laffi.training.packing import group_keys, pack, packed_loss

    tokenizer = load_tokenizer(str(tiny_model_dir))
    qs = [q for q in excerpt_questions if q.context == excerpt_questions[0].context][:3]
    examples = build_examples("sft", qs, None, tokenizer, 0, 0)
    rows = [tokenize_example(e, tokenizer, 512) for e in examples]
    model = get_peft_model(_meta_model(tiny_model_dir, "eager"), lora_config(TrainConfig(lora_r=2)))
    # The loss picks its positions with a boolean mask (data-dependent on meta: counted as all true here).
    from torch.fx.experimental import _config as fx_config

    with fx_config.patch(meta_nonzero_assume_all_nonzero=True):
        if packed:
            keys = group_keys(examples)
            assert len(set(keys)) == 1  # one passage: its questions share one packed row
            loss = packed_loss(model, [pack(rows, list(range(len(rows))))], tokenizer.pad_token_id)
        else:
            loss = completion_loss_sum(model, rows, tokenizer.pad_token_id)
    assert loss.device.type == "meta" and loss.shape == ()
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert grads and all(g is not None and g.device.type == "meta" for g in grads)


# --------------------------------------------------------------------------------------------------------- the CLI


def _laffi(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "CUDA_VISIBLE_DEVICES": ""}
    return subprocess.run([sys.executable, "-m", "laffi", *args], capture_output=True, text=True, cwd=cwd, env=env,
                          timeout=300)  # fmt: skip


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error of a machine without CUDA")
@pytest.mark.parametrize("command", [
    ["answer", "--data", "DATA", "--out", "out.json", "--device", "cuda"],
    ["train", "--method", "sft", "--data", "DATA", "--out", "adapter", "--device", "cuda:0"],
    ["attention", "--data", "DATA", "--out", "att", "--device", "cuda"],
    ["run", "CONFIG", "--set", "model.device=cuda"],
    ["annotate", "--data", "DATA", "--predictions", "PREDS", "--out", "f.jsonl", "--annotator", "llm", "--device",
     "cuda"],
])  # fmt: skip
def test_cuda_on_a_machine_without_it_is_one_line_and_writes_nothing(command, tiny_model_dir, small_squad, tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text(f"out_dir: {tmp_path / 'run'}\nmodel:\n  name: {tiny_model_dir}\ndata:\n  path: {small_squad}\n")
    preds = tmp_path / "preds.json"
    preds.write_text(json.dumps({q["id"]: "" for a in json.loads(small_squad.read_text())["data"]
                                 for p in a["paragraphs"] for q in p["qas"]}))  # fmt: skip
    names = {"DATA": str(small_squad), "CONFIG": str(config), "PREDS": str(preds)}
    args = [names.get(a, a) for a in command]
    before = sorted(p.name for p in tmp_path.iterdir())
    result = _laffi(*args, "--model", str(tiny_model_dir), cwd=tmp_path) if command[0] != "run" else \
        _laffi(*args, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "no CUDA device" in lines[0], result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_device_cpu_answers_as_the_default(tiny_model_dir, small_squad, tmp_path):
    common = ["answer", "--data", str(small_squad), "--model", str(tiny_model_dir), "--max-new-tokens", "4",
              "--no-progress"]  # fmt: skip
    default = _laffi(*common, "--out", "default.json", cwd=tmp_path)
    cpu = _laffi(*common, "--out", "cpu.json", "--device", "cpu", cwd=tmp_path)
    assert default.returncode == 0 and cpu.returncode == 0, default.stderr + cpu.stderr
    assert json.loads((tmp_path / "cpu.json").read_text()) == json.loads((tmp_path / "default.json").read_text())
    assert json.loads((tmp_path / "cpu.na_prob.json").read_text()) == \
        json.loads((tmp_path / "default.na_prob.json").read_text())


def test_packing_falls_back_to_one_example_per_row_where_attention_takes_no_mask(capsys):
    from types import SimpleNamespace

    from laffi.training.loop import packs_with_masks

    def model(implementation):
        config = SimpleNamespace(_attn_implementation=implementation)
        return SimpleNamespace(get_base_model=lambda: SimpleNamespace(config=config))

    assert packs_with_masks(model("sdpa")) and packs_with_masks(model("eager"))
    assert capsys.readouterr().err == ""
    assert not packs_with_masks(model("flash_attention_2"))
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "training one example per row" in lines[0]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error of a machine without CUDA")
def test_gpu_check_without_a_gpu_is_one_line():
    result = subprocess.run(["bash", str(ROOT / "bench" / "gpu_check.sh")], capture_output=True, text=True,
                            timeout=120, env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})  # fmt: skip
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.strip().splitlines() == [result.stderr.strip()] and "no CUDA device" in result.stderr
