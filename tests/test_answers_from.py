"""`train.answers_from` for laffi and laffi+sft in `laffi run` / `laffi experiment`: the feedback they train on is
written on the answers of another source (the base model with 0 shots, a predictions file, an adapter) instead of the
base model's own answers with the run's prompt; the other methods and the default keep their stages and cache keys
(tiny random model, bundled excerpt)."""

import json
from dataclasses import replace
from pathlib import Path

import pytest

from laffi.config import ExperimentConfig, ModelConfig, TrainConfig, load_run_config
from laffi.data import load_squad, write_squad
from laffi.errors import LaffiError
from laffi.files import read_json
from laffi.grid import Cell
from laffi.methods.common import answers_source
from laffi.pipeline import cells, experiment, shared, stages
from laffi.records import read_feedback, read_predictions
from laffi.rundir import RunDir


def twelve_questions(excerpt_questions):
    """Two answerable and two unanswerable questions of each of the three articles (one is held out)."""
    picked = {}
    for q in excerpt_questions:
        picked.setdefault((q.title, q.is_impossible), []).append(q)
    return sorted([q for g in picked.values() for q in g[:2]], key=excerpt_questions.index)


def config(tmp_path, tiny_model_dir, data, *extra):
    return load_run_config(None, [
        f"out_dir={tmp_path / 'exp'}", f"model.name={tiny_model_dir}", "model.dtype=float32", f"data.path={data}",
        "seeds=[0]", "train_sizes=[4]", "example_questions=0", "answer.max_new_tokens=3", "answer.workers=1",
        "train.max_steps=1", "train.lora_r=2", "train.batch_size=2", "train.micro_batch_size=2", *extra,
    ], ExperimentConfig)  # fmt: skip


def stage_keys(out: Path) -> dict[str, str]:
    """Every finished stage's cache key, by its output path."""
    keys = {}
    for marker in out.rglob(".*.stage.json"):
        state = read_json(marker)
        if state.get("done"):
            keys[str(marker.relative_to(out))] = state["key"]
    return keys


def answered_on(records) -> dict[str, str]:
    return {r.id: r.predicted_answer for r in records}


def test_laffi_cells_train_on_feedback_about_the_base_model_answering_with_0_shots(tmp_path, tiny_model_dir,
                                                                                  excerpt_questions):  # fmt: skip
    data = tmp_path / "data.json"
    write_squad(twelve_questions(excerpt_questions), data)
    default = config(tmp_path, tiny_model_dir, data, "methods=[laffi, coh]", "human_fraction=0.5")
    experiment.run_experiment(default, log=lambda m: None, progress=False)
    out = Path(default.out_dir)
    train = load_squad(out / "data" / "train.json")[:4]
    base = read_predictions(out / "base" / "train_answers.json")
    # The default: every feedback-reading cell's records judge the base model's own answers; nothing else is made.
    assert not (out / "answers_from").exists() and not (out / "feedback" / "answers_from").exists()
    for method in ("laffi", "coh"):
        records = read_feedback(out / "feedback" / f"{method}-n4-seed0-human50.jsonl")
        assert answered_on(records) == {q.id: base[q.id] for q in train}
        split = json.loads((out / "feedback" / f"{method}-n4-seed0-human50.split.json").read_text())
        assert "answers_from" not in split
    laffi_info = out / "cells" / "laffi" / "n4-seed0-human50" / "adapter" / "laffi_train.json"
    assert json.loads(laffi_info.read_text())["config"]["answers_from"] == ""  # the train settings of the cache key
    before = stage_keys(out)

    zero_shot = replace(default, train=replace(default.train, answers_from="base-0shot"))
    logs = []
    experiment.run_experiment(zero_shot, log=logs.append, progress=False)
    zero = read_predictions(out / "answers_from" / "train_answers.json")
    # The base model answering the training questions with 0 shots, with the run's other answer settings.
    direct = stages.answer(load_squad(out / "data" / "train.json"), tmp_path / "zero.json", zero_shot.model,
                           replace(zero_shot.answer, shots=0), progress=False)  # fmt: skip
    assert zero == direct and zero != base
    assert any(m.startswith("answers_from: base-0shot: ") for m in logs)
    # laffi's records, human and AI, judge those answers; the mix of the two works as before (2 and 2 here).
    records = read_feedback(out / "feedback" / "laffi-n4-seed0-human50.jsonl")
    assert answered_on(records) == {q.id: zero[q.id] for q in train}
    assert sorted(r.annotator.split(":")[0] for r in records) == ["reference"] * 2 + ["simulated-human"] * 2
    split = json.loads((out / "feedback" / "laffi-n4-seed0-human50.split.json").read_text())
    assert split["answers_from"] == "base-0shot" and (split["human"], split["ai"]) == (2, 2)
    ai = {r.id: r.feedback for r in read_feedback(out / "feedback" / "answers_from" / "ai.jsonl")}
    assert all(r.feedback == ai[r.id] for r in records if r.annotator == "reference")
    # coh keeps the base model's own answers: its feedback and every stage it depends on are reused as they were.
    assert answered_on(read_feedback(out / "feedback" / "coh-n4-seed0-human50.jsonl")) == {q.id: base[q.id]
                                                                                          for q in train}  # fmt: skip
    after = stage_keys(out)
    changed = {path for path in before if after.get(path) != before[path]}
    assert "cells/laffi/n4-seed0-human50/.adapter.stage.json" in changed
    assert all(path.startswith("cells/laffi/") for path in changed), changed
    assert {"answers_from/.train_answers.json.stage.json", "feedback/answers_from/.ai.jsonl.stage.json",
            "feedback/answers_from/.human.jsonl.stage.json"} <= set(after) - set(before)  # fmt: skip


