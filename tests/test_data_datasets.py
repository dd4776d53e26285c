"""Data in Hugging Face's squad_v2 schema (laffi.data.load_squad): hf:ID[:SPLIT], parquet directories and
save_to_disk directories, made locally in each test (offline)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from laffi.data import load_squad, write_squad
from laffi.errors import LaffiError

datasets = pytest.importorskip("datasets")


def _columns(questions):
    return {
        "id": [q.id for q in questions],
        "title": [q.title for q in questions],
        "context": [q.context for q in questions],
        "question": [q.question for q in questions],
        "answers": [{"text": list(q.answers), "answer_start": list(q.answer_starts)} for q in questions],
    }


@pytest.fixture()
def local_copies(tmp_path, excerpt_questions, monkeypatch):
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))
    qs = excerpt_questions[:40]
    ds = datasets.Dataset.from_dict(_columns(qs))
    ds.save_to_disk(str(tmp_path / "disk"))
    (tmp_path / "parquet").mkdir()
    ds.to_parquet(str(tmp_path / "parquet" / "x.parquet"))
    return qs, tmp_path


def test_parquet_save_to_disk_and_hf_specs_give_the_same_questions(local_copies):
    qs, tmp = local_copies
    assert load_squad(tmp / "disk") == qs
    assert load_squad(tmp / "parquet") == qs
    assert load_squad(str(tmp / "parquet")) == qs
    # hf:ID with a local dataset directory as the id (datasets.load_dataset, offline); one split, so no SPLIT needed.
    assert load_squad(f"hf:{tmp / 'parquet'}") == qs
    assert load_squad(f"hf:{tmp / 'parquet'}:train") == qs
    assert sum(q.is_impossible for q in qs) > 0  # unanswerable rows: empty answers


def test_dataset_dict_needs_one_split(local_copies):
    qs, tmp = local_copies
    both = datasets.DatasetDict({"train": datasets.Dataset.from_dict(_columns(qs[:10])),
                                 "validation": datasets.Dataset.from_dict(_columns(qs[10:]))})  # fmt: skip
    both.save_to_disk(str(tmp / "dict"))
    with pytest.raises(LaffiError, match="has the splits train, validation: name one"):
        load_squad(tmp / "dict")
    assert load_squad(tmp / "dict" / "validation") == qs[10:]


def test_bad_datasets_are_one_line_errors(local_copies, tmp_path):
    qs, tmp = local_copies
    cols = _columns(qs[:3])
    del cols["question"]
    datasets.Dataset.from_dict(cols).save_to_disk(str(tmp / "noquestion"))
    with pytest.raises(LaffiError, match="row 0: no column 'question'"):
        load_squad(tmp / "noquestion")
    cols = _columns(qs[:3])
    cols["answers"][0] = {"text": [qs[0].answers[0] + "x"] if qs[0].answers else ["x"], "answer_start": [0]}
    datasets.Dataset.from_dict(cols).save_to_disk(str(tmp / "badspan"))
    with pytest.raises(LaffiError, match=r"answers\[0\]"):  # the same checks as the JSON format
        load_squad(tmp / "badspan")
    (tmp / "empty").mkdir()
    with pytest.raises(LaffiError, match="without parquet files or a saved dataset"):
        load_squad(tmp / "empty")
    with pytest.raises(LaffiError, match="cannot load the dataset") as e:
        load_squad("hf:laffi-no-such-user/no-such-dataset")  # HF_HUB_OFFLINE=1 (conftest): nothing is fetched
    assert "\n" not in str(e.value)


def test_cli_score_reads_a_dataset_directory(local_copies, capsys):
    from laffi.cli import main

    qs, tmp = local_copies
    write_squad(qs, tmp / "same.json")
    (tmp / "p.json").write_text(json.dumps({q.id: "" for q in qs}))
    main(["score", str(tmp / "same.json"), str(tmp / "p.json")])
    from_json = capsys.readouterr().out
    main(["score", str(tmp / "disk"), str(tmp / "p.json")])
    assert capsys.readouterr().out == from_json


def test_data_module_imports_no_datasets():
    root = Path(__file__).parents[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")]))}
    code = "import sys, laffi.data; print(sorted(m for m in ('torch', 'datasets', 'pyarrow') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
