"""`laffi experiment --workers N` and `--shard I/N` on the tiny random model: the same cells, files and cache keys as
one process; stage locks keep two processes from making the same stage."""

import json
from dataclasses import replace
from pathlib import Path

import pytest

from laffi.config import ExperimentConfig, load_run_config
from laffi.data import write_squad
from laffi.experiment import run_and_report
from laffi.pipeline.cache import cached, marker


@pytest.fixture(scope="module")
def cfg(tmp_path_factory, tiny_model_dir, excerpt_questions):
    tmp = tmp_path_factory.mktemp("parallel")
    picked = {}
    for q in excerpt_questions:
        picked.setdefault((q.title, q.is_impossible), []).append(q)
    data = tmp / "data.json"
    write_squad(sorted([q for g in picked.values() for q in g[:2]], key=excerpt_questions.index), data)
    return load_run_config(None, [
        f"out_dir={tmp / 'seq'}", f"model.name={tiny_model_dir}", "model.dtype=float32", f"data.path={data}",
        "methods=[base, sft, laffi]", "seeds=[0]", "train_sizes=[2, 4]", "example_questions=0",
        "answer.max_new_tokens=3", "train.max_steps=2", "train.lora_r=2", "train.batch_size=2",
        "train.micro_batch_size=2",
    ], ExperimentConfig)  # fmt: skip


def _cells(out: Path) -> dict[str, tuple[dict, str]]:
    """cell path -> (its answers, the key of its answer stage)."""
    found = {}
    for answers in sorted((out / "cells").rglob("eval_answers.json")):
        key = json.loads(marker(answers).read_text())["key"]
        found[str(answers.parent.relative_to(out / "cells"))] = (json.loads(answers.read_text()), key)
    return found


@pytest.fixture
def one_thread():
    """Runs in this process at the workers' thread count (one each on 2 cores): another number of threads sums floats
    in another order, so adapter bytes, and the answer keys made from them, would differ in the last bits."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_workers_and_shards_make_what_one_process_makes(cfg, tmp_path, one_thread):
    one = run_and_report(cfg, log=lambda m: None, progress=False)
    two = run_and_report(replace(cfg, out_dir=str(tmp_path / "workers"), workers=2), log=lambda m: None,
                         progress=False)  # fmt: skip
    assert _cells(tmp_path / "workers") == _cells(Path(cfg.out_dir)) and len(_cells(tmp_path / "workers")) == 5
    assert set(two.cells) == set(one.cells)
    sharded = replace(cfg, out_dir=str(tmp_path / "shards"))
    assert run_and_report(sharded, log=lambda m: None, progress=False, shard=(0, 2)) is None  # others not done
    last = run_and_report(sharded, log=lambda m: None, progress=False, shard=(1, 2))
    assert last is not None and set(last.cells) == set(one.cells)
    assert _cells(tmp_path / "shards") == _cells(Path(cfg.out_dir))
    assert (tmp_path / "shards" / "results.md").exists()


MAKER = """
import sys, time
from pathlib import Path
from laffi.pipeline.cache import cached, finish
output = Path(sys.argv[1])
assert not cached(output, "k")  # nobody made it: this process holds the stage's lock
print("holding", flush=True)
time.sleep(1.0)
output.write_text("made by the first process")
finish(output, "k")
"""


def test_a_stage_is_made_by_one_process_while_the_others_wait(tmp_path):
    """A second maker of a stage waits for the process that is making it, then finds it cached."""
    import subprocess
    import sys
    import time

    output = tmp_path / "stage.json"
    first = subprocess.Popen([sys.executable, "-c", MAKER, str(output)], stdout=subprocess.PIPE, text=True)
    assert first.stdout.readline().strip() == "holding"
    start = time.monotonic()
    assert cached(output, "k") is True  # waited for the lock, then found the first process's output
    waited = time.monotonic() - start
    assert first.wait(timeout=30) == 0
    assert output.read_text() == "made by the first process" and waited > 0.5


def test_workers_take_the_longest_cells_first():
    from laffi.grid import Cell, plan
    from laffi.pipeline.experiment import worker_order

    cells = plan(ExperimentConfig(methods=["base", "sft", "laffi", "laffi+revise"], seeds=[0], train_sizes=[10, 30],
                                  human_fractions=[]))[0]  # fmt: skip
    assert [cells[i].path for i in worker_order(cells)] == [
        "sft/n30-seed0", "laffi/n30-seed0-human0", "sft/n10-seed0", "laffi/n10-seed0-human0",
        "laffi+revise/n30-seed0-human0", "laffi+revise/n10-seed0-human0", "base"]  # fmt: skip
    assert Cell("base") in cells
