"""The experiment's grid: its cells and their order, shared by the pipeline that makes them and the report that reads
them.

A cell is one (method, training size, seed, share of human feedback). The grid is every fine-tuned method x size x
seed, plus each method that trains nothing (base) once, plus the ablation: one method and size trained with each
share of human feedback. `laffi run` is a one-cell-per-method preset of the same grid (`run_preset`).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from pathlib import Path

from laffi import methods
from laffi.config import ExperimentConfig, RunConfig
from laffi.errors import LaffiError

FEEDBACK_SOURCES = ("ai", "human")  # the run's feedback files on the base model's training answers (RunDir.feedback)


def check_method(name: str, where: str = "methods", needs_feedback: bool = False) -> None:
    """A known method (laffi.methods) and, with `needs_feedback`, one that learns from feedback: else a one-line error
    naming `where`. `load_run_config` takes this as its `check_method`."""
    method = methods.get(name, where)
    if needs_feedback and not method.reads_feedback:
        raise LaffiError(f"{where}: '{name}' does not learn from feedback")


@dataclass(frozen=True)
class Cell:
    method: str
    size: int = 0
    seed: int = 0
    human_fraction: float | None = None  # None: the method reads no feedback

    @property
    def name(self) -> str:
        if not self.size:  # a method that trains nothing (base) runs once
            return self.method
        name = f"n{self.size}-seed{self.seed}"
        if self.human_fraction is not None:
            name += f"-human{round(100 * self.human_fraction)}"
        return name

    @property
    def path(self) -> str:
        """Where the cell lives under cells/ (the method is a folder: '+' is fine in paths)."""
        return self.method if not self.size else f"{self.method}/{self.name}"

    def trained(self) -> Cell:
        """The cell whose adapter this one answers with (an answer-time method: its `adapter_of` method's)."""
        adapter_of = methods.get(self.method).adapter_of
        return replace(self, method=adapter_of) if adapter_of else self


def plan(cfg: ExperimentConfig) -> tuple[list[Cell], list[Cell]]:
    """(main grid, ablation) cells in the order they run. An ablation cell equal to a main cell is run once."""
    main = []
    for method in cfg.methods:
        m = methods.get(method, "methods")
        if not (m.trains or m.adapter_of):  # trained on nothing: one cell
            main.append(Cell(method))
            continue
        fraction = cfg.human_fraction if m.reads_feedback else None
        main += [Cell(method, n, s, fraction) for n in cfg.train_sizes for s in seeds_at(cfg, n)]
    size = cfg.ablation_size or max(cfg.train_sizes)
    ablation = [Cell(cfg.ablation_method, size, s, p) for p in cfg.human_fractions for s in seeds_at(cfg, size)]
    return main, ablation


def seeds_at(cfg: ExperimentConfig, size: int) -> list[int]:
    """The seeds a training size runs with: all of them, or the first only above `all_seeds_up_to`."""
    return cfg.seeds if not cfg.all_seeds_up_to or size <= cfg.all_seeds_up_to else cfg.seeds[:1]


def run_preset(cfg: RunConfig) -> ExperimentConfig:
    """`laffi run`: one cell per method: one seed (`train.seed`), one training size (`data.train_questions`, 0 = all),
    every fine-tuned method on the `annotate` annotator's feedback, no ablation."""
    common = {f.name: getattr(cfg, f.name) for f in fields(RunConfig)}
    return ExperimentConfig(**common, seeds=[cfg.train.seed], train_sizes=[cfg.data.train_questions],
                            human_fraction=0.0, human_fractions=[])  # fmt: skip


def reference_cell(cells: list[Cell], method: str) -> Cell | None:
    """The cell shown for a method in examples and attention: largest size, first seed."""
    mine = [c for c in cells if c.method == method]
    if not mine:
        return None
    return max(mine, key=lambda c: (c.size, -c.seed))


def feedback_predictor(cells: list[Cell]) -> Cell | None:
    """The reference cell of the grid's first method (in display order) whose adapter writes feedback on an answer
    (laffi): its predicted feedback is what the report's examples show."""
    present = {c.method for c in cells}
    for method in methods.names(trained=True):  # display order
        if method in present and methods.get(method).predicts_feedback:
            return reference_cell(cells, method)
    return None


@dataclass
class Finished:
    """A grid whose cells exist in `out`: what the report reads."""

    cfg: ExperimentConfig  # with sizes, device and dtype resolved (as config.yaml holds it)
    out: Path
    main: list[Cell]
    ablation: list[Cell]
    missing: list[str] = field(default_factory=list)  # with --report-only: the grid's cells not made yet
