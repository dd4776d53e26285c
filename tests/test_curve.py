"""The learning-curve pieces of the experiment: seeds only where cells are cheap, size 0 = every training question,
and the size at which each method first beats abstaining."""

from dataclasses import replace

from laffi.config import ExperimentConfig, load_run_config
from laffi.data import bundled_data_path, load_squad
from laffi.grid import Cell, check_method, plan
from laffi.pipeline.experiment import with_sizes_resolved
from laffi.report.summary import first_beats_abstain


def test_seeds_above_all_seeds_up_to_run_once():
    cfg = ExperimentConfig(methods=["base", "sft"], seeds=[0, 1], train_sizes=[30, 100, 1000], all_seeds_up_to=100)
    main, _ = plan(cfg)
    assert [c.path for c in main] == ["base", "sft/n30-seed0", "sft/n30-seed1", "sft/n100-seed0", "sft/n100-seed1",
                                      "sft/n1000-seed0"]  # fmt: skip


def test_size_zero_is_every_training_question():
    questions = load_squad(bundled_data_path())
    cfg = ExperimentConfig(train_sizes=[2, 0])
    resolved = with_sizes_resolved(cfg, questions)
    from laffi.data import split_by_article

    train, _ = split_by_article(questions, cfg.data.eval_articles, cfg.data.split_seed)
    # "All" leaves out the calibration questions (data.calibration_questions), which no training size uses.
    assert resolved.train_sizes == [2, len(train) - cfg.data.calibration_questions] and len(train) < len(questions)
    no_calibration = replace(cfg, data=replace(cfg.data, calibration_questions=0))
    assert with_sizes_resolved(no_calibration, questions).train_sizes == [2, len(train)]
    assert Cell("sft", resolved.train_sizes[1]).name == f"n{resolved.train_sizes[1]}-seed0"


def test_first_beats_abstain_takes_the_smallest_significant_size():
    def t(diff, p):
        return {"mean_diff": diff, "ci_low": 0.0, "ci_high": 0.0, "p_value": p}

    paired = {
        "n=30": {"base vs abstain": t(-3, 0.01), "sft vs abstain": t(-2, 0.01), "laffi vs abstain": t(1, 0.3)},
        "n=100": {"sft vs abstain": t(4, 0.01), "laffi vs abstain": t(2, 0.2), "laffi vs sft": t(-2, 0.01)},
        "n=1000": {"sft vs abstain": t(9, 0.001), "laffi vs abstain": t(5, 0.04)},
    }
    assert first_beats_abstain(paired, ["sft", "laffi"]) == {"sft": 100, "laffi": 1000}
    paired["n=1000"]["laffi vs abstain"] = t(5, 0.06)
    assert first_beats_abstain(paired, ["sft", "laffi"])["laffi"] is None


def test_shipped_curve_config_plans_its_cells():
    cfg = load_run_config("configs/curve.yaml", cls=ExperimentConfig, check_method=check_method)
    assert cfg.train_sizes[-1] == 0 and cfg.all_seeds_up_to == 300
    from dataclasses import replace

    main, ablation = plan(replace(cfg, train_sizes=[*cfg.train_sizes[:-1], 3700]))  # 0 resolved: every question
    assert ablation == [] and sum(c.method == "sft" for c in main) == 2 * 3 + 2  # 2 seeds at 30-300, 1 at 1000 and all
