"""Where the human budget goes (annotate.human_selection, laffi/feedback/routing.py): the rounds of the uncertain
selection, pinned on the tiny random model; the default ('random') keeps every cache key and mix of before; bad
combinations are one-line errors."""

import json

import pytest

from laffi.config import AnnotateConfig, ExperimentConfig
from laffi.errors import LaffiError
from laffi.feedback import routing
from laffi.feedback.mix import human_share
from laffi.feedback.simulated import simulated_human_feedback
from laffi.pipeline import cells
from laffi.pipeline.cache import stage_key
from laffi.pipeline.shared import annotation_settings


def test_round_sizes():
    assert routing.round_sizes(0, 0.5, 2) == []
    assert routing.round_sizes(10, 0.5, 2) == [5, 3, 2]
    assert routing.round_sizes(25, 0.5, 2) == [12, 7, 6]  # round(12.5) = 12 (banker's rounding, as human_share)
    assert routing.round_sizes(3, 0.1, 3) == [1, 1, 1]  # at least one record in the first round
    assert routing.round_sizes(2, 0.5, 4) == [1, 1]  # empty rounds are left out
    assert routing.round_sizes(4, 1.0, 2) == [4]


def test_rounds_with_a_stub_scorer():
    ids = [f"q{i}" for i in range(10)]
    seen = []

    def score(chosen, k):  # P(incorrect) = i / 10; cut 0.55: q5 and q6 are closest, then q4 and q7
        seen.append((k, sorted(chosen)))
        return {i: int(i[1:]) / 10 for i in ids if i not in chosen}, 0.55

    sel = routing.select_uncertain(ids, 0.6, 3, 0.5, 2, score)
    first = routing.seeded_order(ids, 3)[:3]
    # The first round is the prefix of human_share's seeded shuffle: inside the random selection of the same seed.
    assert set(first) <= set(human_share(ids, 0.6, 3))
    assert sel["budget"] == 6 and [r["how"] for r in sel["rounds"]] == ["random", "uncertain", "uncertain"]
    assert sel["rounds"][0]["ids"] == first
    assert seen[0] == (1, sorted(first)) and len(seen) == 2 and len(seen[1][1]) == 5
    closest = sorted((i for i in ids if i not in first), key=lambda i: (abs(int(i[1:]) / 10 - 0.55), first.count(i)))
    assert sel["rounds"][1]["ids"] == closest[:2] and sel["rounds"][2]["ids"] == closest[2:3]
    assert sel["human_ids"] == [i for i in ids if i in set(first) | set(closest[:3])]
    assert sel["incorrect_prob"] == {i: int(i[1:]) / 10 for i in closest[:3]}


def small_cfg(model, **kw):
    return AnnotateConfig(annotator="llm", learn_from_examples=True, model=str(model), dtype="float32",
                          max_new_tokens=8, batch_size=4, learn_max_steps=2, learn_learning_rate=0.01,
                          learn_lora_r=4, learn_batch_size=2, human_selection="uncertain", **kw)  # fmt: skip


ROUNDS = [  # excerpt_questions[:12], a third answered with the gold answer; seed 0, budget 6: 3 random, then 2 + 1
    ["f5fead9187d56af2bdbfcb921", "6d2fff36bcac0ea0e689a5a31", "cbb48eaacbbbfcccefb7aab7f"],
    ["68cf05f67fd29c6f129fe2fb9", "e688568f9e7fd2700aea3d75d"],
    ["f9183ead5bb93aaa12ea37245"],
]


def tiny_case(excerpt_questions):
    qs = excerpt_questions[:12]
    preds = {q.id: (q.answers[0] if i % 3 == 0 and q.answers else "") for i, q in enumerate(qs)}
    return qs, preds, simulated_human_feedback(qs, preds)


