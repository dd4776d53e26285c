"""The feedback-headroom probe (laffi/feedback/headroom.py) on the tiny random model: each condition's prompt is
pinned, H.json's dicts are the official script's on the files written, a question without a record is listed and
skipped, a resumed probe equals an uninterrupted one, and feedback on other answers is refused."""

import json

import pytest

from laffi import prompts
from laffi.config import AnswerConfig, ModelConfig
from laffi.errors import LaffiError
from laffi.feedback import headroom
from laffi.feedback.reference import annotate as reference
from laffi.files import write_json, write_jsonl
from laffi.pipeline import stages
from laffi.records import Question

RECORD = headroom._EXAMPLE


def test_each_condition_shows_its_feedback():
    assert {c: headroom.condition_feedback(c, RECORD) for c in headroom.GENERATED} == {
        "no_feedback": "(none)",
        "verdict_only": "Verdict: incorrect.",
        "no_answer_sentence": 'Verdict: incorrect. "1931" is wrong. The passage says: "The bridge was opened in 1932."',
        "feedback": RECORD.feedback,
    }


def test_the_prompt_is_the_refinement_prompt_with_the_first_answer(excerpt_questions):
    q = excerpt_questions[0]
    user = headroom.condition_prompt("verdict_only", q, RECORD, None)
    assert user == prompts.render(prompts.refine_messages(q, "1931", "Verdict: incorrect."))
    assert "Your answer: 1931\n\nFeedback: Verdict: incorrect." in user


def test_the_qa_layout_is_the_qa_prompt_with_its_shots_and_the_first_answer(excerpt_questions):
    q = excerpt_questions[0]
    user = headroom.condition_prompt("no_feedback", q, RECORD, None, "qa", 2)
    assert user == prompts.render(prompts.qa_revise_messages(q, 2, "1931", "(none)"))
    assert user.startswith(prompts.render(prompts.qa_messages(q, 2)).removesuffix("Assistant:").rstrip("\n"))
    assert "Your answer: 1931\n\nFeedback: (none)\n\nAnswer the question again" in user


def test_the_probe_key_names_its_layout_and_keeps_the_refinement_prompts():
    """The 'refinement' probe's key text is what the probes made before the layout setting existed (their caches stay
    valid); 'qa' names its template and its shots."""
    from laffi.pipeline.stages import prompts_version

    assert prompts_version() == prompts_version("refinement", 2) == "refine-v1; no feedback: (none)"
    assert prompts_version("qa", 2) == "qa-revise-v1/qa-v1 (2 shots); no feedback: (none)"
    assert prompts_version("qa", 0) != prompts_version("qa", 2)


@pytest.mark.parametrize("text, expected", [
    ('Verdict: incorrect. Wrong. The right answer is "y". Then more.', "Verdict: incorrect. Wrong. Then more."),
    ("Verdict: correct. Abstaining is right. The right answer is unanswerable.",
     "Verdict: correct. Abstaining is right."),
    ('The right answer is ""self" peptides".', ""),
    ("Verdict: incorrect. No answer stated.", "Verdict: incorrect. No answer stated."),
])  # fmt: skip
def test_without_right_answer(text, expected):
    assert prompts.without_right_answer(text) == expected
    assert prompts.parse_feedback(prompts.without_right_answer(text))[1] is None


def _inputs(tmp_path, excerpt_questions, small_squad):
    from laffi.data import load_squad

    questions = load_squad(small_squad)
    preds = {q.id: ("" if i % 3 else q.context.split()[0]) for i, q in enumerate(questions)}
    records = [reference(q, preds[q.id]) for q in questions[:-2]]  # the last two get no record
    write_json(tmp_path / "preds.json", preds)
    write_jsonl(tmp_path / "fb.jsonl", records)
    return questions, records


def _run(tmp_path, questions, tiny_model_dir, small_squad, out):
    return stages.headroom(questions, tmp_path / "preds.json", tmp_path / "fb.jsonl", out,
                           ModelConfig(str(tiny_model_dir), "float32", "cpu"),
                           AnswerConfig(max_new_tokens=4, batch_size=2, workers=1), progress=False,
                           data_file=small_squad)  # fmt: skip


