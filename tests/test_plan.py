"""`laffi experiment --plan`: the counts are the run's own, the memory plan of a 7B model fits an 80 GB GPU at the
shipped settings, and planning makes nothing."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from laffi.config import ExperimentConfig, load_run_config
from laffi.pipeline.plan import plan_grid

ROOT = Path(__file__).resolve().parents[1]
POOL = ROOT.parent / "shared" / "data" / "squad_v2" / "squad_v2_pool.json"


def test_planned_steps_and_tokens_are_those_the_run_trains(tiny_model_dir, grid_data, tmp_path):
    from laffi.experiment import run_and_report

    data = grid_data(3)
    cfg = load_run_config(None, [
        f"out_dir={tmp_path / 'exp'}", f"model.name={tiny_model_dir}", "model.dtype=float32", f"data.path={data}",
        "methods=[base, sft, laffi]", "seeds=[0]", "train_sizes=[3, 6]", "example_questions=0",
        "answer.max_new_tokens=2", "answer.workers=1", "train.epochs=1", "train.lora_r=2", "train.batch_size=2",
        "train.micro_batch_size=2", "data.calibration_questions=0",
    ], ExperimentConfig)  # fmt: skip
    plan = plan_grid(cfg, "here", probe=False, log=lambda m: None)
    assert not (tmp_path / "exp").exists()  # planning makes nothing
    run_and_report(cfg, log=lambda m: None, progress=False)
    by_cell = {c.cell: c for c in plan.cells}
    trained = [c for c in by_cell if c != "base"]
    assert trained == ["sft/n3-seed0", "sft/n6-seed0", "laffi/n3-seed0-human0", "laffi/n6-seed0-human0"]
    for cell in trained:
        info = json.loads((tmp_path / "exp" / "cells" / cell / "adapter" / "laffi_train.json").read_text())
        planned = by_cell[cell]
        assert (planned.examples, planned.steps) == (info["examples"], info["steps"])
        if cell.startswith("sft"):  # exact: no generated data in its examples
            assert planned.exact and planned.computed_tokens == info["tokens_computed"]
            assert planned.example_tokens == info["tokens"]  # one epoch: every example once
        else:  # feedback on answers the run had not made yet: counted with stand-in feedback
            assert not planned.exact
    assert by_cell["base"].steps == 0 and by_cell["base"].questions == plan.cells[1].questions
    # laffi's feedback judges the base model's answers on the largest training set: one answering row outside the cells
    (answers,) = plan.stages
    assert answers.questions == len(json.loads((tmp_path / "exp" / "base" / "train_answers.json").read_text())) == 6


def test_the_plan_counts_the_headroom_probe_and_names_what_it_leaves_out(tiny_model_dir, grid_data, tmp_path):
    data = grid_data(3)
    common = [f"out_dir={tmp_path / 'exp'}", f"model.name={tiny_model_dir}", "model.dtype=float32",
              f"data.path={data}", "seeds=[0]", "train_sizes=[3, 6]", "example_questions=0"]  # fmt: skip
    sft_only = plan_grid(load_run_config(None, [*common, "methods=[base, sft]", "headroom=true"], ExperimentConfig),
                         "here", probe=False, log=lambda m: None)  # fmt: skip
    assert sft_only.stages == []  # no cell takes feedback: no training answers, nothing to probe
    assert sft_only.notes[-1] == "Not counted: model loads."
    hybrid = plan_grid(load_run_config(None, [*common, "methods=[base, laffi]", "headroom=true", "human_fraction=0.5",
                                              "annotate.annotator=llm", "attention_questions=2"], ExperimentConfig),
                       "here", probe=False, log=lambda m: None)  # fmt: skip
    assert [(s.cell, s.questions) for s in hybrid.stages] == [
        ("(base model on the training questions)", 6),
        ("(headroom probe, ai feedback)", 24),
        ("(headroom probe, human feedback)", 24),
        ("(headroom probe, n3-seed0-human50 records)", 12),
        ("(headroom probe, n6-seed0-human50 records)", 24),
    ]
    assert hybrid.notes[-1] == "Not counted: LLM annotation, attention analysis, model loads."
    assert not (tmp_path / "exp").exists()


@pytest.mark.skipif(not POOL.exists(), reason="needs ../shared/data")
def test_a_7b_llama_at_the_shipped_settings_fits_an_80gb_gpu():
    from transformers import LlamaConfig

    from laffi.models import load_tokenizer

    cfg = load_run_config(ROOT / "configs" / "paper.yaml", [f"data.path={POOL}"], ExperimentConfig)
    tokenizer = load_tokenizer(cfg.model.name)
    seven_b = LlamaConfig(vocab_size=len(tokenizer), hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                          num_attention_heads=32, num_key_value_heads=32, max_position_embeddings=4096)  # fmt: skip
    plan = plan_grid(cfg, "h100", probe=False, log=lambda m: None, model_config=seven_b)
    assert 6.5e9 < plan.parameters < 7e9 and plan.lora_parameters == 32 * 16 * (4 * 8192 + 2 * 15104 + 15104)
    trained = [c for c in plan.cells if c.steps]
    assert trained and max(c.peak_gib for c in trained) < 80
    assert min(c.peak_gib for c in trained) > 12.5  # at least the bf16 weights (6.7e9 x 2 bytes)
    assert all(c.train_seconds > 0 and c.answer_seconds > 0 for c in trained)


@pytest.mark.skipif(not POOL.exists(), reason="needs ../shared/data")
def test_plan_on_the_command_line_prints_the_cells_and_makes_nothing(tmp_path):
    out = tmp_path / "paper"
    result = subprocess.run([sys.executable, "-m", "laffi", "experiment", str(ROOT / "configs" / "paper.yaml"),
                             "--plan", "--no-probe", "--set", f"out_dir={out}", "--set", f"data.path={POOL}"],
                            capture_output=True, text=True, timeout=300, cwd=tmp_path)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "| sft/n100-seed0 | 100 | 26 |" in result.stdout and "Total: 476 optimizer steps" in result.stdout
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == []


def test_plan_shape_is_a_transformers_config(tmp_path):
    from laffi.errors import LaffiError
    from laffi.pipeline.plan import model_shape

    config = model_shape(ROOT / "configs" / "shapes" / "llama-2-7b.json")
    assert (config.model_type, config.hidden_size, config.num_hidden_layers) == ("llama", 4096, 32)
    bad = tmp_path / "bad.json"
    bad.write_text('{"hidden_size": 8}')
    with pytest.raises(LaffiError, match="not a transformers config"):
        model_shape(bad)


def test_sdft_is_planned_with_its_sampling_and_teacher_passes(tmp_path, tiny_model_dir, grid_data):
    """sdft cells count the positions its step computes beyond the student's prompt (`Method.step_positions`): each
    example's sampling, completion and teacher pass, at the longest completion."""
    from laffi import methods
    from laffi.config import ExperimentConfig, load_run_config
    from laffi.data import load_squad, sample_training
    from laffi.feedback.reference import annotate
    from laffi.models import load_tokenizer
    from laffi.pipeline.plan import plan_grid
    from laffi.pipeline.shared import train_and_eval

    settings = [f"out_dir={tmp_path / 'p'}", f"model.name={tiny_model_dir}", "model.dtype=float32",
                f"data.path={grid_data(2)}", "seeds=[0]", "train_sizes=[4]", "train.batch_size=2",
                "train.micro_batch_size=2", "train.sdft_max_completion_length=5", "train.epochs=2",
                "train.shared_prefix=false"]  # fmt: skip
    plan = plan_grid(load_run_config(None, [*settings, "methods=[sdft]"], ExperimentConfig), probe=False,
                     log=lambda m: None)  # fmt: skip
    (cell,) = plan.cells
    tokenizer = load_tokenizer(str(tiny_model_dir))

    cfg = load_run_config(None, [*settings, "methods=[sdft]"], ExperimentConfig)
    train_all, _ = train_and_eval(cfg, load_squad(grid_data(2)))
    questions = sample_training(train_all, 4, cfg.data.split_seed, cfg.data.sample_by)
    examples = methods.build_examples("sdft", questions, [annotate(q, "") for q in questions], tokenizer, 2, 0)
    m = methods.get("sdft")
    extra = sum(m.step_positions(e, tokenizer, cfg.train) for e in examples)
    assert cell.computed_tokens == cell.example_tokens + 2 * extra  # two epochs
    assert extra > 4 * 3 * 5
