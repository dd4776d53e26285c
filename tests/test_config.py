"""Config dataclasses: YAML, overrides, and one-line errors."""

import dataclasses

import pytest

from laffi import config
from laffi.errors import LaffiError


def test_every_field_has_help():
    for cls in [*config.STAGES.values(), config.RunConfig]:
        for f in dataclasses.fields(cls):
            assert f.metadata.get("help"), f"{cls.__name__}.{f.name} has no help"


def test_yaml_and_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("out_dir: runs/x\nmethods: [base, sft]\ntrain:\n  epochs: 3\n  learning_rate: 1\n")
    cfg = config.load_run_config(path, ["train.lora_r=4", "data.train_questions=50", "answer.require_in_context=true"])
    assert cfg.out_dir == "runs/x" and cfg.methods == ["base", "sft"]
    assert cfg.train.epochs == 3.0 and cfg.train.learning_rate == 1.0 and cfg.train.lora_r == 4
    assert cfg.data.train_questions == 50 and cfg.answer.require_in_context is True


def test_shipped_configs_load():
    from pathlib import Path

    shipped = sorted((Path(__file__).parents[1] / "configs").glob("*.yaml"))
    assert {"demo.yaml", "pool.yaml", "paper.yaml", "demo-grid.yaml"} <= {p.name for p in shipped}
    for path in shipped:
        # A config with grid keys is an experiment config; every other one is a run config.
        grid = "seeds" in path.read_text(encoding="utf-8")
        config.load_run_config(path, cls=config.ExperimentConfig if grid else config.RunConfig)


@pytest.mark.parametrize(
    "text, message",
    [
        ("train:\n  epoch: 1\n", "c.yaml: train: unknown key 'epoch'"),
        ("train:\n  lora_r: many\n", "c.yaml: train.lora_r: expected int"),
        ("answer:\n  shots: 7\n", "c.yaml: answer.shots: must be <= 4"),
        ("train:\n  method: magic\n", "c.yaml: train.method: must be one of"),
        ("methods: [base, dpo]\n", "c.yaml: methods: unknown method 'dpo'"),
        ("- a\n- b\n", "c.yaml: expected a mapping"),
        ("train: [1\n", "c.yaml: not valid YAML"),
        ("data: 3\n", "c.yaml: data: expected a mapping"),
    ],
)
def test_bad_configs_name_file_and_key(tmp_path, text, message):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(LaffiError) as e:
        config.load_run_config(path)
    assert message in str(e.value) and "\n" not in str(e.value)
