"""The command line: outputs, exit codes, and one-line errors with no traceback and no output left behind."""

import json
import subprocess
import sys

import pytest

from laffi.cli import main


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "laffi", *map(str, args)], capture_output=True, text=True)


def test_score_prints_official_keys(small_squad, tmp_path, excerpt_questions):
    from laffi.data import load_squad

    qs = load_squad(small_squad)
    preds = {q.id: (q.answers[0] if q.answers else "") for q in qs}
    preds[qs[0].id] = "nothing like it"
    (tmp_path / "p.json").write_text(json.dumps(preds))
    r = run_cli("score", small_squad, tmp_path / "p.json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    n_has = sum(1 for q in qs if q.answers)
    assert out["total"] == len(qs) and out["HasAns_total"] == n_has and out["NoAns_total"] == len(qs) - n_has
    assert out["NoAns_exact"] == 100.0 and out["exact"] == pytest.approx(100.0 * (len(qs) - 1) / len(qs))


@pytest.mark.parametrize(
    "content, message",
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "expected a JSON object"),
        ('{"x": 1}', "answer must be a string"),
    ],
)
def test_score_bad_predictions(small_squad, tmp_path, content, message):
    bad = tmp_path / "bad.json"
    bad.write_text(content)
    r = run_cli("score", small_squad, bad)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "bad.json" in lines[0] and message in lines[0], r.stderr
    assert "Traceback" not in r.stderr


def test_bad_squad_file_is_one_line_exit_2(tmp_path):
    bad = tmp_path / "squad.json"
    bad.write_text('{"version": "v2.0", "data": [{"title": "t", "paragraphs": [{"qas": []}]}]}')
    r = run_cli("score", bad, bad)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "squad.json" in r.stderr


def test_answer_annotate_train_on_tiny_model(small_squad, tiny_model_dir, tmp_path, capsys):
    preds = tmp_path / "preds.json"
    main(["answer", "--data", str(small_squad), "--out", str(preds), "--model", str(tiny_model_dir),
          "--dtype", "float32", "--limit", "5", "--max-new-tokens", "4", "--batch-size", "2"])  # fmt: skip
    answers = json.loads(preds.read_text())
    assert len(answers) == 5 and all(isinstance(v, str) for v in answers.values())
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # partial file removed
    fb = tmp_path / "fb.jsonl"
    main(["annotate", "--data", str(small_squad), "--predictions", str(preds), "--out", str(fb)])
    records = [json.loads(line) for line in fb.read_text().splitlines()]
    assert len(records) == 5 and {r["annotator"] for r in records} == {"reference"}
    adapter = tmp_path / "adapter"
    main(["train", "--method", "laffi+sft", "--data", str(small_squad), "--feedback", str(fb), "--out", str(adapter),
          "--model", str(tiny_model_dir), "--dtype", "float32", "--set", "train.max_steps=2",
          "--set", "train.lora_r=2"])  # fmt: skip
    assert (adapter / "adapter_config.json").exists() and (adapter / "train_log.jsonl").exists()
    preds2 = tmp_path / "preds2.json"
    main(["answer", "--data", str(small_squad), "--out", str(preds2), "--model", str(tiny_model_dir),
          "--adapter", str(adapter), "--dtype", "float32", "--max-new-tokens", "3"])  # fmt: skip
    assert len(json.loads(preds2.read_text())) == 12


def test_annotate_rejects_unknown_prediction_ids(small_squad, tmp_path):
    preds = tmp_path / "p.json"
    preds.write_text('{"no-such-id": "x"}')
    r = run_cli("annotate", "--data", small_squad, "--predictions", preds, "--out", tmp_path / "fb.jsonl")
    assert r.returncode == 2 and "no-such-id" in r.stderr and "unknown question id" in r.stderr
    assert not (tmp_path / "fb.jsonl").exists()


def test_train_rejects_bad_override(small_squad, tmp_path):
    r = run_cli("train", "--method", "sft", "--data", small_squad, "--out", tmp_path / "a", "--set", "train.lr=1")
    assert r.returncode == 2 and "unknown key 'lr'" in r.stderr and not (tmp_path / "a").exists()
    assert r.stderr.startswith("laffi: error: --set: train: unknown key")


@pytest.mark.parametrize("model", ["no-such-org/no-such-model", "/nonexistent/model/dir", "/tmp/missing.gguf"])
def test_unloadable_model_is_one_line_exit_2(small_squad, tmp_path, model):
    r = run_cli("answer", "--data", small_squad, "--out", tmp_path / "p.json", "--model", model, "--limit", "1")
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and model in lines[0], r.stderr
    assert not (tmp_path / "p.json").exists()


def test_revise_reuses_first_answers(small_squad, tiny_model_dir, tmp_path):
    """--first-answers revises the answers of an earlier run: same first answers, no second answering pass."""
    common = ["--data", small_squad, "--model", tiny_model_dir, "--dtype", "float32", "--max-new-tokens", "3"]
    first = tmp_path / "first.json"
    main(["answer", *map(str, common), "--out", str(first), "--generations", str(tmp_path / "first.gen.jsonl")])
    revised = tmp_path / "revised.json"
    main(["answer", *map(str, common), "--out", str(revised), "--revise", "--feedback-max-new-tokens", "4",
          "--first-answers", str(tmp_path / "first.gen.jsonl")])  # fmt: skip
    history = [json.loads(line) for line in (tmp_path / "revised.revisions.jsonl").open()]
    assert {h["id"]: h["first_answer"] for h in history} == json.loads(first.read_text())
    # A generations file that lacks a question is a one-line error naming the file.
    lines = (tmp_path / "first.gen.jsonl").read_text().splitlines()
    (tmp_path / "short.jsonl").write_text("\n".join(lines[1:]) + "\n")
    r = run_cli("answer", *common, "--out", tmp_path / "r2.json", "--revise",
                "--first-answers", tmp_path / "short.jsonl")
    assert r.returncode == 2 and "short.jsonl" in r.stderr and "no first answer" in r.stderr, r.stderr
    assert not (tmp_path / "r2.json").exists()


def test_no_progress_silences_every_bar(small_squad, tiny_model_dir, tmp_path):
    """--no-progress: neither laffi's bars nor transformers' (loading weights) write to stderr."""
    args = ["train", "--method", "sft", "--data", small_squad, "--model", tiny_model_dir, "--dtype", "float32",
            "--set", "train.max_steps=1", "--set", "train.lora_r=2"]  # fmt: skip
    quiet = run_cli(*args, "--out", tmp_path / "quiet", "--no-progress")
    loud = run_cli(*args, "--out", tmp_path / "loud")
    assert quiet.returncode == 0 and loud.returncode == 0, quiet.stderr + loud.stderr
    assert "Loading weights" in loud.stderr and "train:" in loud.stderr  # what the flag is to silence
    assert "Loading weights" not in quiet.stderr and "it/s" not in quiet.stderr and "\r" not in quiet.stderr


def test_experiment_report_only_without_a_run_is_one_line(tmp_path):
    out = tmp_path / "none"
    r = run_cli("experiment", "configs/curve.yaml", "--report-only", "--set", f"out_dir={out}")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip().count("\n") == 0 and "holds no split of this config's data" in r.stderr
    assert not out.exists()
    r = run_cli("experiment", "configs/curve.yaml", "--report-only", "--shard", "0/2", "--set", f"out_dir={out}")
    assert r.returncode == 2
    assert r.stderr.strip() == "laffi: error: --report-only: not with --shard (it makes nothing to share)"
