"""The coh, refine and critique methods through `laffi run` on the tiny random model (nothing but the method name)."""

import json

from laffi.config import load_run_config
from laffi.experiment import run_and_report
from laffi.grid import run_preset


def test_run_trains_and_answers_with_every_new_method(tmp_path, tiny_model_dir, excerpt_questions):
    from laffi.data import write_squad

    picked = {}
    for q in excerpt_questions:
        picked.setdefault((q.title, q.is_impossible), q)
    data = tmp_path / "data.json"
    write_squad(sorted(picked.values(), key=excerpt_questions.index), data)
    run = tmp_path / "run"
    cfg = load_run_config(None, [
        f"out_dir={run}", f"model.name={tiny_model_dir}", "model.dtype=float32", f"data.path={data}",
        "methods=[base, sft, coh, critique]", "answer.max_new_tokens=3", "train.max_steps=1",
        "train.lora_r=2", "train.batch_size=2", "train.micro_batch_size=2",
        f"train.answers_from={run / 'cells' / 'sft' / 'n4-seed0' / 'adapter'}", "data.train_questions=0",
    ])  # fmt: skip
    summary = run_and_report(run_preset(cfg), log=lambda m: None, progress=False)
    assert list(summary.cells) == ["base", "sft/n4-seed0", "coh/n4-seed0-human0", "critique/n4-seed0"]
    assert {"coh vs sft", "critique vs sft"} <= set(summary.paired["n=4"])
    coh = json.loads((run / "cells" / "coh" / "n4-seed0-human0" / "adapter" / "laffi_train.json").read_text())
    assert coh["config"]["method"] == "coh" and coh["answer_prefix"] == "A good answer:"
    critique_dir = run / "cells" / "critique" / "n4-seed0"
    critique = json.loads((critique_dir / "adapter" / "critique_report.json").read_text())
    assert critique["kind"] == "adapter" and critique["answered"] == 4
    assert not (critique_dir / "adapter.partial").exists()
