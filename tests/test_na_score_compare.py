"""The two no-answer scores of a cell that predicts feedback: answering with answer.na_score 'verdict' keeps the
first-token score of the same answers beside it, and the report gives each score's ROC AUC and calibrated F1."""

import json

import pytest

from laffi.config import AnswerConfig, ModelConfig
from laffi.files import read_json
from laffi.grid import Cell
from laffi.metrics import squad_v2_scores
from laffi.pipeline import stages
from laffi.report import summary as report
from laffi.report.render import na_scores_table
from laffi.rundir import RunDir


@pytest.fixture()
def adapter(tiny_model_dir, tmp_path):
    from peft import LoraConfig, get_peft_model

    from laffi.models import load_model

    model = get_peft_model(load_model(str(tiny_model_dir), dtype="float32", trainable=True),
                           LoraConfig(r=2, target_modules="all-linear", init_lora_weights=False))  # fmt: skip
    path = tmp_path / "adapter"
    model.save_pretrained(path)
    return path


def test_verdict_answers_keep_the_first_token_score(tiny_model_dir, excerpt_questions, adapter, tmp_path):
    qs = excerpt_questions[:4]
    model = ModelConfig(name=str(tiny_model_dir), dtype="float32")
    first = AnswerConfig(shots=0, max_new_tokens=3, batch_size=2)
    a, b = tmp_path / "first.json", tmp_path / "verdict.json"
    preds_a = stages.answer(qs, a, model, first, adapter=str(adapter), progress=False)
    preds_b = stages.answer(qs, b, model, AnswerConfig(**{**first.__dict__, "na_score": "verdict"}),
                            adapter=str(adapter), progress=False)  # fmt: skip
    assert preds_a == preds_b and not stages.first_token_na_prob_path(a).exists()
    kept, first_token = read_json(stages.first_token_na_prob_path(b)), read_json(stages.na_prob_path(a))
    assert kept.keys() == first_token.keys() and all(kept[k] == pytest.approx(first_token[k], abs=1e-6) for k in kept)
    assert read_json(stages.na_prob_path(b)) != kept  # the verdict score is another number


def test_report_compares_the_two_scores(excerpt_questions, tmp_path):
    qs = excerpt_questions[:12]
    calibration, eval_qs = qs[:6], qs[6:]
    cell = Cell("laffi", 4, 0, 0.0)
    d = RunDir(tmp_path).cell(cell)
    d.mkdir(parents=True)
    answer = {q.id: "" if i % 3 == 0 else "Rollo" for i, q in enumerate(qs)}
    scores = {"verdict": {q.id: (i * 7 % 10) / 10 for i, q in enumerate(qs)},
              "first_token": {q.id: (i * 3 % 10) / 10 for i, q in enumerate(qs)}}
    for name, subset in (("calibration_answers.json", calibration), ("eval_answers.json", eval_qs)):
        (d / name).write_text(json.dumps({q.id: answer[q.id] for q in subset}))
        stages.na_prob_path(d / name).write_text(json.dumps({q.id: scores["verdict"][q.id] for q in subset}))
        stages.first_token_na_prob_path(d / name).write_text(
            json.dumps({q.id: scores["first_token"][q.id] for q in subset}))
    preds = {q.id: answer[q.id] for q in eval_qs}
    both = report.na_scores_compared(RunDir(tmp_path), cell, eval_qs, calibration, preds)
    assert set(both) == {"verdict", "first_token"}
    for name, got in both.items():
        on_cal = squad_v2_scores(calibration, {q.id: answer[q.id] for q in calibration},
                                 na_probs={q.id: scores[name][q.id] for q in calibration})  # fmt: skip
        official = squad_v2_scores(eval_qs, preds, na_probs={q.id: scores[name][q.id] for q in eval_qs},
                                   na_prob_thresh=on_cal["best_f1_thresh"])  # fmt: skip
        assert got["threshold"] == on_cal["best_f1_thresh"] and got["calibrated_f1"] == official["f1"]
        pairs = [(scores[name][a.id], scores[name][b.id]) for a in eval_qs if a.is_impossible
                 for b in eval_qs if not b.is_impossible]  # fmt: skip
        assert got["auc"] == pytest.approx(sum(1.0 if x > y else 0.5 if x == y else 0.0 for x, y in pairs) / len(pairs))
    table = na_scores_table({cell.path: {"na_scores": both}})
    assert table.count(f"| {cell.path} |") == 2 and "| first_token |" in table
    # A cell without the first-token file is not compared.
    stages.first_token_na_prob_path(d / "eval_answers.json").unlink()
    assert report.na_scores_compared(RunDir(tmp_path), cell, eval_qs, calibration, preds) is None


def test_experiment_with_verdict_scores_compares_them(tiny_model_dir, grid_data, tmp_path):
    # configs/curve.yaml sets answer.na_score: verdict. The base model's answers (its cell and the training answers
    # the feedback is written on) keep the first-token score; the laffi cell gets both, and the report compares them.
    from laffi.config import ExperimentConfig, load_run_config
    from laffi.experiment import run_and_report

    data = grid_data(2)
    cfg = load_run_config(None, [
        f"out_dir={tmp_path / 'exp'}", f"model.name={tiny_model_dir}", "model.dtype=float32", f"data.path={data}",
        "methods=[base, sft, laffi]", "seeds=[0]", "train_sizes=[2]", "example_questions=0", "attention_questions=0",
        "answer.max_new_tokens=3", "answer.na_score=verdict", "train.max_steps=1", "train.lora_r=2",
        "train.batch_size=2", "train.micro_batch_size=2",
    ], ExperimentConfig)  # fmt: skip
    summary = run_and_report(cfg, log=lambda m: None, progress=False)
    out = tmp_path / "exp"
    assert set(summary.cells["laffi/n2-seed0-human0"]["na_scores"]) == {"verdict", "first_token"}
    assert "na_scores" not in summary.cells["base"] and "na_scores" not in summary.cells["sft/n2-seed0"]
    assert not stages.first_token_na_prob_path(out / "base" / "train_answers.json").exists()
    assert "## No-answer scores compared" in (out / "results.md").read_text()
