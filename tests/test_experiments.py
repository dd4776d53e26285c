"""`laffi run` on the tiny random model: every stage, the results table, and the stage cache."""

import json

import pytest

from laffi.config import load_run_config
from laffi.pipeline.run import run_pipeline


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
    ])  # fmt: skip


def test_run_writes_every_stage_and_caches(run_cfg, tmp_path):
    logs = []
    summary = run_pipeline(run_cfg, log=logs.append, progress=False)
    run = tmp_path / "run"
    assert summary["train_questions"] == 4 and summary["eval_questions"] == 2
    assert set(summary["train_articles"]).isdisjoint(summary["eval_articles"])
    assert list(summary["scores"]) == ["abstain", "base", "sft", "laffi", "laffi+sft", "laffi+revise"]
    rev = summary["revision"]["laffi+revise"]
    assert rev["questions"] == 2 and rev["changed"] >= rev["helped"] + rev["hurt"]
    assert sum(rev["verdicts_first_round"].values()) == 2 and rev["questions_per_second_with_revision"] > 0
    assert not (run / "laffi+revise" / "adapter").exists()  # it answers with the laffi adapter
    # Revision starts from the laffi row's answers instead of generating them again.
    revisions = [json.loads(line) for line in (run / "laffi+revise" / "eval_answers.revisions.jsonl").open()]
    laffi_first = json.loads((run / "laffi" / "eval_answers.json").read_text())
    assert {r["id"]: r["first_answer"] for r in revisions} == laffi_first
    timing = json.loads((run / "laffi+revise" / "eval_answers.timing.json").read_text())
    assert timing["first_answers_from"].endswith("laffi/eval_answers.generations.jsonl")
    # The table's numbers are the scores of the files on disk.
    from laffi.pipeline import stages

    for method in ["base", "sft", "laffi", "laffi+sft", "laffi+revise"]:
        again = stages.score(run / "data" / "eval.json", run / method / "eval_answers.json")
        assert again == summary["scores"][method]
    stats = summary["statistics"]
    assert set(stats["f1_ci95"]) == set(summary["scores"])
    for method, (lo, hi) in stats["f1_ci95"].items():
        assert lo <= summary["scores"][method]["f1"] <= hi
    assert "laffi vs sft" in stats["paired"] and "sft vs abstain" in stats["paired"]
    assert stats["paired"]["base vs abstain"]["mean_diff"] == pytest.approx(
        summary["scores"]["base"]["f1"] - summary["scores"]["abstain"]["f1"])
    abstain = summary["scores"]["abstain"]
    assert (abstain["exact"], abstain["HasAns_f1"], abstain["NoAns_f1"]) == (50.0, 0.0, 100.0)
    assert json.loads((run / "results.json").read_text()) == summary
    table = (run / "results.md").read_text()
    assert "| abstain (every question) |" in table and "| laffi+sft |" in table
    # The span-only table re-parses the same raw generations with the extractive rule.
    from laffi.data import load_squad
    from laffi.metrics import squad_v2_scores
    from laffi.prompts import parse_answer

    eval_qs = {q.id: q for q in load_squad(run / "data" / "eval.json")}
    gens = [json.loads(line) for line in (run / "sft" / "eval_answers.generations.jsonl").read_text().splitlines()]
    reparsed = {g["id"]: parse_answer(g["raw"], eval_qs[g["id"]].context, True) for g in gens}
    assert summary["span_only_scores"]["sft"] == squad_v2_scores(list(eval_qs.values()), reparsed)
    assert "laffi+revise" not in summary["span_only_scores"]
    feedback = [json.loads(line) for line in (run / "feedback" / "train.jsonl").read_text().splitlines()]
    assert len(feedback) == 4

    stamps = {p: p.stat().st_mtime_ns for p in run.rglob("*") if p.is_file() and p.name != "config.yaml"}
    logs.clear()
    assert run_pipeline(run_cfg, log=logs.append, progress=False) == summary
    rewritten = ("results.json", "results.md")
    changed = [p for p, t in stamps.items() if p.stat().st_mtime_ns != t and p.name not in rewritten]
    assert changed == [] and any("up to date" in m for m in logs)


def test_changed_setting_reruns_only_what_depends_on_it(run_cfg, tmp_path):
    run_pipeline(run_cfg, log=lambda m: None, progress=False)
    run = tmp_path / "run"
    base_answers = (run / "base" / "eval_answers.json").stat().st_mtime_ns
    sft_adapter = (run / "sft" / "adapter" / "adapter_model.safetensors").stat().st_mtime_ns
    run_cfg.annotate.correct_threshold = 0.5  # changes the feedback, so the laffi adapters, not sft
    logs = []
    run_pipeline(run_cfg, log=logs.append, progress=False)
    assert (run / "base" / "eval_answers.json").stat().st_mtime_ns == base_answers
    assert (run / "sft" / "adapter" / "adapter_model.safetensors").stat().st_mtime_ns == sft_adapter
    assert any(m.startswith("train laffi:") for m in logs)


def test_answer_stage_resumes_only_its_own_partial_state(run_cfg, tmp_path):
    from laffi.pipeline.run import marker
    from laffi.records import Generation, JsonlAppender, read_json, write_json

    run_cfg.methods = ["base"]
    run_pipeline(run_cfg, log=lambda m: None, progress=False)
    out = tmp_path / "run" / "base" / "eval_answers.json"
    key = read_json(marker(out))["key"]
    qid = next(iter(json.loads(out.read_text())))

    def interrupted(with_key: str, answer: str) -> dict:
        out.unlink()
        write_json(marker(out), {"key": with_key, "done": False})
        with JsonlAppender(out.with_name(".eval_answers.json.partial.jsonl")) as app:
            app.append(Generation(id=qid, raw=answer, answer=answer))
        run_pipeline(run_cfg, log=lambda m: None, progress=False)
        return json.loads(out.read_text())

    assert interrupted(key, "KEPT")[qid] == "KEPT"  # same inputs: the finished answer is reused
    assert interrupted("other-settings", "STALE")[qid] != "STALE"  # other inputs: partial state is discarded
    assert list(out.parent.glob(".eval_answers.json.partial*")) == []


@pytest.mark.parametrize("field,old,other", [("workers", 1, 3), ("draft_tokens", 0, 3)])
def test_decoding_settings_enter_the_answer_key_except_at_their_old_behaviour(run_cfg, tmp_path, field, old, other):
    """answer.workers and answer.draft_tokens change bf16 rounding (which rows decode together; tokens checked per
    step): each value has its own answers, except that the behaviour from before the setting existed (1 worker, one
    token per step) keeps the keys of runs made then."""
    from dataclasses import asdict

    from laffi.pipeline.run import file_hash, marker, stage_key
    from laffi.records import read_json

    run_cfg.methods = ["base"]
    out = tmp_path / "run" / "base" / "eval_answers.json"
    keys = {}
    for value in (old, other, old):
        setattr(run_cfg.answer, field, value)
        run_pipeline(run_cfg, log=lambda m: None, progress=False)
        keys.setdefault(value, read_json(marker(out))["key"])
        assert read_json(marker(out))["key"] == keys[value]
    assert keys[old] != keys[other]
    # At the old behaviour the key is the one made before the setting existed: the answer settings without it.
    settings = asdict(run_cfg.answer)
    for k in ("revise_rounds", "feedback_max_new_tokens", "engine", field):
        settings.pop(k)
    data = tmp_path / "run" / "data" / "eval.json"
    assert keys[old] == stage_key(data=file_hash(data), model=asdict(run_cfg.model), answer=settings, adapter=None,
                                  first=None)  # fmt: skip
