"""`laffi experiment` on the tiny random model: the grid's cells, caching, and the report checked against the cells'
own files."""

import json
import shutil
from pathlib import Path

import pytest

from laffi.config import ExperimentConfig, load_run_config
from laffi.data import write_squad
from laffi.experiment import run_and_report
from laffi.grid import Cell, Finished, plan
from laffi.report.render import inert


@pytest.fixture(scope="module")
def grid_cfg(tmp_path_factory, tiny_model_dir, excerpt_questions):
    tmp_path = tmp_path_factory.mktemp("grid")
    # Two answerable and two unanswerable questions from each of the three articles; one article is held out.
    picked = {}
    for q in excerpt_questions:
        picked.setdefault((q.title, q.is_impossible), []).append(q)
    qs = [q for group in picked.values() for q in group[:2]]
    data = tmp_path / "data.json"
    write_squad(sorted(qs, key=excerpt_questions.index), data)
    cfg = load_run_config(None, [
        f"out_dir={tmp_path / 'exp'}", f"model.name={tiny_model_dir}", "model.dtype=float32", f"data.path={data}",
        "methods=[base, sft, laffi, laffi+revise]", "seeds=[0, 1]", "train_sizes=[2, 4]", "example_questions=2",
        "answer.max_new_tokens=3", "answer.feedback_max_new_tokens=4", "train.max_steps=2", "train.lora_r=2",
        "train.batch_size=2", "train.micro_batch_size=2", "train.learning_rate=0.05", "attention_questions=2",
        "human_fractions=[0, 0.5, 1]",
    ], ExperimentConfig)  # fmt: skip
    logs = []
    summary = run_and_report(cfg, log=logs.append, progress=False)
    return cfg, summary, logs


def test_plan_runs_base_once_and_dedupes_the_ablation():
    cfg = ExperimentConfig(methods=["base", "sft", "laffi"], seeds=[0, 1], train_sizes=[10, 20],
                           human_fraction=0.5, human_fractions=[0.0, 0.5])  # fmt: skip
    main, ablation = plan(cfg)
    assert main[0] == Cell("base") and sum(c.method == "base" for c in main) == 1
    assert len(main) == 1 + 2 * 2 * 2 and len(ablation) == 2 * 2
    assert Cell("sft", 10, 0, None) in main and Cell("laffi", 20, 1, 0.5) in main
    assert ablation[0] == Cell("laffi", 20, 0, 0.0)
    assert len(set(main + ablation)) == 1 + 8 + 2  # the 0.5 ablation cells are main-grid cells
    assert Cell("laffi", 20, 1, 0.5).path == "laffi/n20-seed1-human50"


