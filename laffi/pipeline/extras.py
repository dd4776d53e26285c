"""The stages a grid runs after its cells, for the report: examples of predicted feedback, attention measures, and
the feedback-headroom probe of each feedback source. Each is cached under its own key."""

from __future__ import annotations

import hashlib
import random
from dataclasses import replace
from pathlib import Path

from laffi import methods
from laffi.config import ExperimentConfig, key_settings
from laffi.files import write_json
from laffi.grid import FEEDBACK_SOURCES, Cell, feedback_predictor, reference_cell
from laffi.pipeline import stages
from laffi.pipeline.cache import begin, cached, file_hash, finish, stage_key
from laffi.rundir import Log, RunDir, generations_path


def examples_stage(cfg: ExperimentConfig, run: RunDir, main: list[Cell], eval_qs: list, eval_file: Path, log: Log,
                   progress: bool) -> Path | None:  # fmt: skip
    """The feedback that the grid's feedback-predicting adapter (`grid.feedback_predictor`: laffi) writes on its own
    answers to a few evaluation questions (for the report): one revision round from the answers it already gave, so
    nothing is answered twice. None when no method of the grid predicts feedback."""
    cell = feedback_predictor(main)
    if cell is None:
        return None
    picked = example_questions(eval_qs, cfg.example_questions, cfg.data.split_seed)
    first = generations_path(run.eval_answers(cell))
    output = run.examples(cell)
    # Revision runs on transformers whatever answer.engine says; every example shows its predicted feedback.
    answer_cfg = replace(cfg.answer, revise_rounds=1, engine="transformers", revise_threshold=0.0)
    key = stage_key(ids=[q.id for q in picked], first=file_hash(first), answer=key_settings(answer_cfg))
    if cached(output, key):
        return output
    begin(output, key)
    stages.answer(picked, output, cfg.model, answer_cfg, adapter=str(run.adapter(cell)), progress=progress,
                  first=first)  # fmt: skip
    finish(output, key)
    return output


def attention_stage(cfg: ExperimentConfig, run: RunDir, main: list[Cell], eval_file: Path, log: Log,
                    progress: bool) -> Path:  # fmt: skip
    """Attention measures of the grid's models on the same questions: each method that trains nothing (the model as
    loaded) and the reference adapter (`grid.reference_cell`) of each method that trains one."""
    from laffi.attention import attention_report

    output = run.attention
    adapters: dict[str, str | None] = {}
    for method in dict.fromkeys(c.method for c in main):
        m = methods.get(method)
        if m.trains:
            adapters[method] = str(run.adapter(reference_cell(main, method)))
        elif not m.adapter_of:
            adapters[method] = None
    weights = {name: file_hash(Path(a)) if a else None for name, a in adapters.items()}
    key = stage_key(data=file_hash(eval_file), model=key_settings(cfg.model), questions=cfg.attention_questions,
                    shots=cfg.answer.shots, adapters=weights)  # fmt: skip
    if cached(output, key):
        return output
    begin(output, key)
    attention_report(cfg.model.name, eval_file, adapters, cfg.attention_questions, output.parent,
                     shots=cfg.answer.shots, dtype=cfg.model.dtype, seed=cfg.data.split_seed, progress=progress,
                     log=log, device=cfg.model.device)  # fmt: skip
    finish(output, key)
    return output


def headroom_stage(cfg: ExperimentConfig, run: RunDir, feedback: dict[str, Path], train_qs: list, train_file: Path,
                   log: Log, progress: bool, cells: list[Cell] | None = None) -> list[Path]:  # fmt: skip
    """headroom/<source>/H.json: the feedback-headroom probe of the base model on its training answers with each
    feedback source the run made (laffi/feedback/headroom.py), cached under its own key. A cell of `cells` trained on
    a mixed share (part human, part AI) trained on a feedback file of its own: each distinct such file gets a probe
    too (headroom/<file stem>/, the first cell's stem for records that several cells share), and
    headroom/mixes.json maps every cell's file to its probe."""
    made, layout = [], cfg.train.sdft_teacher_prompt  # the in-context gap of sdft's teacher
    probes = [(source, feedback[source]) for source in FEEDBACK_SOURCES if source in feedback]
    mixes: dict[str, str] = {}
    first_of: dict[str, str] = {}  # records' hash -> the probe's name
    for cell in cells or []:
        mix = run.mix(cell)
        if not (cell.human_fraction and cell.human_fraction < 1 and mix.exists()):
            continue
        digest = hashlib.sha256(mix.read_bytes()).hexdigest()  # the records alone (file_hash adds the file's name)
        if digest not in first_of:
            first_of[digest] = mix.stem
            probes.append((mix.stem, mix))
        mixes[mix.stem] = first_of[digest]
    for source, records in probes:
        output = run.headroom(source)
        key = stage_key(answers=file_hash(feedback["answers"]), feedback=file_hash(records),
                        model=key_settings(cfg.model), answer=key_settings(cfg.answer),
                        probe=stages.prompts_version(layout, cfg.answer.shots))  # fmt: skip
        if not cached(output, key):
            begin(output, key)
            log(f"headroom: the base model with {source} feedback on its {len(train_qs)} training answers")
            stages.headroom(train_qs, feedback["answers"], records, output, cfg.model, cfg.answer,
                            None, progress, train_file, layout)  # fmt: skip
            finish(output, key)
        made.append(output)
    if mixes:
        write_json(run.headroom_mixes, mixes)
    return made


def example_questions(questions: list, k: int, seed: int) -> list:
    """k evaluation questions, half answerable (as far as there are), drawn with `seed`, in file order."""
    rng = random.Random(seed)
    has = [q for q in questions if not q.is_impossible]
    no = [q for q in questions if q.is_impossible]
    picked = rng.sample(has, min(len(has), (k + 1) // 2)) + rng.sample(no, min(len(no), k // 2))
    return sorted(picked, key=questions.index)