def test_probe_writes_official_scores_skips_questions_without_a_record_and_resumes(
        tmp_path, excerpt_questions, small_squad, tiny_model_dir, monkeypatch):  # fmt: skip
    questions, records = _inputs(tmp_path, excerpt_questions, small_squad)
    out = tmp_path / "H.json"
    result = _run(tmp_path, questions, tiny_model_dir, small_squad, out)
    assert result["questions"] == len(records) and result["skipped"] == [q.id for q in questions[-2:]]
    for c in headroom.CONDITIONS:
        path = headroom.condition_path(out, c)
        na = path.with_suffix(".na_prob.json")
        probed = {q.id for q in questions[:-2]}
        assert set(json.loads(path.read_text())) == probed
        official = stages.score(_subset(tmp_path, small_squad, probed), path, na if na.exists() else None)
        assert result["conditions"][c]["scores"] == official
    assert result["conditions"]["first"]["scores"]["f1"] == stages.score(
        _subset(tmp_path, small_squad, {q.id for q in questions[:-2]}), tmp_path / "preds.json")["f1"]
    h = result["headroom"]
    f1 = {c: result["conditions"][c]["scores"]["f1"] for c in headroom.CONDITIONS}
    assert h["f1"] == pytest.approx(f1["feedback"] - f1["no_feedback"])
    assert json.loads(out.read_text()) == json.loads(json.dumps(result))

    # Interrupted in the middle of the 'feedback' condition, then run again: the same files and H.json.
    again = tmp_path / "again" / "H.json"
    again.parent.mkdir()
    from laffi.engines import generation

    real = generation.generate

    def stop_after_one_batch(model, tokenizer, texts, settings, on_batch=None, **kw):
        def once(indices, outputs):
            on_batch(indices, outputs)
            if texts and "The right answer is" in texts[0]:
                raise KeyboardInterrupt

        return real(model, tokenizer, texts, settings, on_batch=once, **kw)

    monkeypatch.setattr(generation, "generate", stop_after_one_batch)
    with pytest.raises(KeyboardInterrupt):
        _run(tmp_path, questions, tiny_model_dir, small_squad, again)
    partial = again.with_name(".H.feedback.json.partial.jsonl")
    assert partial.exists() and 0 < len(partial.read_text().splitlines()) < len(records)
    monkeypatch.setattr(generation, "generate", real)
    resumed = _run(tmp_path, questions, tiny_model_dir, small_squad, again)
    assert resumed == result and not partial.exists()
    for c in headroom.CONDITIONS:
        assert headroom.condition_path(again, c).read_text() == headroom.condition_path(out, c).read_text()


def _subset(tmp_path, small_squad, ids):
    from laffi.data import load_squad, write_squad

    path = tmp_path / f"subset-{len(ids)}.json"
    write_squad([q for q in load_squad(small_squad) if q.id in ids], path)
    return path


def test_feedback_on_other_answers_is_refused(tmp_path, excerpt_questions, small_squad, tiny_model_dir):
    questions, records = _inputs(tmp_path, excerpt_questions, small_squad)
    records[0].predicted_answer = "something else"
    write_jsonl(tmp_path / "fb.jsonl", records)
    with pytest.raises(LaffiError, match="judges the answer 'something else'.*feedback on other answers"):
        _run(tmp_path, questions, tiny_model_dir, small_squad, tmp_path / "H.json")
    assert not (tmp_path / "H.json").exists()