def test_grid_report_matches_the_cells(grid_cfg):
    grid_cfg, summary, logs = grid_cfg
    out = Path(grid_cfg.out_dir)
    from laffi.data import load_squad
    from laffi.pipeline import stages

    train = load_squad(out / "data" / "train.json")
    eval_qs = load_squad(out / "data" / "eval.json")
    assert len(train) == 4 and {q.title for q in train}.isdisjoint({q.title for q in eval_qs})
    assert [q.id for q in load_squad(out / "data" / "train-n2.json")] == [q.id for q in train[:2]]  # nested sizes
    assert len(summary.cells) == 1 + 3 * 4 + 2 * 2  # the ablation's 0 share is the main grid's laffi n=4
    # The ablation: a seeded half of the 4 questions take the simulated human's feedback; provenance is kept.
    for share, humans in ((0.5, 2), (1, 4)):
        for seed in (0, 1):
            name = f"laffi-n4-seed{seed}-human{round(share * 100)}"
            split = json.loads((out / "feedback" / f"{name}.split.json").read_text())
            records = [json.loads(line) for line in (out / "feedback" / f"{name}.jsonl").open()]
            assert split["human"] == humans and split["ai"] == 4 - humans
            assert sum(r["annotator"].startswith("simulated-human:") for r in records) == humans
            assert [r["id"] for r in records] == [q.id for q in train]
    assert [g["human_fraction"] for g in summary.ablation] == [0.0, 0.5, 1.0]
    assert set(summary.ablation_paired) == {"human 0.5 vs human 0", "human 1 vs human 0"}
    for path, cell in summary.cells.items():
        assert stages.score(out / "data" / "eval.json", out / "cells" / path / "eval_answers.json") == cell["scores"]
    # Each group's numbers are the mean and spread of its cells' F1 over the two seeds.
    for g in summary.groups:
        if g["method"].startswith("base") or g["method"].endswith(" (calibrated)"):
            continue
        f1 = [summary.cells[f"{g['method']}/n{g['size']}-seed{s}" + ("" if g["method"] == "sft" else "-human0")]
              ["scores"]["f1"] for s in (0, 1)]  # fmt: skip
        assert g["f1_by_seed"] == f1 and g["f1_mean"] == pytest.approx(sum(f1) / 2)
        assert g["f1_sd"] == pytest.approx(abs(f1[0] - f1[1]) / 2 ** 0.5)
    check_calibration(out, summary, train, eval_qs, grid_cfg)
    # laffi+revise revises the laffi cell's answers with the same adapter; no adapter of its own.
    assert not (out / "cells" / "laffi+revise" / "n4-seed0-human0" / "adapter").exists()
    assert summary.revision["laffi+revise/n4-seed0-human0"]["questions"] == len(eval_qs)
    # Every pair of methods at each size, the differences in the stated direction.
    tests = summary.paired["n=4"]
    assert set(tests) >= {"base vs abstain", "sft vs base", "laffi vs sft", "laffi+revise vs laffi"}
    sft, laffi = (next(g for g in summary.groups if g["method"] == m and g["size"] == 4) for m in ("sft", "laffi"))
    assert tests["laffi vs sft"]["mean_diff"] == pytest.approx(laffi["f1_mean"] - sft["f1_mean"])
    assert summary.verdict.startswith("LaFFi ") and "with 4 training questions" in summary.verdict
    assert f"{tests['laffi vs sft']['p_value']:.3f}" in summary.verdict
    # Report files: JSON equals the returned summary; markdown has the verdict and the abstain row; HTML is one file.
    assert json.loads((out / "results.json").read_text()) == json.loads(json.dumps(summary.to_json()))
    md = (out / "results.md").read_text()
    assert summary.verdict in md and "| abstain (every question) |" in md
    assert f"{laffi['f1_mean']:.1f} ± {laffi['f1_sd']:.1f}" in md
    html = (out / "report.html").read_text()
    assert "data:image/png;base64," in html and 'src="plots/' not in html and 'src="attention/' not in html
    # The attention section: base and the reference adapters, measured by `laffi attention` on 2 questions.
    attention = json.loads((out / "attention" / "attention.json").read_text())
    assert list(attention["models"]) == ["base", "sft", "laffi"] and attention["questions"] == 2
    assert summary.attention["markdown"] in md and "## Attention" in md
    assert set(summary.plots) == {"methods", "sizes", "ablation", "loss"} and len(summary.examples) == 2
    assert "## Ablation: share of human feedback" in md and "simulated-human (a stand-in" in md
    # The AI share of each cell's feedback against the gold answers: here the reference annotator, so full agreement.
    quality = summary.cells["laffi/n4-seed0-human50"]["ai_feedback"]
    assert quality["items"] == 2 and quality["agreement"] == 1.0 and quality["annotators"] == ["reference"]
    assert "laffi/n4-seed0-human100" in summary.cells and "ai_feedback" not in summary.cells[
        "laffi/n4-seed0-human100"] and "| laffi/n4-seed0-human50 | reference | 2 | 1.000 |" in md
    env = json.loads((out / "environment.json").read_text())
    assert env["seeds"]["training"] == [0, 1] and env["packages"]["torch"] and len(env["data_sha256"]["eval"]) == 64
    # A second run redoes nothing: every stage is cached.
    stamps = {p: p.stat().st_mtime_ns for p in (out / "cells").rglob("*") if p.is_file()}
    run_and_report(grid_cfg, log=logs.append, progress=False)
    assert stamps == {p: p.stat().st_mtime_ns for p in (out / "cells").rglob("*") if p.is_file()}


