"""The files of a run directory and of an answers file, named in one place.

`laffi run` and `laffi experiment` write a run directory (laffi/pipeline) and the report reads it (laffi/report);
neither spells a path of its own: both ask a `RunDir`. An answers file (`laffi answer --out X.json`) has sidecars
beside it, named by the functions below.

Layout of a run directory:
    config.yaml, environment.json     the resolved config; versions, seeds, data hashes, command (to reproduce it)
    data/train.json, eval.json        the training questions in their seeded order, the held-out questions
    data/calibration.json             training-article questions no size uses: each cell's no-answer threshold
    data/train-n<N>.json              the first N training questions
    base/train_answers.json           the base model's answers on the training questions
    feedback/ai.jsonl, human.jsonl    feedback on those answers from the `annotate` annotator and from people
    answers_from/train_answers.json   with train.answers_from: that source's training answers, and under
    feedback/answers_from/            the feedback on them that the cells of the methods that take it train on
    feedback/<cell>.jsonl             the mix one cell trains on (+ .split.json: which questions got human feedback)
    feedback/annotator-<cell name>/   the learned annotator of a cell's human share (adapter/, ai.jsonl)
    feedback/<cell>.selection.json    annotate.human_selection uncertain: each round's ids, cut and P(incorrect)
    feedback/annotator-<cell name>/rounds/round-<k>/   its rounds' annotators (adapter/) and scores (scores.json)
    cells/<method>/<cell>/            adapter/ (+ adapter.timing.json), eval_answers.json, calibration_answers.json
                                      (+ their sidecars), examples.json
    attention/attention.json          the attention stage (+ attention.md, PNGs)
    headroom/<source>/H.json          the feedback-headroom probe of each feedback source
    results.json, results.md, report.html, plots/*.png    the report
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

Log = Callable[[str], None]

# ------------------------------------------------------------------------------------- sidecars of an answers file


def partial_path(out: Path) -> Path:
    """Answers made so far by an interrupted `answer` (resumed from)."""
    return out.with_name(f".{out.name}.partial.jsonl")


def na_prob_path(out: Path) -> Path:
    """`{id: probability of no answer}` beside the predictions (the official `--na-prob-file` format)."""
    return out.with_suffix(".na_prob.json")


def first_token_na_prob_path(out: Path) -> Path:
    """With answer.na_score 'verdict': the first-token no-answer scores of the same answers, for comparison."""
    return out.with_suffix(".first_token.na_prob.json")


def generations_path(out: Path) -> Path:
    """The raw generations behind the answers (a later revision round starts from them)."""
    return out.with_suffix(".generations.jsonl")


def revisions_path(out: Path) -> Path:
    """Each answer's revision rounds (answer.revise_rounds)."""
    return out.with_suffix(".revisions.jsonl")


def timing_path(out: Path) -> Path:
    """Seconds spent answering (and revising); "resumed" marks a run whose first part ran in an earlier process."""
    return out.with_suffix(".timing.json")


# ------------------------------------------------------------------------------------------------ run directory


class CellLike(Protocol):
    """What a run directory needs of a grid cell (laffi.grid.Cell)."""

    @property
    def method(self) -> str: ...

    @property
    def name(self) -> str: ...

    @property
    def path(self) -> str: ...


@dataclass(frozen=True)
class RunDir:
    """Every file of one run directory. `answers_from`: the files on the training answers of `train.answers_from`
    instead of the base model's own."""

    root: Path

    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def environment(self) -> Path:
        return self.root / "environment.json"

    # --------------------------------------------------------------------------------------------- data
    @property
    def train(self) -> Path:
        return self.root / "data" / "train.json"

    @property
    def eval(self) -> Path:
        return self.root / "data" / "eval.json"

    @property
    def calibration(self) -> Path:
        return self.root / "data" / "calibration.json"

    def subset(self, size: int) -> Path:
        return self.root / "data" / f"train-n{size}.json"

    # ---------------------------------------------------------------------------------- training answers, feedback
    def train_answers(self, answers_from: bool = False) -> Path:
        return self.root / ("answers_from" if answers_from else "base") / "train_answers.json"

    def feedback_dir(self, answers_from: bool = False) -> Path:
        return self.root / "feedback" / ("answers_from" if answers_from else "")

    def feedback(self, source: str, answers_from: bool = False) -> Path:
        """The whole run's feedback of one source: 'ai' or 'human'."""
        return self.feedback_dir(answers_from) / f"{source}.jsonl"

    def mix(self, cell: CellLike) -> Path:
        """The feedback one cell trains on."""
        return self.root / "feedback" / f"{cell.method}-{cell.name}.jsonl"

    def split(self, cell: CellLike) -> Path:
        """Which of a cell's questions took human feedback, and what was filtered (beside its mix)."""
        return self.mix(cell).with_suffix(".split.json")

    def learned_annotator(self, cell: CellLike, answers_from: bool = False) -> Path:
        """The learned annotator of a cell's human share (shared by cells of any method with its size, seed, share)."""
        return self.feedback_dir(answers_from) / f"annotator-{cell.name}"

    def selection(self, cell: CellLike) -> Path:
        """annotate.human_selection uncertain: the rounds that chose a cell's human share and each chosen item's
        P(incorrect) when it was chosen (beside its mix)."""
        return self.mix(cell).with_suffix(".selection.json")

    def selection_rounds(self, cell: CellLike, answers_from: bool = False) -> Path:
        """annotate.human_selection uncertain: the annotators of a cell's selection rounds and their scores."""
        return self.learned_annotator(cell, answers_from) / "rounds"

    # --------------------------------------------------------------------------------------------- cells
    def cell(self, cell: CellLike) -> Path:
        return self.root / "cells" / cell.path

    def adapter(self, cell: CellLike) -> Path:
        return self.cell(cell) / "adapter"

    def train_timing(self, cell: CellLike) -> Path:
        """Wall time of a cell's training (model loading, data a method makes, the steps), beside its adapter."""
        adapter = self.adapter(cell)
        return adapter.with_name(adapter.name + ".timing.json")

    def train_info(self, cell: CellLike) -> Path:
        return self.adapter(cell) / "laffi_train.json"

    def train_log(self, cell: CellLike) -> Path:
        return self.adapter(cell) / "train_log.jsonl"

    def eval_answers(self, cell: CellLike) -> Path:
        return self.cell(cell) / "eval_answers.json"

    def calibration_answers(self, cell: CellLike) -> Path:
        return self.cell(cell) / "calibration_answers.json"

    def examples(self, cell: CellLike) -> Path:
        """The feedback a feedback-predicting adapter writes on its own answers to a few evaluation questions."""
        return self.cell(cell) / "examples.json"

    # ------------------------------------------------------------------------------------------ other stages
    @property
    def attention(self) -> Path:
        return self.root / "attention" / "attention.json"

    def headroom(self, source: str) -> Path:
        """The probe of a feedback source ('ai', 'human') or of a mixed share's feedback file (its stem)."""
        return self.root / "headroom" / source / "H.json"

    @property
    def headroom_mixes(self) -> Path:
        """{stem of a cell's mixed-share feedback file: the probe of its records} (several files can hold the same)."""
        return self.root / "headroom" / "mixes.json"

    # --------------------------------------------------------------------------------------------- report
    @property
    def results_json(self) -> Path:
        return self.root / "results.json"

    @property
    def results_md(self) -> Path:
        return self.root / "results.md"

    @property
    def report_html(self) -> Path:
        return self.root / "report.html"

    @property
    def plots(self) -> Path:
        return self.root / "plots"