def test_the_command_prints_the_table_and_refuses_bad_input_in_one_line(tmp_path, excerpt_questions, small_squad,
                                                                       tiny_model_dir):  # fmt: skip
    import subprocess
    import sys

    _inputs(tmp_path, excerpt_questions, small_squad)
    args = [sys.executable, "-m", "laffi", "headroom", "--data", str(small_squad), "--predictions", "preds.json",
            "--feedback", "fb.jsonl", "--model", str(tiny_model_dir), "--max-new-tokens", "3", "--no-progress"]
    done = subprocess.run([*args, "--out", "H.json"], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "| feedback |" in done.stdout and "Headroom (feedback - no_feedback)" in done.stdout
    assert "skipped 2 questions without a feedback record" in done.stderr
    before = (tmp_path / "preds.json").read_bytes()
    bad = subprocess.run([*args, "--out", "preds.json"], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1
    assert (tmp_path / "preds.json").read_bytes() == before


def test_experiment_probes_each_feedback_source_and_reports_it(tmp_path, tiny_model_dir, grid_data):
    from laffi.config import ExperimentConfig, load_run_config
    from laffi.experiment import run_and_report
    from laffi.pipeline.cache import marker

    data = grid_data(2)
    base = [f"model.name={tiny_model_dir}", "model.dtype=float32", f"data.path={data}", "methods=[base, laffi, coh]",
            "seeds=[0]", "train_sizes=[4]", "human_fraction=0.5", "example_questions=0", "answer.max_new_tokens=3",
            "answer.workers=1", "train.max_steps=1", "train.lora_r=2", "train.batch_size=2",
            "train.micro_batch_size=2", "data.calibration_questions=0"]  # fmt: skip
    off = load_run_config(None, [*base, f"out_dir={tmp_path / 'off'}"], ExperimentConfig)
    on = load_run_config(None, [*base, f"out_dir={tmp_path / 'on'}", "headroom=true"], ExperimentConfig)
    run_and_report(off, log=lambda m: None, progress=False)
    logs = []
    summary = run_and_report(on, log=logs.append, progress=False)
    out = tmp_path / "on"
    for source in ("ai", "human"):
        h = json.loads((out / "headroom" / source / "H.json").read_text())
        assert h["questions"] == 4 and h["skipped"] == []
        assert summary.headroom[source]["f1"] == {c: v["scores"]["f1"] for c, v in h["conditions"].items()}
    assert summary.headroom["human"]["annotators"] == ["simulated-human:paraphrase-v1"]
    assert "## Feedback headroom" in (out / "results.md").read_text()
    # The laffi cell trained on a 50 % share: its own records have a probe, and the gain table reads it.
    mixes = json.loads((out / "headroom" / "mixes.json").read_text())
    # coh's cell trains on the same records under its own file name: one probe for both
    assert (out / "feedback" / "coh-n4-seed0-human50.jsonl").read_bytes() == \
        (out / "feedback" / "laffi-n4-seed0-human50.jsonl").read_bytes()
    assert mixes == {"laffi-n4-seed0-human50": "laffi-n4-seed0-human50",
                     "coh-n4-seed0-human50": "laffi-n4-seed0-human50"}
    assert not (out / "headroom" / "coh-n4-seed0-human50").exists()
    mix = json.loads((out / "headroom" / "laffi-n4-seed0-human50" / "H.json").read_text())
    assert mix["questions"] == 4 and "laffi-n4-seed0-human50" in summary.headroom
    row, coh = summary.gain_vs_headroom
    assert (row["method"], row["size"], row["source"]) == ("laffi", 4, "50 % human + ai")
    assert (coh["method"], coh["headroom"]) == ("coh", row["headroom"])
    assert row["headroom"] == pytest.approx(mix["headroom"]["f1"])
    assert row["feedback_vs_first"] == pytest.approx(100 * mix["conditions"]["feedback"]["vs_first"]["mean_diff"])
    assert "| laffi | 4 | 1 | 50 % human + ai |" in (out / "results.md").read_text()
    assert "## Feedback headroom" not in (tmp_path / "off" / "results.md").read_text()
    # The probe is a stage of its own: no other stage's key changes when it is on.
    for stage in ("base/train_answers.json", "cells/base/eval_answers.json", "cells/laffi/n4-seed0-human50/adapter"):
        assert json.loads(marker(out / stage).read_text())["key"] == \
            json.loads(marker(tmp_path / "off" / stage).read_text())["key"]
    # Cached: a second run makes nothing.
    logs.clear()
    run_and_report(on, log=logs.append, progress=False)
    assert not [m for m in logs if m.startswith("headroom:")]


def test_gain_over_base_is_set_beside_the_headroom_of_the_feedback_trained_on():
    from laffi.report.render import gain_table
    from laffi.report.summary import gain_vs_headroom

    def g(method, size, fraction):
        return {"method": method, "size": size, "human_fraction": fraction, "seeds": [0, 1]}

    groups = [g("base", 0, None), g("base (calibrated)", 0, None), g("sft", 4, None), g("sdft", 4, 0.0),
              g("laffi", 4, 1.0), g("laffi+sft", 4, 0.5), g("sdft (calibrated)", 4, 0.0)]
    test = {"mean_diff": 2.5, "ci_low": -1.0, "ci_high": 6.0, "p_value": 0.2}
    paired = {"n=4": {f"{m} vs base": test for m in ("sft", "sdft", "laffi", "laffi+sft")}}
    probe = {"headroom": {"f1": 12.0, "ci_low": 0.08, "ci_high": 0.16, "p_value": 0.001},
             "feedback_vs_first": {"mean_diff": 0.05, "ci_low": -0.01, "ci_high": 0.11, "p_value": 0.1}}
    rows = gain_vs_headroom(groups, paired, {"ai": probe, "human": {**probe, "headroom": {**probe["headroom"],
                                                                                          "f1": -3.0}}})
    # sft reads no feedback, laffi+sft's mixed share has no probe, calibrated rows are left out
    assert [(r["method"], r["source"], r["headroom"], r["gain"]) for r in rows] == [
        ("sdft", "ai", 12.0, 2.5), ("laffi", "human", -3.0, 2.5)]
    assert rows[0]["headroom_ci95"] == [8.0, 16.0] and rows[0]["seeds"] == 2
    assert rows[0]["feedback_vs_first"] == 5.0 and rows[0]["feedback_vs_first_ci95"] == [-1.0, 11.0]
    assert ("| sdft | 4 | 2 | ai | +12.0 (+8.0 to +16.0) | +5.0 (-1.0 to +11.0) | +2.5 (-1.0 to +6.0) | 0.200 |"
            in gain_table(rows))  # fmt: skip
    assert gain_vs_headroom(groups, paired, None) == []
    abstain = {"mean_diff": -6.1, "ci_low": -9.0, "ci_high": -3.4, "p_value": 0.0}  # base vs abstain
    assert gain_table(rows, abstain).splitlines()[2] == \
        "| abstain on every question | - | - | - | - | - | +6.1 (+3.4 to +9.0) | 0.000 |"
    mixed = {("laffi+sft", 4, 0.5): {**probe, "headroom": {**probe["headroom"], "f1": 7.0}}}
    rows = gain_vs_headroom(groups, paired, {"ai": probe}, mixed)
    assert [(r["method"], r["source"], r["headroom"]) for r in rows] == [("sdft", "ai", 12.0),
                                                                          ("laffi+sft", "50 % human + ai", 7.0)]


def test_a_mixed_share_reads_each_seeds_probe_averaged_per_question(tmp_path):
    """Two seeds of a 50 % share, each trained on its own records with its own probe: a question's F1 in each
    condition is the mean over the seeds' probes, as the gain averages the seeds' answers."""
    from laffi.grid import Cell
    from laffi.report.summary import mixed_headroom
    from laffi.rundir import RunDir

    qs = [Question(id=i, title="T", context="The bridge opened in 1932.", question="When?", answers=["1932"],
                   answer_starts=[23]) for i in ("a", "b")]  # fmt: skip
    run = RunDir(tmp_path)
    cells = [Cell("laffi", 2, seed, 0.5) for seed in (0, 1)]
    answers = {  # per seed: first, no_feedback, feedback
        0: {"first": {"a": "x", "b": "x"}, "no_feedback": {"a": "x", "b": "x"}, "feedback": {"a": "1932", "b": "x"}},
        1: {"first": {"a": "x", "b": "x"}, "no_feedback": {"a": "1932", "b": "x"},
            "feedback": {"a": "1932", "b": "1932"}},
    }  # fmt: skip
    for seed, by_condition in answers.items():
        out = run.headroom(f"laffi-n2-seed{seed}-human50")
        out.parent.mkdir(parents=True)
        out.write_text("{}")
        for condition, preds in by_condition.items():
            headroom.condition_path(out, condition).write_text(json.dumps(preds))
    run.headroom_mixes.write_text(json.dumps({f"laffi-n2-seed{s}-human50": f"laffi-n2-seed{s}-human50"
                                              for s in (0, 1)}))  # fmt: skip
    (h,) = mixed_headroom(run, [Cell("base"), *cells], qs).values()
    # feedback: a 1.0, b 0.5; no_feedback: a 0.5, b 0.0; first: 0, 0
    assert h["questions"] == 2 and h["probes"] == ["laffi-n2-seed0-human50", "laffi-n2-seed1-human50"]
    assert h["headroom"]["f1"] == 50.0 and h["headroom"]["mean_diff"] == 0.5
    assert h["feedback_vs_first"]["mean_diff"] == 0.75
    assert mixed_headroom(RunDir(tmp_path / "none"), cells, qs) == {}
