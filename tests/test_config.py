"""Config dataclasses: YAML, overrides, and one-line errors."""

import dataclasses
from pathlib import Path

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
        ("train:\n  method: magic\n", "c.yaml: train.method: unknown method 'magic'"),
        ("methods: [base, dpo]\n", "c.yaml: methods: unknown method 'dpo'"),
        ("- a\n- b\n", "c.yaml: expected a mapping"),
        ("train: [1\n", "c.yaml: not valid YAML"),
        ("data: 3\n", "c.yaml: data: expected a mapping"),
        ("epochs: 2\n", "c.yaml: unknown key 'epochs'"),  # top level: one colon after the file name
        # NaN passes every `min`/`max` bound (its comparisons are false); every float field refuses NaN and inf.
        ("train:\n  epochs: .nan\n", "c.yaml: train.epochs: must be a finite number, got nan"),
        ("train:\n  learning_rate: .inf\n", "c.yaml: train.learning_rate: must be a finite number, got inf"),
        ("annotate:\n  correct_threshold: -.inf\n", "c.yaml: annotate.correct_threshold: must be a finite number"),
        ("human_fractions: [0.5, .nan]\n", "c.yaml: human_fractions: must be a finite number"),
        ("train:\n  epochs: 1\n  lora_r: 4\n  epochs: 2\n", "c.yaml: duplicate key 'epochs' (line 4; first at line 2)"),
        ("train: {lora_r: 4, lora_r: 8}\n", "c.yaml: duplicate key 'lora_r' (line 1; first at line 1)"),
        ("methods: []\n", "c.yaml: methods: needs at least one method"),
        ("train: " + "[" * 20_000 + "]" * 20_000 + "\n", "c.yaml: not valid YAML: nested too deeply"),
        ("train:\n  lora_r: " + "9" * 5000 + "\n", "c.yaml: not valid YAML: an integer with too many digits"),
        ("when: 2024-13-45\n", "c.yaml: not valid YAML: month must be in 1..12"),
        ('out_dir: "runs/\\ud800"\n', "c.yaml: out_dir: lone surrogate"),
        ("out_dir:\n  - a\n  - \"b\\nc\"\n", "c.yaml: out_dir: expected str, got list (['a', 'b\\nc'])"),
    ],
)
def test_bad_configs_name_file_and_key(tmp_path, text, message):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    from laffi.grid import check_method

    with pytest.raises(LaffiError) as e:
        config.load_run_config(path, cls=config.ExperimentConfig if "human_fractions" in text else config.RunConfig,
                               check_method=check_method)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_merge_keys_are_not_duplicates(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  <<: {lora_r: 4, epochs: 1}\n  epochs: 3\n")  # `<<` sets defaults on purpose
    cfg = config.load_run_config(path)
    assert cfg.train.lora_r == 4 and cfg.train.epochs == 3.0


@pytest.mark.parametrize("override, message", [
    ("train.epochs=.nan", "--set: train.epochs: must be a finite number"),
    ("methods=[]", "--set: methods: needs at least one method"),
    ("train={lora_r: 1, lora_r: 2}", "--set: train: duplicate key 'lora_r'"),
    ("train.epochs=" + "[" * 5000, "--set: train.epochs: not valid YAML: nested too deeply"),
])  # fmt: skip
def test_bad_overrides(override, message):
    with pytest.raises(LaffiError) as e:
        config.load_run_config(None, [override])
    assert message in str(e.value) and "\n" not in str(e.value)


def test_a_flag_that_sets_a_key_is_named_in_its_error():
    """A command-line flag passed as a labelled override (`laffi train --method`): its error names the flag."""
    with pytest.raises(LaffiError, match=r"^--dtype: model.dtype: must be one of .*got 'float8'$"):
        config.load_run_config(None, [("--dtype", "model.dtype=float8"), "train.epochs=1"])
    cfg = config.load_run_config(None, [("--dtype", "model.dtype=float32"), "model.dtype=float16"])
    assert cfg.model.dtype == "float16"  # a later --set still wins


def test_train_names_the_method_flag(tmp_path, capsys):
    from laffi.cli import main

    data = Path(__file__).parent / "bad_inputs" / "good.json"
    with pytest.raises(SystemExit) as e:
        main(["train", "--method", "dpo", "--data", str(data), "--out", str(tmp_path / "adapter")])
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(err) == 1 and err[0].startswith("laffi: error: --method: "), err
    assert "dpo" in err[0] and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("key", ["train.method=sft", "train.seed=3", "data.train_questions=30"])
def test_an_experiment_refuses_the_run_keys_its_grid_sets(key, tmp_path):
    from laffi.config import ExperimentConfig

    with pytest.raises(LaffiError, match=rf"^--set: {key.split('=')[0]}: not used by `laffi experiment`"):
        config.load_run_config(None, [key], ExperimentConfig)
    path = tmp_path / "exp.yaml"
    section, rest = key.split(".")
    name, value = rest.split("=")
    path.write_text(f"{section}:\n  {name}: {value}\n")
    with pytest.raises(LaffiError, match=rf"exp.yaml: {section}.{name}: not used"):
        config.load_run_config(path, cls=ExperimentConfig)
    config.load_run_config(path)  # `laffi run` uses it