def check_calibration(out, summary, train, eval_qs, cfg):
    """Calibration questions come from the training articles and no training size; each cell's threshold is the
    official best_f1_thresh on its calibration answers, and its calibrated scores are the official script's with that
    --na-prob-thresh on the evaluation answers."""
    from laffi.data import load_squad
    from laffi.files import read_json
    from laffi.metrics import squad_v2_scores
    from laffi.records import read_predictions

    calibration = load_squad(out / "data" / "calibration.json")
    assert len(calibration) == 4  # the 8 questions of the 2 training articles less the 4 training questions
    assert {q.id for q in calibration}.isdisjoint({q.id for q in train} | {q.id for q in eval_qs})
    assert {q.title for q in calibration} <= {q.title for q in train} and summary.calibration_questions == 4
    calibrated = {path: c["calibrated"] for path, c in summary.cells.items() if "calibrated" in c}
    assert set(calibrated) == set(summary.cells)
    for path, cal in calibrated.items():
        if path.startswith("laffi+revise"):
            check_revise_threshold(out, path, cal, calibration, cfg)
            continue
        cell = out / "cells" / path
        on_cal = squad_v2_scores(calibration, read_predictions(cell / "calibration_answers.json"),
                                 na_probs=read_json(cell / "calibration_answers.na_prob.json"))  # fmt: skip
        assert cal["threshold"] == on_cal["best_f1_thresh"] and cal["calibration_best_f1"] == on_cal["best_f1"]
        official = squad_v2_scores(eval_qs, read_predictions(cell / "eval_answers.json"),
                                   na_probs=read_json(cell / "eval_answers.na_prob.json"),
                                   na_prob_thresh=cal["threshold"])  # fmt: skip
        assert cal["scores"] == {k: v for k, v in official.items() if not k.startswith("best")}
        na = read_json(cell / "eval_answers.na_prob.json")
        pairs = [(na[a.id], na[b.id]) for a in eval_qs if a.is_impossible for b in eval_qs if not b.is_impossible]
        auc = sum(1.0 if x > y else 0.5 if x == y else 0.0 for x, y in pairs) / len(pairs)
        assert summary.cells[path]["na_score_auc"] == pytest.approx(auc)
    # Raw and calibrated rows side by side; paired tests within each family and each method against its raw self.
    methods = [g["method"] for g in summary.groups]
    assert methods[:4] == ["base", "base (calibrated)", "sft", "sft (calibrated)"]
    tests = summary.paired["n=4"]
    assert {"sft (calibrated) vs sft", "laffi (calibrated) vs sft (calibrated)",
            "sft (calibrated) vs abstain"} <= set(tests)  # fmt: skip
    assert "laffi (calibrated) vs sft" not in tests and "sft (calibrated) vs base" not in tests
    beats = summary.first_beats_abstain
    assert "sft (calibrated)" in beats and "base (calibrated)" not in beats
    assert summary.verdict_calibrated.startswith("Calibrated, LaFFi ")


def check_revise_threshold(out, path, cal, calibration, cfg):
    """laffi+revise's calibrated row: answering the calibration questions again with the chosen revision threshold
    gives exactly the answers (and F1) the report derived from the one revision run."""
    from dataclasses import replace

    from laffi.metrics import squad_v2_scores
    from laffi.pipeline import stages

    laffi = out / "cells" / path.replace("laffi+revise", "laffi")
    again = out / "revise-again.json"
    settings = replace(cfg.answer, revise_rounds=1, revise_threshold=max(cal["threshold"], 0.0))
    preds = stages.answer(calibration, again, cfg.model, settings, adapter=str(laffi / "adapter"), progress=False,
                          first=laffi / "calibration_answers.generations.jsonl")  # fmt: skip
    assert squad_v2_scores(calibration, preds)["f1"] == cal["calibration_best_f1"]
    assert cal["calibration_best_f1"] >= cal["calibration_f1"]


@pytest.mark.parametrize("override, message", [
    ("train_sizes=[]", "train_sizes"),
    ("train_sizes=[-1]", "train_sizes"),
    ("human_fractions=[1.5]", "human_fractions"),
    ("ablation_method=sft", "ablation_method"),
    ("seeds=oops", "seeds"),
])  # fmt: skip
def test_bad_grid_settings_are_one_line_errors(override, message):
    from laffi.errors import LaffiError
    from laffi.grid import check_method

    with pytest.raises(LaffiError, match=message):
        load_run_config(None, [override, "human_fractions=[0, 1]"] if "ablation" in override else [override],
                        ExperimentConfig, check_method)  # fmt: skip


