"""`laffi experiment` and `laffi run`: every cell of a grid (laffi/grid.py), each stage cached, in one process, in
worker processes, or as one shard of several machines sharing a run directory (laffi/rundir.py).

Cells share everything they can: one article split, one seeded order of the training questions (a size n takes its
first n), the base model's answers on them (computed once), one set of AI feedback and one of human feedback on those
answers (laffi/pipeline/shared.py). Each cell trains and answers (laffi/pipeline/cells.py); then the stages for the
report run (laffi/pipeline/extras.py). Each stage is cached (laffi/pipeline/cache.py), so a re-run after an
interruption, or with one more seed, redoes only what is missing. The pipeline writes; `laffi.report` reads.
"""

from __future__ import annotations

import os
import sys
from dataclasses import asdict, replace
from pathlib import Path

import yaml

from laffi import methods
from laffi.config import ExperimentConfig
from laffi.data import load_squad, resolve_data_path
from laffi.errors import LaffiError
from laffi.files import atomic_write_text, read_json, write_json
from laffi.grid import Cell, Finished, check_method, plan
from laffi.pipeline.cache import NotCached, marker, only_cached
from laffi.pipeline.cells import run_cell
from laffi.pipeline.extras import attention_stage, examples_stage, headroom_stage
from laffi.pipeline.provenance import environment
from laffi.pipeline.shared import feedback_sources, read_calibration, split_stage, train_and_eval
from laffi.rundir import Log, RunDir


def run_experiment(cfg: ExperimentConfig, log: Log = print, progress: bool = True, shard: tuple[int, int] | None = None,
                   workers: int = 1, finish_up: bool = True, report_only: bool = False) -> Finished | None:
    """Run every cell of the grid (each stage cached); `laffi.report.write_report` turns what it returns into results.

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
    run = RunDir(Path(cfg.out_dir))
    # Validate the data before anything exists in out_dir: a mistyped data.path leaves no config or stage marker.
    source = load_squad(resolve_data_path(cfg.data.path))
    cfg = with_dtypes_resolved(with_sizes_resolved(cfg, source))
    if report_only:
        return made_cells(cfg, run, log)
    workers = workers if workers > 1 else cfg.workers
    # atomic_write_text makes out_dir, and removes what it made when the write fails (a full disk: no empty out_dir)
    atomic_write_text(run.config, yaml.safe_dump(asdict(cfg), sort_keys=False))
    main, ablation = plan(cfg)
    cells = list(dict.fromkeys(main + ablation))
    train_file, eval_file = split_stage(cfg, run, log)
    write_json(run.environment, environment(cfg, train_file, eval_file))
    train_qs, eval_qs, calibration = load_squad(train_file), load_squad(eval_file), read_calibration(run)
    feedback = feedback_sources(cfg, run, cells, train_qs, train_file, log, progress)
    if workers > 1 and shard is None:
        # The shared stages above ran here with every thread; the workers find them cached and make the cells.
        run_workers(cfg, workers, log)
    mine = cells if shard is None else cells[shard[0]::shard[1]]
    for cell in mine:
        log(f"[{cells.index(cell) + 1}/{len(cells)}] {cell.path}")
        run_cell(cfg, run, cell, train_qs, eval_qs, eval_file, feedback, log, progress, calibration)
    if shard is not None:
        left = [c for c in cells if not answered(run, c)]
        if left or not finish_up:  # finish_up False: a worker's one cell; the parent writes what follows
            if finish_up:
                log(f"shard {shard[0]}/{shard[1]}: done; {len(left)} of {len(cells)} cells are still being made "
                    "elsewhere")  # fmt: skip
            return None
    if cfg.example_questions:
        examples_stage(cfg, run, main, eval_qs, eval_file, log, progress)
    if cfg.attention_questions:
        attention_stage(cfg, run, main, eval_file, log, progress)
    if cfg.headroom:
        headroom_stage(cfg, run, feedback, train_qs, train_file, log, progress, main)
    return Finished(cfg, run.root, main, ablation)


def made_cells(cfg: ExperimentConfig, run: RunDir, log: Log) -> Finished:
    """The grid's cells that `run` holds, made with this config's settings, and the others listed as missing:
    every stage is looked up under `only_cached`, so nothing is trained, answered or locked. A cell whose answers
    exist but whose stages have other keys (made with other settings) counts as missing. For a grid made a size or
    a machine at a time (the learning curve): the report of what exists so far."""
    main, ablation = plan(cfg)
    cells = list(dict.fromkeys(main + ablation))
    try:
        with only_cached():
            train_file, eval_file = split_stage(cfg, run, log)
    except NotCached:
        raise LaffiError(f"out_dir: {run.root} holds no split of this config's data (run `laffi experiment` without "
                         "--report-only first, or check data.* against the run's config.yaml)") from None
    train_qs, eval_qs, calibration = load_squad(train_file), load_squad(eval_file), read_calibration(run)
    made, missing = [], []
    for cell in cells:
        if not answered(run, cell):
            missing.append(cell)
            continue
        try:
            with only_cached():
                feedback = feedback_sources(cfg, run, [cell], train_qs, train_file, _quiet, progress=False)
                run_cell(cfg, run, cell, train_qs, eval_qs, eval_file, feedback, _quiet, False, calibration)
            made.append(cell)
        except NotCached as e:
            log(f"{cell.path}: made with other settings ({e.output} differs): left out")
            missing.append(cell)
    if not made:
        raise LaffiError(f"out_dir: {run.root} holds none of this grid's cells yet (run `laffi experiment` without "
                         "--report-only first)")
    if missing:
        log(f"report of {len(made)} of {len(cells)} cells; not made yet: {', '.join(c.path for c in missing)}")
    return Finished(cfg, run.root, [c for c in main if c in made], [c for c in ablation if c in made],
                    missing=[c.path for c in missing])  # fmt: skip


def answered(run: RunDir, cell: Cell) -> bool:
    """Whether a cell's answers on the evaluation questions are finished (by any process)."""
    m = marker(run.eval_answers(cell))
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
