"""`laffi run` on the tiny random model: the one-cell preset of the experiment, its report and the stage cache."""

import json

import pytest

from laffi.config import load_run_config
from laffi.experiment import run_and_report
from laffi.grid import run_preset
from laffi.pipeline.cache import marker


def run_pipeline(cfg, log=lambda m: None):
    return run_and_report(run_preset(cfg), log=log, progress=False)


@pytest.fixture()
def run_cfg(tmp_path, tiny_model_dir, excerpt_questions):
    from laffi.data import write_squad

    # One answerable and one unanswerable question from each of the three articles; one article is held out.
    picked = {}
    for q in excerpt_questions:
        picked.setdefault((q.title, q.is_impossible), q)
    data = tmp_path / "data.json"
    write_squad(sorted(picked.values(), key=excerpt_questions.index), data)
    return load_run_config(None, [
        f"out_dir={tmp_path / 'run'}", f"model.name={tiny_model_dir}", "model.dtype=float32", f"data.path={data}",
        "methods=[base, sft, laffi, laffi+sft, laffi+revise]", "answer.max_new_tokens=3", "train.max_steps=1",
        "train.lora_r=2", "train.batch_size=2", "train.micro_batch_size=2", "answer.feedback_max_new_tokens=4",
        "data.train_questions=0",
    ])  # fmt: skip


def test_preset_is_one_cell_per_method():
    from laffi.config import RunConfig

    cfg = run_preset(load_run_config(None, ["data.train_questions=30", "train.seed=3"]))
    assert (cfg.seeds, cfg.train_sizes, cfg.human_fraction, cfg.human_fractions) == ([3], [30], 0.0, [])
    assert cfg.methods == RunConfig().methods


def test_run_writes_every_stage_and_caches(run_cfg, tmp_path):
    logs = []
    summary = run_pipeline(run_cfg, log=logs.append)
    run = tmp_path / "run"
    cells = run / "cells"
    assert summary.train_questions == 4 and summary.eval_questions == 2  # train_questions 0: all four
    assert set(summary.train_articles).isdisjoint(summary.eval_articles)
    assert list(summary.cells) == ["base", "sft/n4-seed0", "laffi/n4-seed0-human0", "laffi+sft/n4-seed0-human0",
                                      "laffi+revise/n4-seed0-human0"]  # fmt: skip
    rev = summary.revision["laffi+revise/n4-seed0-human0"]
    assert rev["questions"] == 2 and sum(rev["verdicts_first_round"].values()) == 2
    assert rev["questions_per_second_with_revision"] > 0
    assert not (cells / "laffi+revise" / "n4-seed0-human0" / "adapter").exists()  # it answers with laffi's adapter
    # Revision starts from the laffi cell's answers instead of generating them again.
    revise_dir = cells / "laffi+revise" / "n4-seed0-human0"
    revisions = [json.loads(line) for line in (revise_dir / "eval_answers.revisions.jsonl").open()]
    laffi_first = json.loads((cells / "laffi" / "n4-seed0-human0" / "eval_answers.json").read_text())
    assert {r["id"]: r["first_answer"] for r in revisions} == laffi_first
    changed = [r for r in revisions if r["final_answer"] != r["first_answer"]]
    assert rev["changed"] == len(changed)
    # The table's numbers are the scores of the files on disk.
    from laffi.pipeline import stages

    for path, cell in summary.cells.items():
        assert stages.score(run / "data" / "eval.json", cells / path / "eval_answers.json") == cell["scores"]
    abstain = summary.abstain
    assert (abstain["exact"], abstain["HasAns_f1"], abstain["NoAns_f1"]) == (50.0, 0.0, 100.0)
    assert "laffi vs sft" in summary.paired["n=4"]
    assert json.loads((run / "results.json").read_text()) == json.loads(json.dumps(summary.to_json()))
    table = (run / "results.md").read_text()
    assert "| abstain (every question) |" in table and "| laffi+sft | 4 |" in table
    feedback = [json.loads(line) for line in (run / "feedback" / "ai.jsonl").read_text().splitlines()]
    assert len(feedback) == 4

    stamps = {p: p.stat().st_mtime_ns for p in cells.rglob("*") if p.is_file()}
    logs.clear()
    assert run_pipeline(run_cfg, log=logs.append).cells == summary.cells
    assert stamps == {p: p.stat().st_mtime_ns for p in cells.rglob("*") if p.is_file()}
    assert any("up to date" in m for m in logs)


