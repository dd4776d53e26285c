"""Command-line options made from the config dataclasses (laffi/cli_options.py): one option per field with its help and
bounds, and the precedence defaults < --config file < --set < options."""

import dataclasses
from pathlib import Path

import typer
from typer.testing import CliRunner

from laffi.cli_options import config_options
from laffi.config import AnswerConfig

app = typer.Typer(pretty_exceptions_enable=False)
seen = {}


@app.command()
@config_options({"model": ["name", "dtype"], "answer": [f.name for f in dataclasses.fields(AnswerConfig)]},
                flags={"model.name": "model", "answer.revise_rounds": "rounds"})
def answer(data: Path = typer.Option(...), cfg=None):  # noqa: B008
    seen["cfg"] = cfg


@app.command()
def other():
    pass


def invoke(*args: str):
    seen.clear()
    return CliRunner().invoke(app, ["answer", "--data", "x", *args])


def test_defaults_come_from_the_dataclasses():
    assert invoke().exit_code == 0
    assert seen["cfg"].answer == AnswerConfig() and seen["cfg"].model.name == "bundled"


def test_every_field_is_an_option_with_its_help():
    text = CliRunner().invoke(app, ["answer", "--help"], env={"COLUMNS": "300"}).output
    for f in dataclasses.fields(AnswerConfig):
        flag = "--rounds" if f.name == "revise_rounds" else "--" + f.name.replace("_", "-")
        assert flag in text, flag
    assert "Questions decoded together" in text and "--config" in text and "--set" in text


def test_file_then_set_then_options(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("answer:\n  shots: 3\n  batch_size: 5\n  workers: 3\nmodel:\n  dtype: float32\n", encoding="utf-8")
    result = invoke("--config", str(cfg), "--set", "answer.batch_size=6", "--set", "answer.workers=4", "--workers", "1",
                    "--require-in-context", "--model", "tiny")  # fmt: skip
    assert result.exit_code == 0, result.output
    a, m = seen["cfg"].answer, seen["cfg"].model
    assert (a.shots, a.batch_size, a.workers, a.require_in_context) == (3, 6, 1, True)
    assert (m.name, m.dtype) == ("tiny", "float32")


def test_a_bad_value_names_its_option():
    from laffi.errors import LaffiError

    result = invoke("--engine", "nope")
    assert isinstance(result.exception, LaffiError)
    assert str(result.exception).startswith("--engine: answer.engine: must be one of")
