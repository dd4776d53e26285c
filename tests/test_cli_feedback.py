"""The hybrid-feedback commands: annotators add, annotate (simulated-human / export / import), feedback-report,
train --human-feedback --human-fraction."""

import json
import subprocess
import sys

from laffi.cli import main
from laffi.data import load_squad


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "laffi", *map(str, args)], capture_output=True, text=True)


def _preds(small_squad, tmp_path):
    qs = load_squad(small_squad)
    preds = tmp_path / "preds.json"
    preds.write_text(json.dumps({q.id: (q.answers[0] if i % 2 and q.answers else "") for i, q in enumerate(qs)}))
    return qs, preds


def test_annotate_needs_its_files_and_keeps_reference_default(small_squad, tmp_path):
    r = run_cli("annotate", "--predictions", tmp_path / "p.json", "--out", tmp_path / "f.jsonl")
    assert r.returncode == 2 and r.stderr.strip() == "laffi: error: annotate: --data is required"
    r = run_cli("annotate", "--data", small_squad, "--predictions", tmp_path / "p.json", "--out", tmp_path / "f.jsonl",
                "--annotator", "oracle")  # fmt: skip
    assert r.returncode == 2 and "--annotator: annotate.annotator: must be one of" in r.stderr


def test_simulated_human_and_report(small_squad, tmp_path, capsys):
    qs, preds = _preds(small_squad, tmp_path)
    sim, ref = tmp_path / "sim.jsonl", tmp_path / "ref.jsonl"
    main(["annotate", "--data", str(small_squad), "--predictions", str(preds), "--out", str(sim),
          "--annotator", "simulated-human"])  # fmt: skip
    main(["annotate", "--data", str(small_squad), "--predictions", str(preds), "--out", str(ref)])
    capsys.readouterr()
    report = tmp_path / "report.json"
    main(["feedback-report", "--human", str(sim), "--ai", str(ref), "--out", str(report),
          "--filtered-out", str(tmp_path / "kept.jsonl")])  # fmt: skip
    text = capsys.readouterr().out
    assert "The human side is SIMULATED" in text and "verdict agreement: 1.000; Cohen's kappa: 1.000" in text
    rep = json.loads(report.read_text())
    assert rep["both"] == len(qs) and rep["ai_contradicts_gold"] == 0 and rep["ai_parse_failures"] is None
    assert len((tmp_path / "kept.jsonl").read_text().splitlines()) == len(qs)


def test_annotators_export_import(small_squad, tmp_path):
    from laffi.server.store import Store

    qs, preds = _preds(small_squad, tmp_path)
    db = tmp_path / "fb.sqlite"
    r = run_cli("annotators", "add", "ann", "--db", db)
    assert r.returncode == 0 and len(r.stdout.strip()) >= 20
    again = run_cli("annotators", "add", "ann", "--db", db)
    assert again.returncode == 2 and "annotator 'ann' already exists" in again.stderr
    Store(db).add_items(qs, json.loads(preds.read_text()))
    csv_file = tmp_path / "fb.csv"
    csv_file.write_text(f"id,verdict,feedback\n{qs[0].id},incorrect,Not in the passage.\n")
    r = run_cli("annotate", "import", "--db", db, "--file", csv_file, "--annotator", "zoe")
    assert r.returncode == 0, r.stderr
    out = tmp_path / "human.jsonl"
    r = run_cli("annotate", "export", "--db", db, "--out", out)
    assert r.returncode == 0, r.stderr
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(d["id"], d["annotator"], d["verdict"], d["feedback"]) for d in records] == [
        (qs[0].id, "human:zoe", "incorrect", "Not in the passage.")]
    missing = run_cli("annotate", "export", "--db", tmp_path / "none.sqlite", "--out", out)
    assert missing.returncode == 2 and "annotation database not found" in missing.stderr


def test_train_with_human_fraction(small_squad, tiny_model_dir, tmp_path):
    qs, preds = _preds(small_squad, tmp_path)
    sim, ref = tmp_path / "sim.jsonl", tmp_path / "ref.jsonl"
    main(["annotate", "--data", str(small_squad), "--predictions", str(preds), "--out", str(sim),
          "--annotator", "simulated-human"])  # fmt: skip
    main(["annotate", "--data", str(small_squad), "--predictions", str(preds), "--out", str(ref)])
    adapter = tmp_path / "adapter"
    main(["train", "--method", "laffi", "--data", str(small_squad), "--feedback", str(ref), "--human-feedback",
          str(sim), "--human-fraction", "0.25", "--mix-seed", "1", "--out", str(adapter), "--model",
          str(tiny_model_dir), "--dtype", "float32", "--set", "train.max_steps=1",
          "--set", "train.lora_r=2"])  # fmt: skip
    split = json.loads((adapter / "feedback_mix.json").read_text())
    assert (split["questions"], split["human"], split["ai"], split["seed"]) == (12, 3, 9, 1)
    assert split["annotators"] == ["reference", "simulated-human:paraphrase-v1"]
    assert (adapter / "adapter_config.json").exists()


def test_feedback_report_bad_input_is_one_line(tmp_path, small_squad):
    _, preds = _preds(small_squad, tmp_path)
    good = tmp_path / "ref.jsonl"
    main(["annotate", "--data", str(small_squad), "--predictions", str(preds), "--out", str(good)])
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "x"}\n')
    r = run_cli("feedback-report", "--human", good, "--ai", bad)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and "bad.jsonl:1: missing field" in lines[0]