def test_report_aggregates_known_predictions(grid_cfg, tmp_path):
    """Rebuild the report after planting predictions with known scores: the group rows, the paired test and the
    verdict follow the files."""
    from laffi.data import load_squad
    from laffi.report import write_report

    grid_cfg = grid_cfg[0]
    out = tmp_path / "exp"
    shutil.copytree(grid_cfg.out_dir, out)
    eval_qs = load_squad(out / "data" / "eval.json")
    gold = {q.id: (q.answers[0] if q.answers else "") for q in eval_qs}  # F1 100
    abstain = {q.id: "" for q in eval_qs}  # F1 50: half of these questions are unanswerable
    assert sum(q.is_impossible for q in eval_qs) * 2 == len(eval_qs)
    plant = {"sft/n4-seed0": gold, "sft/n4-seed1": abstain, "laffi/n4-seed0-human0": gold,
             "laffi/n4-seed1-human0": gold}  # fmt: skip
    for path, preds in plant.items():
        (out / "cells" / path / "eval_answers.json").write_text(json.dumps(preds))
    main, ablation = plan(grid_cfg)
    summary = write_report(Finished(grid_cfg, out, main, ablation))
    sft = next(g for g in summary.groups if g["method"] == "sft" and g["size"] == 4)
    laffi = next(g for g in summary.groups if g["method"] == "laffi" and g["size"] == 4)
    assert sft["f1_by_seed"] == [100.0, 50.0] and sft["f1_mean"] == 75.0
    assert sft["f1_sd"] == pytest.approx(35.355339, abs=1e-5)
    assert (sft["HasAns_f1_mean"], sft["NoAns_f1_mean"]) == (50.0, 100.0)
    assert laffi["f1_mean"] == 100.0 and laffi["f1_ci95"] == [100.0, 100.0]
    # Seed-averaged per question: sft scores 50 on each answerable question, 100 on each unanswerable one.
    assert summary.paired["n=4"]["laffi vs sft"]["mean_diff"] == pytest.approx(25.0)
    assert summary.verdict.startswith("LaFFi ") and "F1 100.0 vs 75.0, difference +25.0" in summary.verdict
    assert "| sft | 4 | 2 | 75.0 | 75.0 ± 35.4 | 50.0 | 100.0 |" in (out / "results.md").read_text()


def test_critique_cell_critiques_the_sft_adapter_of_its_size_and_seed(grid_cfg, tmp_path):
    from dataclasses import replace

    cfg = replace(grid_cfg[0], out_dir=str(tmp_path / "crit"), methods=["sft", "critique"], seeds=[1], train_sizes=[2],
                  human_fractions=[], example_questions=0, attention_questions=0)  # fmt: skip
    summary = run_and_report(cfg, log=lambda m: None, progress=False)
    # critique's feedback is written (by the reference annotator) on the sft adapter's answers: no human/AI share.
    assert set(summary.cells) == {"sft/n2-seed1", "critique/n2-seed1"}
    cells = tmp_path / "crit" / "cells"
    info = json.loads((cells / "critique" / "n2-seed1" / "adapter" / "laffi_train.json").read_text())
    assert info["config"]["answers_from"] == str(cells / "sft" / "n2-seed1" / "adapter")
    sft_info = json.loads((cells / "sft" / "n2-seed1" / "adapter" / "laffi_train.json").read_text())
    assert sft_info["config"]["answers_from"] == ""  # the setting never touches other methods' cache keys
    # The report says whose answers critique learned to judge, from the cell's own record.
    made = info["critique"]
    row = (f"| critique/n2-seed1 | {made['answered']} answers of {inert(made['answers_from'])} | "
           f"{made['judged_correct']} judged correct by {made['annotator']} |")
    assert made["answered"] == 2 and row in (tmp_path / "crit" / "results.md").read_text()


