"""data.eval_path: train on all of one data set, evaluate on another (no article split); overlaps refused."""

from __future__ import annotations

import pytest

from laffi.config import DataConfig, ExperimentConfig, load_run_config
from laffi.data import articles, load_squad, write_squad
from laffi.errors import LaffiError
from laffi.pipeline.experiment import with_sizes_resolved
from laffi.pipeline.shared import split_stage
from laffi.rundir import RunDir


def _by_title(questions):
    out: dict[str, list] = {}
    for q in questions:
        out.setdefault(q.title, []).append(q)
    return out


@pytest.fixture()
def two_files(tmp_path, excerpt_questions):
    titles = _by_title(excerpt_questions)
    names = list(titles)
    train = [q for t in names[:2] for q in titles[t]]
    evaluation = titles[names[2]]
    write_squad(train, tmp_path / "train.json")
    write_squad(evaluation, tmp_path / "eval.json")
    return tmp_path, train, evaluation


def test_eval_path_takes_every_question_of_each_file(two_files):
    tmp, train, evaluation = two_files
    cfg = ExperimentConfig(out_dir=str(tmp / "run"), train_sizes=[0],
                           data=DataConfig(path=str(tmp / "train.json"), eval_path=str(tmp / "eval.json"),
                                           calibration_questions=0))  # fmt: skip
    cfg = with_sizes_resolved(cfg, load_squad(tmp / "train.json"))
    assert cfg.train_sizes == [len(train)]  # size 0: every training question (no article is held out)
    train_file, eval_file = split_stage(cfg, RunDir(tmp / "run"), log=lambda m: None)
    assert sorted(q.id for q in load_squad(train_file)) == sorted(q.id for q in train)
    assert load_squad(eval_file) == evaluation
    assert articles(load_squad(eval_file)) == articles(evaluation)


def test_eval_path_reads_datasets_too(two_files):
    datasets = pytest.importorskip("datasets")
    tmp, train, evaluation = two_files
    columns = {"id": [q.id for q in evaluation], "title": [q.title for q in evaluation],
               "context": [q.context for q in evaluation], "question": [q.question for q in evaluation],
               "answers": [{"text": q.answers, "answer_start": q.answer_starts} for q in evaluation]}  # fmt: skip
    datasets.Dataset.from_dict(columns).save_to_disk(str(tmp / "eval-ds"))
    cfg = ExperimentConfig(out_dir=str(tmp / "run"), train_sizes=[10],
                           data=DataConfig(path=str(tmp / "train.json"), eval_path=str(tmp / "eval-ds")))  # fmt: skip
    _, eval_file = split_stage(cfg, RunDir(tmp / "run"), log=lambda m: None)
    assert load_squad(eval_file) == evaluation


def test_overlapping_ids_or_titles_are_refused(two_files):
    tmp, train, evaluation = two_files
    write_squad(train[:5] + evaluation, tmp / "overlap.json")
    data = DataConfig(path=str(tmp / "train.json"), eval_path=str(tmp / "overlap.json"))
    cfg = ExperimentConfig(out_dir=str(tmp / "run"), train_sizes=[10], data=data)
    with pytest.raises(LaffiError, match=r"data.eval_path: 5 question id\(s\) also in data.path"):
        split_stage(cfg, RunDir(tmp / "run"), log=lambda m: None)
    from dataclasses import replace

    renamed = [replace(q, id=q.id + "-x") for q in train[:5]] + evaluation
    write_squad(renamed, tmp / "overlap.json")
    with pytest.raises(LaffiError, match=r"1 article title\(s\) also in data.path"):
        split_stage(cfg, RunDir(tmp / "run"), log=lambda m: None)


def test_eval_path_is_a_config_key(two_files):
    tmp, _, _ = two_files
    cfg = load_run_config(None, [f"data.eval_path={tmp / 'eval.json'}"], ExperimentConfig)
    assert cfg.data.eval_path == str(tmp / "eval.json")