@pytest.mark.parametrize("kind", ["predictions", "adapter"])
def test_answers_from_a_predictions_file_or_an_adapter(kind, tmp_path, tiny_model_dir, excerpt_questions):
    """Cells that need only the other source's feedback make nothing of the base model's; the records judge exactly
    the file's answers, or the adapter's as `laffi answer --adapter` gives them."""
    train = twelve_questions(excerpt_questions)[:4]
    train_file = tmp_path / "train.json"
    write_squad(train, train_file)
    cfg = config(tmp_path, tiny_model_dir, train_file, "methods=[laffi+sft]")
    model = ModelConfig(str(tiny_model_dir), "float32")
    if kind == "predictions":
        source = tmp_path / "other.json"
        expected = {q.id: f"answer {i}" for i, q in enumerate(train)}
        source.write_text(json.dumps({**expected, "not-a-training-question": "x"}))
    else:
        source = tmp_path / "sft"
        tcfg = TrainConfig(method="sft", max_steps=1, batch_size=2, micro_batch_size=2, lora_r=2, learning_rate=0.5)
        stages.train(train, None, source, model, tcfg, shots=2, progress=False)
        expected = stages.answer(train, tmp_path / "sft.json", model, replace(cfg.answer, revise_rounds=0),
                                 adapter=str(source), progress=False)  # fmt: skip
    cfg = replace(cfg, train=replace(cfg.train, answers_from=str(source)))
    out = RunDir(tmp_path / "exp")
    cell = Cell("laffi+sft", 4, 0, 0.0)
    feedback = shared.feedback_sources(cfg, out, [cell], train, train_file, lambda m: None, False)
    assert set(feedback) == {"answers_from/answers", "answers_from/ai"} and not (out.root / "base").exists()
    records = read_feedback(cells.cell_feedback(cfg, out, cell, train, feedback, lambda m: None, False))
    assert answered_on(records) == expected and {r.annotator for r in records} == {"reference"}
    if kind == "predictions":  # each training question needs an answer: the file must cover them all
        source.write_text(json.dumps({q.id: "x" for q in train[1:]}))
        with pytest.raises(LaffiError, match=f"train.answers_from: .*no answer for training question id "
                                             f"'{train[0].id}' \\(1 of 4 missing\\)"):  # fmt: skip
            shared.feedback_sources(cfg, out, [cell], train, train_file, lambda m: None, False)


def test_answers_from_sources_and_bad_values(tmp_path):
    (tmp_path / "preds.json").write_text("{}")
    (tmp_path / "adapter").mkdir()
    (tmp_path / "adapter" / "adapter_config.json").write_text("{}")
    assert answers_source("base-0shot") == ("base", 0) and answers_source("base-2shots") == ("base", 2)
    assert answers_source(str(tmp_path / "preds.json")) == ("predictions", tmp_path / "preds.json")
    assert answers_source(str(tmp_path / "adapter")) == ("adapter", tmp_path / "adapter")
    for bad, message in [("base-9shot", "0 to 4 shots"), ("base-zeroshot", "no such predictions file"),
                         (str(tmp_path), "not a PEFT adapter directory")]:  # fmt: skip
        with pytest.raises(LaffiError, match=f"train.answers_from: .*{message}"):
            answers_source(bad)


@pytest.mark.parametrize("method, message", [("laffi", "trains on the given --feedback records"),
                                             ("sft", "does not use it")])  # fmt: skip
def test_laffi_train_refuses_answers_from_for_methods_that_train_on_the_given_records(method, message, tmp_path,
                                                                                      excerpt_questions):  # fmt: skip
    from laffi.feedback import reference

    questions = excerpt_questions[:2]
    feedback = [reference.annotate(q, "") for q in questions]
    cfg = TrainConfig(method=method, answers_from="base-0shot")
    with pytest.raises(LaffiError, match=f"^train.answers_from: method '{method}' {message}"):
        stages.train(questions, feedback, tmp_path / "a", ModelConfig("no-such-model"), cfg, shots=0, progress=False)


def test_critique_critiques_the_base_model_with_0_shots(tmp_path, tiny_model_dir, excerpt_questions):
    from laffi.methods.critique import critique_feedback

    questions = excerpt_questions[:3]
    model = ModelConfig(str(tiny_model_dir), "float32")
    records, report = critique_feedback(questions, "base-0shot", tmp_path / "adapter", model, shots=2, progress=False)
    # The run's model without an adapter, on the QA prompt with 0 shots (critique's own decoding settings).
    from laffi import prompts
    from laffi.engines.generation import DecodeSettings, generate
    from laffi.methods.common import MAX_NEW_TOKENS
    from laffi.models import load_model, load_tokenizer

    tok = load_tokenizer(model.name)
    raws = generate(load_model(model.name, "float32"), tok,
                    [prompts.render(prompts.qa_messages(q, 0), tok) for q in questions], DecodeSettings(MAX_NEW_TOKENS))
    expected = {q.id: prompts.parse_answer(raw, q.context) for q, raw in zip(questions, raws, strict=True)}
    assert answered_on(records) == expected
    assert report["summary"]["kind"] == "base" and report["summary"]["answers_from"] == "base-0shot"
