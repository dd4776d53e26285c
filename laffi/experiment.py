"""`laffi run` and `laffi experiment`: the pipeline makes the grid's cells (laffi/pipeline), then the report reads
them (laffi/report). The two layers never import each other; this module is the one place that calls both."""

from __future__ import annotations

from laffi.config import ExperimentConfig
from laffi.pipeline.experiment import run_experiment
from laffi.report import write_report
from laffi.report.summary import Summary
from laffi.rundir import Log


def run_and_report(cfg: ExperimentConfig, log: Log = print, progress: bool = True,
                   shard: tuple[int, int] | None = None, report_only: bool = False) -> Summary | None:
    """Run the experiment (every stage cached) and write its report: results.json, results.md, report.html. With a
    `shard`, None until the last shard finishes (see `run_experiment`). `report_only`: the report of the cells
    already made, nothing else run (`laffi.pipeline.experiment.made_cells`)."""
    done = run_experiment(cfg, log, progress, shard, report_only=report_only)
    return None if done is None else write_report(done)