def test_uncertain_rounds_on_the_tiny_model(excerpt_questions, tiny_model_dir, tmp_path):
    qs, preds, human = tiny_case(excerpt_questions)
    cfg = small_cfg(tiny_model_dir, first_round=0.5, selection_rounds=2)
    directory = tmp_path / "rounds"
    sel = cells.uncertain_selection(cfg, qs, preds, human, 0.5, 0, directory, progress=False)
    assert [r["ids"] for r in sel["rounds"]] == ROUNDS
    assert sel["human_ids"] == [q.id for q in qs if any(q.id in r for r in ROUNDS)]
    assert ROUNDS[0] == routing.seeded_order([q.id for q in qs], 0)[:3]  # inside human_share(ids, 0.5, 0)
    for k, rnd in enumerate(sel["rounds"][1:], start=1):
        # Round k's annotator learned from the records of the rounds before it and scored every other question; the
        # round took those closest to its cut, and their P(incorrect) is kept.
        info = json.loads((directory / f"round-{k}" / "adapter" / "annotator.json").read_text())
        before = [i for r in ROUNDS[:k] for i in r]
        assert sorted(info["learned_from"]) == sorted(before) and rnd["learned_from"] == len(before)
        scores = json.loads((directory / f"round-{k}" / "scores.json").read_text())
        assert sorted(scores) == sorted(q.id for q in qs if q.id not in before) and rnd["scored"] == len(scores)
        distance = sorted(abs(p - rnd["cut"]) for p in scores.values())
        assert sorted(abs(scores[i] - rnd["cut"]) for i in rnd["ids"]) == distance[: len(rnd["ids"])]
        assert all(sel["incorrect_prob"][i] == scores[i] for i in rnd["ids"])
    # Cached per round: again, nothing is trained or scored (same files), and the same rounds come out.
    stamps = {p: p.stat().st_mtime_ns for p in directory.rglob("*") if p.is_file()}
    again = cells.uncertain_selection(cfg, qs, preds, human, 0.5, 0, directory, progress=False)
    assert again == sel and stamps == {p: p.stat().st_mtime_ns for p in directory.rglob("*") if p.is_file()}
    # Another seed draws another first round.
    other = cells.uncertain_selection(cfg, qs, preds, human, 0.5, 1, tmp_path / "other", progress=False)
    assert other["rounds"][0]["ids"] == routing.seeded_order([q.id for q in qs], 1)[:3] != ROUNDS[0]


def test_uncertain_cell_feedback(excerpt_questions, tiny_model_dir, tmp_path):
    from dataclasses import replace

    from laffi.files import write_json, write_jsonl
    from laffi.grid import Cell
    from laffi.records import read_feedback
    from laffi.rundir import RunDir

    qs, preds, human = tiny_case(excerpt_questions)
    (tmp_path / "feedback").mkdir()
    files = {"human": tmp_path / "feedback" / "human.jsonl", "answers": tmp_path / "answers.json"}
    write_jsonl(files["human"], human)
    write_json(files["answers"], preds)
    base = ExperimentConfig()
    cfg = replace(base, annotate=small_cfg(tiny_model_dir, first_round=0.5, selection_rounds=2))
    run, cell = RunDir(tmp_path), Cell("laffi", 12, 0, 0.5)
    mix = read_feedback(cells.cell_feedback(cfg, run, cell, qs, files, lambda m: None, False))
    split = json.loads(run.split(cell).read_text())
    selection = json.loads(run.selection(cell).read_text())
    # The selection is saved beside the mix; the mix's human records are exactly the rounds' ids, and the cell's
    # annotator learned from them (its AI records cover the other questions; a random model's replies may fail).
    assert run.selection(cell) == run.mix(cell).with_suffix(".selection.json")
    assert split["human_selection"] == "uncertain"
    assert split["selection"] == "feedback/laffi-n12-seed0-human50.selection.json"
    assert [r["ids"] for r in selection["rounds"]] == ROUNDS and split["human_ids"] == selection["human_ids"]
    assert [r.id for r in mix if r.annotator.startswith("simulated-human")] == selection["human_ids"]
    info = json.loads((run.learned_annotator(cell) / "adapter" / "annotator.json").read_text())
    assert info["learned_from"] == selection["human_ids"]
    assert (run.selection_rounds(cell) / "round-2" / "scores.json").exists()


