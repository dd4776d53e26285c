"""The grid's AI feedback: a learned annotator learns from exactly its cell's human share and annotates the cell's other
questions; annotate.filter_contradictions drops AI records that contradict the gold answers before training."""

import json
from dataclasses import replace
from pathlib import Path

import pytest

from laffi.config import ExperimentConfig, load_run_config
from laffi.data import load_squad, write_squad
from laffi.feedback import llm
from laffi.feedback.reference import annotate as reference_annotate
from laffi.feedback.simulated import simulated_human_feedback
from laffi.files import write_json, write_jsonl
from laffi.grid import Cell
from laffi.pipeline import cells, experiment
from laffi.records import read_feedback
from laffi.report import summary as grid_report
from laffi.rundir import RunDir


def six_questions(excerpt_questions):
    picked = {}
    for q in excerpt_questions:
        picked.setdefault((q.title, q.is_impossible), []).append(q)
    return [q for group in picked.values() for q in group[:1]]  # one of each kind per article: 6 questions


def test_cell_annotator_learns_only_from_the_cells_human_records(excerpt_questions, tiny_model_dir, tmp_path):
    picked = {}
    for q in excerpt_questions:
        picked.setdefault((q.title, q.is_impossible), []).append(q)
    data = tmp_path / "data.json"  # 2 answerable and 2 unanswerable questions of each of the 3 articles; 1 held out
    write_squad(sorted([q for g in picked.values() for q in g[:2]], key=excerpt_questions.index), data)
    cfg = load_run_config(None, [
        f"out_dir={tmp_path / 'exp'}", f"model.name={tiny_model_dir}", "model.dtype=float32", f"data.path={data}",
        "methods=[laffi]", "seeds=[0, 1]", "train_sizes=[4]", "human_fraction=0.5", "example_questions=0",
        "answer.max_new_tokens=3", "train.max_steps=1", "train.lora_r=2", "train.batch_size=2",
        "train.micro_batch_size=2", "annotate.annotator=llm", "annotate.learn_from_examples=true",
        f"annotate.model={tiny_model_dir}", "annotate.dtype=float32", "annotate.learn_max_steps=1",
        "annotate.learn_batch_size=2", "annotate.max_new_tokens=8",
    ], ExperimentConfig)  # fmt: skip
    experiment.run_experiment(cfg, log=lambda m: None, progress=False)
    out = Path(cfg.out_dir)
    train = [q.id for q in load_squad(out / "data" / "train.json")][:4]
    assert not (out / "feedback" / "ai.jsonl").exists()  # every cell has human feedback: no shared AI file
    shares = []
    for seed in (0, 1):
        name = f"n4-seed{seed}-human50"
        split = json.loads((out / "feedback" / f"laffi-{name}.split.json").read_text())
        directory = out / "feedback" / f"annotator-{name}"
        assert split["learned_annotator"] == f"feedback/annotator-{name}"
        info = json.loads((directory / "adapter" / "annotator.json").read_text())
        # The annotator learned from exactly the cell's human share (2 of its 4 questions) ...
        assert info["learned_from"] == split["human_ids"] and len(split["human_ids"]) == 2
        assert set(split["human_ids"]) < set(train) and info["annotators"] == ["simulated-human:paraphrase-v1"]
        # ... and annotated exactly the cell's other questions (a random model's replies are kept as failures).
        records, failures = read_feedback(directory / "ai.jsonl"), llm.read_failures(directory / "ai.failures.jsonl")
        others = sorted(set(train) - set(info["learned_from"]))
        assert sorted([r.id for r in records] + [f.id for f in failures]) == others
        assert split["ai_ids"] == [r.id for r in records]
        shares.append(tuple(split["human_ids"]))
    assert shares[0] != shares[1]  # each seed's cell has its own share, hence its own annotator


def test_filter_contradictions_in_cell_feedback(excerpt_questions, tmp_path):
    qs = six_questions(excerpt_questions)
    preds = {q.id: "" for q in qs}
    human = simulated_human_feedback(qs, preds)
    ai = [reference_annotate(q, preds[q.id]) for q in qs]
    # Two AI records contradict the gold answers: a flipped verdict, and a stated answer that is not a gold one.
    ai[0].verdict = "correct" if ai[0].verdict == "incorrect" else "incorrect"
    answerable = next(i for i, q in enumerate(qs) if q.answers and i != 0)
    ai[answerable].feedback = 'Verdict: incorrect. The right answer is "certainly not this".'
    (tmp_path / "feedback").mkdir()
    files = {"human": tmp_path / "feedback" / "human.jsonl", "ai": tmp_path / "feedback" / "ai.jsonl"}
    write_jsonl(files["human"], human)
    write_jsonl(files["ai"], ai)
    write_json(tmp_path / "answers.json", preds)
    files["answers"] = tmp_path / "answers.json"
    base = ExperimentConfig()
    on = replace(base, annotate=replace(base.annotate, filter_contradictions=True))
    bad = {qs[0].id, qs[answerable].id}
    for fraction in (0.0, 0.5):
        cell = Cell("laffi", 6, 0, fraction)
        kept = read_feedback(cells.cell_feedback(on, RunDir(tmp_path), cell, qs, files, print, False))
        split = json.loads((tmp_path / "feedback" / f"laffi-{cell.name}.split.json").read_text())
        unfiltered = read_feedback(cells.cell_feedback(base, RunDir(tmp_path), cell, qs, files, print, False))
        assert len(unfiltered) == 6 and "filtered_contradictions" not in json.loads(
            (tmp_path / "feedback" / f"laffi-{cell.name}.split.json").read_text())
        ai_kept = [r for r in kept if r.annotator == "reference"]
        # The bad AI records are gone (unless the question took its human record), human records are never filtered.
        assert not bad & {r.id for r in ai_kept}
        assert set(split["filtered_contradictions"]) <= bad and set(split["filtered_contradictions"]) | set(
            split["human_ids"]) >= bad
        assert {r.id for r in kept} == {q.id for q in qs} - (bad - set(split["human_ids"]))
        # The report's view of the AI share: every AI record on a question without human feedback, filtered or not.
        read_feedback(cells.cell_feedback(on, RunDir(tmp_path), cell, qs, files, print, False))
        split_file = tmp_path / "feedback" / f"laffi-{cell.name}.split.json"
        quality = grid_report.ai_feedback_quality(RunDir(tmp_path), cell, json.loads(split_file.read_text()))
        others = [r for r in ai if r.id not in set(split["human_ids"])]
        assert quality["items"] == len(others) and quality["annotators"] == ["reference"]
        assert quality["agreement"] == pytest.approx(sum(r.id != qs[0].id for r in others) / len(others))
        assert quality["contradicts_gold"] == pytest.approx(len(bad - set(split["human_ids"])) / len(others))
        if fraction == 0.5:  # the human share is chosen before filtering: the same with and without the filter
            human_unfiltered = [r.id for r in unfiltered if r.annotator.startswith("simulated-human")]
            assert split["human_ids"] == human_unfiltered and len(human_unfiltered) == 3
