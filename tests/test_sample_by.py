"""`data.sample_by` in the experiment's split stage: 'question' (the default) draws the training questions as it always
did, under the same cache key; 'passage' takes whole passages (laffi.data.sample_training)."""

from __future__ import annotations

import random
from dataclasses import asdict

import pytest

from laffi.config import DataConfig, ExperimentConfig, load_run_config
from laffi.data import bundled_data_path, load_squad
from laffi.errors import LaffiError
from laffi.files import read_json
from laffi.pipeline.cache import marker, stage_key
from laffi.pipeline.shared import data_hash, split_stage, train_and_eval
from laffi.rundir import RunDir


def _split(tmp_path, name, **data):
    cfg = ExperimentConfig(out_dir=str(tmp_path / name), train_sizes=[12, 20], data=DataConfig(**data))
    train_file, eval_file = split_stage(cfg, RunDir(tmp_path / name), log=lambda m: None)
    return cfg, load_squad(train_file), read_json(marker(eval_file))["key"]


def test_sample_by_question_is_the_default_seeded_sample(tmp_path):
    cfg, sample, key = _split(tmp_path, "q")
    assert cfg.data.sample_by == "question"
    train_all, _ = train_and_eval(cfg, load_squad(bundled_data_path()))
    assert [q.id for q in sample] == [q.id for q in random.Random(0).sample(train_all, 20)]
    settings = {**asdict(cfg.data), "train_questions": 20}  # every data setting, the largest size sampled
    assert key == stage_key(data=data_hash("bundled"), settings=settings, eval_data=None)


def test_sample_by_passage_takes_whole_passages(tmp_path):
    cfg, sample, key = _split(tmp_path, "p", sample_by="passage")
    assert key != _split(tmp_path, "q")[2]  # another sample, another key
    train_all, _ = train_and_eval(cfg, load_squad(bundled_data_path()))
    per_passage = {}
    for q in train_all:
        per_passage.setdefault(q.context, set()).add(q.id)
    assert len(sample) == 20 and len({q.id for q in sample}) == 20
    runs = [q.context for n, q in enumerate(sample) if n == 0 or sample[n - 1].context != q.context]
    assert len(runs) == len(set(runs))  # each passage's questions together
    for context in runs[:-1]:  # every passage whole but the last, which is cut to fit
        assert {q.id for q in sample if q.context == context} == per_passage[context]
    assert len(runs) < len({q.context for q in _split(tmp_path, "q")[1]})  # fewer passages than question by question


def test_sample_by_is_a_checked_setting(tmp_path):
    assert load_run_config(None, ["data.sample_by=passage"], ExperimentConfig).data.sample_by == "passage"
    with pytest.raises(LaffiError, match="sample_by"):
        load_run_config(None, ["data.sample_by=article"], ExperimentConfig)