# cell_feedback with the default (random) selection, computed with the code before annotate.human_selection existed:
# sha256 of the mix and of its .split.json (first 16 hex digits), per human fraction.
RANDOM_MIX = {0.0: ("707c3b661a9ecd8f", "9bff6568773c3493"), 0.25: ("541843946e087239", "6f64775703893ac9"),
              0.5: ("9a78c605a4142f1d", "12644d252c29b950"), 1.0: ("7c826d2d0b2afb52", "ea3904516b540ef8")}


def test_random_keeps_keys_and_mix(excerpt_questions, tmp_path, monkeypatch):
    import hashlib

    from laffi.feedback.reference import annotate as reference_annotate
    from laffi.files import write_json, write_jsonl
    from laffi.grid import Cell
    from laffi.pipeline import cache
    from laffi.rundir import RunDir

    monkeypatch.setattr(cache, "FORMAT", 3)  # the keys below were made with format 3
    learned = ExperimentConfig(annotate=AnnotateConfig(annotator="llm", learn_from_examples=True, verdict="score",
                                                       learn_epochs=5))  # fmt: skip
    assert stage_key(annotate=annotation_settings(ExperimentConfig())) == "5b5cda6250d4f200"
    assert stage_key(annotate=annotation_settings(learned)) == "65e6f30a20288403"
    # The selection settings choose the human share; the annotators' own keys never hold them.
    uncertain = ExperimentConfig(annotate=AnnotateConfig(annotator="llm", learn_from_examples=True, verdict="score",
                                                         learn_epochs=5, human_selection="uncertain",
                                                         selection_rounds=3))  # fmt: skip
    assert annotation_settings(uncertain) == annotation_settings(learned)

    qs, preds, human = tiny_case(excerpt_questions)
    (tmp_path / "feedback").mkdir()
    files = {"human": tmp_path / "feedback" / "human.jsonl", "ai": tmp_path / "feedback" / "ai.jsonl",
             "answers": tmp_path / "answers.json"}  # fmt: skip
    write_jsonl(files["human"], human)
    write_jsonl(files["ai"], [reference_annotate(q, preds[q.id]) for q in qs])
    write_json(files["answers"], preds)
    run = RunDir(tmp_path)
    for fraction, (mix_sha, split_sha) in RANDOM_MIX.items():
        cell = Cell("laffi", 12, 1, fraction)
        out = cells.cell_feedback(ExperimentConfig(), run, cell, qs, files, lambda m: None, False)
        assert hashlib.sha256(out.read_bytes()).hexdigest()[:16] == mix_sha
        assert hashlib.sha256(run.split(cell).read_bytes()).hexdigest()[:16] == split_sha
        assert not run.selection(cell).exists()


@pytest.mark.parametrize("kw, message", [
    ({"human_selection": "uncertain"}, "annotate.human_selection: 'uncertain' needs the learned annotator "
     "(annotate.annotator: llm, annotate.learn_from_examples: true; got annotator 'reference', learn_from_examples "
     "false)"),
    ({"human_selection": "uncertain", "annotator": "llm"}, "annotate.human_selection: 'uncertain' needs the learned "
     "annotator (annotate.annotator: llm, annotate.learn_from_examples: true; got annotator 'llm', "
     "learn_from_examples false)"),
    ({"human_selection": "uncertain", "annotator": "llm", "learn_from_examples": True, "first_round": 0.0},
     "annotate.first_round: the first round's share of the human budget, in (0, 1], got 0.0"),
])  # fmt: skip
def test_bad_combinations_are_one_line(kw, message):
    with pytest.raises(LaffiError) as e:
        AnnotateConfig(**kw)
    assert str(e.value) == message


def test_bad_combination_from_the_cli(tmp_path, capsys):
    from laffi.cli import main

    with pytest.raises(SystemExit) as e:
        main(["experiment", "configs/hybrid.yaml", "--set", "annotate.learn_from_examples=false", "--set",
              "annotate.human_selection=uncertain", "--set", f"out_dir={tmp_path / 'x'}"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "annotate.human_selection: 'uncertain' needs the learned annotator" in err
