"""Hostile environments and settings, each through a real `python -m laffi` process: exit code 2, exactly one line on
stderr (`laffi: error: ...`) that names the setting, no traceback, nothing written.

Classes (docs/reliability.md): launcher variables without a launcher or garbage (WORLD_SIZE, RANK, LOCAL_RANK); a
YAML alias bomb; empty paths and an endpoint that is not a URL; a LoRA target module the model lacks; a
100,000-character id, a semicolon CSV, an OSError without an errno, a library's warning before the error line."""

import json
import os
import resource
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

ENV = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR",
                                                           "MASTER_PORT")}  # fmt: skip
ENV.update({"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"})


def laffi(args: list, env: dict | None = None, cwd: Path | None = None, memory: int | None = None,
          timeout: float = 300) -> subprocess.CompletedProcess:  # fmt: skip
    def limit() -> None:
        if memory:
            resource.setrlimit(resource.RLIMIT_AS, (memory, memory))

    return subprocess.run([sys.executable, "-m", "laffi", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env={**ENV, **(env or {})}, cwd=cwd, preexec_fn=limit)  # fmt: skip


def one_error_line(r: subprocess.CompletedProcess, *words: str) -> str:
    lines = r.stderr.splitlines()
    assert r.returncode == 2, r.stderr[-3000:]
    assert len(lines) == 1 and lines[0].startswith("laffi: error: "), r.stderr[-3000:]
    for w in words:
        assert w in lines[0]
    return lines[0]


def train_args(data: Path, model: Path, out: Path, *extra: str) -> list:
    return ["train", "--method", "sft", "--data", data, "--model", model, "--dtype", "float32", "--out", out,
            "--no-progress", "--set", "train.max_steps=1", *extra]  # fmt: skip


# Class 11: WORLD_SIZE / RANK / LOCAL_RANK set without a launcher, or garbage.
@pytest.mark.parametrize("env, words", [
    ({"WORLD_SIZE": "abc"}, ["WORLD_SIZE='abc'", "not a process count"]),
    ({"WORLD_SIZE": "2"}, ["WORLD_SIZE=2", "MASTER_ADDR and MASTER_PORT unset"]),
    ({"WORLD_SIZE": "0"}, ["WORLD_SIZE=0", "at least 1"]),
    ({"RANK": "3"}, ["RANK=3", "not below WORLD_SIZE=1"]),
    ({"LOCAL_RANK": "-1"}, ["LOCAL_RANK='-1'"]),
    ({"WORLD_SIZE": "9" * 5000}, ["WORLD_SIZE='9999", "..."]),
], ids=["garbage", "no-rendezvous", "zero", "rank-too-large", "negative-local-rank", "5000-digits"])  # fmt: skip
def test_launcher_variables_without_a_launcher(env, words, small_squad, tiny_model_dir, tmp_path):
    out = tmp_path / "adapter"
    line = one_error_line(laffi(train_args(small_squad, tiny_model_dir, out), env=env), *words)
    assert "accelerate launch or torchrun" in line and len(line) < 400
    assert not out.exists() and not out.with_name("adapter.partial").exists()


# Class 14: a YAML alias bomb.
def alias_bomb(levels: int = 9) -> str:
    """`levels` lists of 9 aliases of the list before: ~300 bytes standing for 9**levels strings."""
    anchors = ['&a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    anchors += [f"&a{k} [{','.join([f'*a{k - 1}'] * 9)}]" for k in range(1, levels)]
    return f"train: {{target_modules: [{', '.join(anchors)}]}}\n"


def test_a_yaml_alias_bomb_is_refused_in_bounded_memory(tmp_path):
    config = tmp_path / "bomb.yaml"
    config.write_text(alias_bomb())
    assert len(config.read_bytes()) < 500
    r = laffi(["run", config, "--set", f"out_dir={tmp_path / 'run'}"], memory=4 << 30, timeout=120)
    one_error_line(r, str(config), "aliases expand the document past 100000 values")
    assert not (tmp_path / "run").exists()


def test_a_yaml_alias_bomb_in_set_and_a_recursive_alias():
    from laffi.config import load_run_config
    from laffi.errors import LaffiError

    with pytest.raises(LaffiError, match=r"^--set: methods: aliases expand"):
        load_run_config(None, ["methods=" + alias_bomb().split(": ", 1)[1].split(": ", 1)[1].rstrip("}\n")])
    with pytest.raises(LaffiError, match="an alias inside its own anchor"):
        load_run_config(None, ["methods=&x [a, *x]"])
    shared = "defaults: &d {lora_r: 2}\n"  # aliases used as intended stay fine
    from laffi.config import _load_yaml

    assert _load_yaml(shared + "train: *d\nother: [*d, *d]\n")["other"] == [{"lora_r": 2}] * 2


# Class 15: empty paths and an endpoint that is not a URL.
@pytest.mark.parametrize("setting", ["out_dir=", "out_dir=' '", "data.path=", "model.name=", "annotate.model="])
def test_an_empty_path_setting_is_refused(setting, tmp_path):
    config, here = tmp_path / "run.yaml", tmp_path / "here"
    config.write_text("methods: [base]\n")
    here.mkdir()
    r = laffi(["run", config, "--set", setting], cwd=here)
    one_error_line(r, f"--set: {setting.split('=')[0]}: empty")
    assert list(here.iterdir()) == []  # nothing written in the current directory


def test_empty_paths_on_the_command_line(small_squad, tiny_model_dir, tmp_path):
    one_error_line(laffi(train_args(small_squad, "", tmp_path / "a"), cwd=tmp_path), "model.name: empty")
    r = laffi(["answer", "--data", small_squad, "--out", "", "--model", tiny_model_dir], cwd=tmp_path)
    one_error_line(r, "--out")
    r = laffi(["answer", "--data", "", "--out", tmp_path / "p.json", "--model", tiny_model_dir], cwd=tmp_path)
    one_error_line(r)  # typer reads '' as Path('.'): refused as a directory that holds no data
    assert sorted(p.name for p in tmp_path.iterdir()) == ["small.json"]


@pytest.mark.parametrize("url", ["not a url", "ftp://host/v1", "http://", "localhost:8000", "http://h:99999/v1",
                                 "http://h ost/v1"])  # fmt: skip
def test_an_endpoint_that_is_not_a_url(url, small_squad, tmp_path):
    preds = tmp_path / "preds.json"
    preds.write_text("{}")
    r = laffi(["annotate", "--annotator", "llm", "--endpoint", url, "--data", small_squad, "--predictions", preds,
               "--out", tmp_path / "fb.jsonl"])  # fmt: skip
    one_error_line(r, "annotate.endpoint", "http:// or https:// URL")
    assert not (tmp_path / "fb.jsonl").exists()


# Class 16: a LoRA target module the model does not have.
def test_a_target_module_the_model_lacks(small_squad, tiny_model_dir, tmp_path):
    out = tmp_path / "adapter"
    r = laffi(train_args(small_squad, tiny_model_dir, out, "--set", "train.target_modules=q_proj,no_such_module"))
    one_error_line(r, "train.target_modules", "'no_such_module'", "q_proj", "v_proj")
    assert "Traceback" not in r.stderr and not out.exists()
    r = laffi(train_args(small_squad, tiny_model_dir, out, "--set", "train.target_modules=' , '"))
    one_error_line(r, "train.target_modules: no module names")


# Class 17: long values, readable reasons, the separator found, one line means one line.
def test_a_100000_character_id_is_cut_in_the_error_line(small_squad, tiny_model_dir, tmp_path):
    from laffi.data import load_squad
    from laffi.feedback.reference import annotate
    from laffi.records import to_dict

    records = [to_dict(annotate(q, "", 0.8)) for q in load_squad(small_squad)]
    records[0]["id"] = "x" * 100_000
    feedback = tmp_path / "fb.jsonl"
    feedback.write_text("".join(json.dumps(r) + "\n" for r in records))
    args = train_args(small_squad, tiny_model_dir, tmp_path / "a", "--feedback", feedback)
    args[args.index("sft")] = "laffi"
    line = one_error_line(laffi(args), "'xxxx", "...")
    assert len(line) < 500


def test_a_semicolon_csv_names_its_separator(tmp_path, excerpt_questions):
    from laffi.server.store import Store

    db = tmp_path / "fb.sqlite"
    store = Store(db)
    store.add_items(excerpt_questions[:2], {q.id: "" for q in excerpt_questions[:2]})
    store.close()
    csv = tmp_path / "fb.csv"
    csv.write_text(f"id;verdict;feedback\n{excerpt_questions[0].id};correct;fine\n")
    r = laffi(["annotate", "import", "--db", db, "--file", csv, "--annotator", "ann"])
    one_error_line(r, str(csv), "separated by ';'", "id;verdict;feedback")


def run_main(argv: list[str], capsys) -> tuple[int, list[str]]:
    from laffi.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    return exit_info.value.code, capsys.readouterr().err.splitlines()


def test_an_oserror_without_errno_is_said_in_words(monkeypatch, capsys, tmp_path):
    from huggingface_hub.errors import LocalEntryNotFoundError

    from laffi.pipeline import stages

    def fail(*args, **kwargs):
        raise LocalEntryNotFoundError("Cannot find the requested files in the disk cache and outgoing traffic has "
                                      "been disabled.")  # fmt: skip

    monkeypatch.setattr(stages, "score", fail)
    code, lines = run_main(["score", str(tmp_path / "d.json"), str(tmp_path / "p.json")], capsys)
    assert code == 2 and len(lines) == 1
    assert "localentrynotfounderror" not in lines[0].lower() and "downloads are off" in lines[0]


def test_a_librarys_warning_never_precedes_the_error_line(monkeypatch, capsys, tmp_path):
    from laffi.errors import LaffiError
    from laffi.pipeline import stages

    def warn_then(fail: bool):
        def score(*args, **kwargs):
            warnings.warn_explicit("`foo` is deprecated\nand will be removed", FutureWarning,
                                   "/site-packages/somelib/api.py", 12)  # fmt: skip
            if fail:
                raise LaffiError("p.json: 'q1': bad")
            return {"exact": 100.0}

        return score

    monkeypatch.setattr(stages, "score", warn_then(True))
    code, lines = run_main(["score", str(tmp_path / "d.json"), str(tmp_path / "p.json")], capsys)
    assert (code, lines) == (2, ["laffi: error: p.json: 'q1': bad"])
    from laffi.cli import main

    monkeypatch.setattr(stages, "score", warn_then(False))
    main(["score", str(tmp_path / "d.json"), str(tmp_path / "p.json")])  # succeeds: the warning comes last, one line
    assert capsys.readouterr().err.splitlines() == [
        "laffi: warning: `foo` is deprecated and will be removed (FutureWarning, api.py:12)"]
