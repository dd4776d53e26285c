"""End to end on the real bundled model: answer -> annotate -> train (a few steps) -> answer with adapter -> score."""

import json

import pytest

from laffi.cli import main

pytestmark = pytest.mark.integration


def test_bundled_model_loop(tmp_path, excerpt_questions):
    from laffi.data import write_squad

    data = tmp_path / "q.json"
    write_squad(excerpt_questions[:8], data)
    preds = tmp_path / "base.json"
    main(["answer", "--data", str(data), "--out", str(preds), "--shots", "2"])
    base = json.loads(preds.read_text())
    assert len(base) == 8
    fb = tmp_path / "fb.jsonl"
    main(["annotate", "--data", str(data), "--predictions", str(preds), "--out", str(fb)])
    adapter = tmp_path / "adapter"
    main(["train", "--method", "laffi+sft", "--data", str(data), "--feedback", str(fb), "--out", str(adapter),
          "--set", "train.max_steps=2", "--set", "train.batch_size=4",
          "--set", "train.micro_batch_size=2"])  # fmt: skip
    log = [json.loads(line) for line in (adapter / "train_log.jsonl").read_text().splitlines()]
    assert len(log) == 2 and all(0 < e["loss"] < 20 for e in log)
    tuned = tmp_path / "tuned.json"
    main(["answer", "--data", str(data), "--out", str(tuned), "--adapter", str(adapter)])
    from laffi.pipeline import stages

    scores = stages.score(data, tuned)
    from laffi.data import load_squad
    from laffi.metrics import squad_v2_scores

    # The score is the official metric of the answers on disk (recomputed here from the file itself).
    assert scores == squad_v2_scores(load_squad(data), json.loads(tuned.read_text())) and scores["total"] == 8
    revised = tmp_path / "revised.json"
    main(["answer", "--data", str(data), "--out", str(revised), "--adapter", str(adapter), "--revise",
          "--limit", "4", "--feedback-max-new-tokens", "48"])  # fmt: skip
    history = [json.loads(line) for line in (tmp_path / "revised.revisions.jsonl").read_text().splitlines()]
    assert len(history) == 4 and all(len(h["feedback"]) == 1 and h["feedback"][0] for h in history)
    final = json.loads(revised.read_text())
    assert [final[h["id"]] for h in history] == [h["final_answer"] for h in history]