def test_ablation_size_beyond_train_sizes_is_sampled_too(grid_cfg, tmp_path):
    """An ablation at a size larger than every train size trains on that many questions, never on fewer."""
    from dataclasses import replace

    from laffi.data import load_squad
    from laffi.pipeline.shared import split_stage
    from laffi.rundir import RunDir

    cfg = replace(grid_cfg[0], out_dir=str(tmp_path / "abl"), train_sizes=[2], ablation_size=4)
    train_file, _ = split_stage(cfg, RunDir(tmp_path / "abl"), log=lambda m: None)
    assert len(load_squad(train_file)) == 4
    too_big = replace(cfg, out_dir=str(tmp_path / "big"), ablation_size=400)
    from laffi.errors import LaffiError

    with pytest.raises(LaffiError, match="train_sizes: 400 is more than"):
        split_stage(too_big, RunDir(tmp_path / "big"), log=lambda m: None)


def _contents(out: Path) -> dict[str, bytes]:
    """Every file under a run directory but the report's own, by relative path."""
    report = {"results.json", "results.md", "report.html"}
    return {str(p.relative_to(out)): p.read_bytes() for p in out.rglob("*")
            if p.is_file() and p.name not in report and "plots" not in p.parts}  # fmt: skip


def test_report_only_reports_the_cells_made_and_makes_nothing(grid_cfg, tmp_path):
    """--report-only on a grid with a method added: the report holds the cells that exist, lists the new method's
    cells as not made, and no file of the run directory is made or changed."""
    from dataclasses import replace

    cfg, full, _ = grid_cfg
    out = tmp_path / "exp"
    shutil.copytree(cfg.out_dir, out)
    before = _contents(out)
    wider = replace(cfg, out_dir=str(out), methods=["base", "sft", "laffi", "critique"], human_fractions=[])
    logs = []
    summary = run_and_report(wider, log=logs.append, progress=False, report_only=True)
    main, _ = plan(wider)
    critique = [c.path for c in main if c.method == "critique"]
    assert summary.missing == critique and len(critique) == 4
    assert set(summary.cells) == {c.path for c in main if c.method != "critique"}
    for path, cell in summary.cells.items():
        assert cell["scores"] == full.cells[path]["scores"]
    assert _contents(out) == before
    assert "Not made yet (4 cells of the grid" in (out / "results.md").read_text()
    assert any("not made yet: critique/n2-seed0" in m for m in logs)


def test_report_only_leaves_out_cells_made_with_other_settings(grid_cfg, tmp_path):
    from dataclasses import replace

    from laffi.errors import LaffiError

    cfg = grid_cfg[0]
    out = tmp_path / "exp"
    shutil.copytree(cfg.out_dir, out)
    other = replace(cfg, out_dir=str(out), methods=["base", "sft"], human_fractions=[],
                    train=replace(cfg.train, learning_rate=0.01))  # fmt: skip
    logs = []
    summary = run_and_report(other, log=logs.append, progress=False, report_only=True)
    assert set(summary.cells) == {"base"} and len(summary.missing) == 4  # the adapters' keys differ
    assert any(m.startswith("sft/n2-seed0: made with other settings") for m in logs)
    with pytest.raises(LaffiError, match="holds no split of this config's data"):
        run_and_report(replace(other, out_dir=str(tmp_path / "empty")), log=logs.append, progress=False,
                       report_only=True)  # fmt: skip
    assert not (tmp_path / "empty").exists()


def test_each_cell_reports_its_own_wall_time(grid_cfg):
    """Training seconds come from the timing file beside each adapter (none for base), answering seconds from the
    calibration and evaluation answers' timing files; the cells table shows them in minutes."""
    cfg, summary, _ = grid_cfg
    out = Path(cfg.out_dir)
    assert summary.cells["base"]["seconds"]["train"] is None
    for path, cell in summary.cells.items():
        seconds = cell["seconds"]
        assert seconds["eval"] > 0 and seconds["calibration"] > 0
        if path != "base":
            adapter = out / "cells" / path.replace("laffi+revise", "laffi") / "adapter"
            timing = json.loads(adapter.with_name("adapter.timing.json").read_text())
            assert seconds["train"] == timing["train_seconds"] > 0 and timing["resumed"] is False
    row = next(line for line in (out / "results.md").read_text().splitlines() if line.startswith("| sft/n2-seed0 |"))
    s = summary.cells["sft/n2-seed0"]["seconds"]
    assert row.endswith(f"| {s['train'] / 60:.1f} / {(s['calibration'] + s['eval']) / 60:.1f} |")