def test_changed_setting_reruns_only_what_depends_on_it(run_cfg, tmp_path):
    run_cfg.methods = ["base", "sft", "laffi"]
    run_pipeline(run_cfg)
    cells = tmp_path / "run" / "cells"
    base_answers = (cells / "base" / "eval_answers.json").stat().st_mtime_ns
    sft_adapter = (cells / "sft" / "n4-seed0" / "adapter" / "adapter_model.safetensors").stat().st_mtime_ns
    laffi_adapter = cells / "laffi" / "n4-seed0-human0" / "adapter" / "adapter_model.safetensors"
    laffi_time = laffi_adapter.stat().st_mtime_ns
    run_cfg.annotate.correct_threshold = 0.5  # changes the feedback, so the laffi adapter, not sft
    logs = []
    run_pipeline(run_cfg, log=logs.append)
    assert (cells / "base" / "eval_answers.json").stat().st_mtime_ns == base_answers
    assert (cells / "sft" / "n4-seed0" / "adapter" / "adapter_model.safetensors").stat().st_mtime_ns == sft_adapter
    assert laffi_adapter.stat().st_mtime_ns != laffi_time
    assert any(m.startswith("train laffi/") for m in logs)


def test_answer_stage_resumes_only_its_own_partial_state(run_cfg, tmp_path):
    from laffi.files import JsonlAppender, read_json, write_json
    from laffi.records import Generation

    run_cfg.methods = ["base"]
    run_pipeline(run_cfg)
    out = tmp_path / "run" / "cells" / "base" / "eval_answers.json"
    key = read_json(marker(out))["key"]
    qid = next(iter(json.loads(out.read_text())))

    def interrupted(with_key: str, answer: str) -> dict:
        out.unlink()
        write_json(marker(out), {"key": with_key, "done": False})
        with JsonlAppender(out.with_name(".eval_answers.json.partial.jsonl")) as app:
            app.append(Generation(id=qid, raw=answer, answer=answer))
        run_pipeline(run_cfg)
        return json.loads(out.read_text())

    assert interrupted(key, "KEPT")[qid] == "KEPT"  # same inputs: the finished answer is reused
    assert interrupted("other-settings", "STALE")[qid] != "STALE"  # other inputs: partial state is discarded
    assert list(out.parent.glob(".eval_answers.json.partial*")) == []


@pytest.mark.parametrize("field,value", [("workers", 3), ("draft_tokens", 3), ("batch_size", 3)])
def test_decoding_settings_enter_the_answer_key(run_cfg, tmp_path, field, value):
    """Decoding settings change bf16 rounding (which rows decode together, tokens checked per step): each value has
    its own answers; going back to the first value finds its answers again."""
    from laffi.files import read_json

    run_cfg.methods = ["base"]
    out = tmp_path / "run" / "cells" / "base" / "eval_answers.json"
    first = getattr(run_cfg.answer, field)
    keys = []
    for v in (first, value, first):
        setattr(run_cfg.answer, field, v)
        run_pipeline(run_cfg)
        keys.append(read_json(marker(out))["key"])
    assert keys[0] == keys[2] != keys[1]


def test_cache_format_is_part_of_every_key(monkeypatch):
    from laffi.pipeline import cache

    before = cache.stage_key(a=1)
    monkeypatch.setattr(cache, "FORMAT", cache.FORMAT + 1)
    assert cache.stage_key(a=1) != before
