"""One cell of a grid: its feedback mix, its training (cached), and its answers on the calibration and evaluation
questions (the cell is finished when those exist)."""

from __future__ import annotations

import time
from dataclasses import asdict, replace
from pathlib import Path

from laffi import methods
from laffi.config import (
    AnnotateConfig,
    AnswerConfig,
    ExperimentConfig,
    TrainConfig,
    key_settings,
    train_cache_settings,
)
from laffi.data import load_squad
from laffi.errors import LaffiError
from laffi.files import write_json, write_jsonl
from laffi.grid import Cell
from laffi.pipeline import stages
from laffi.pipeline.cache import begin, cached, file_hash, finish, stage_key
from laffi.pipeline.shared import (
    annotation_settings,
    answer_stage,
    answers_from,
    learns,
    selection_scores,
    source_files,
    subset_file,
)
from laffi.records import FeedbackRecord, read_feedback, read_predictions
from laffi.rundir import Log, RunDir, generations_path


def run_cell(cfg: ExperimentConfig, run: RunDir, cell: Cell, train_qs: list, eval_qs: list, eval_file: Path,
             feedback: dict[str, Path], log: Log, progress: bool, calibration: list = ()) -> Path:  # fmt: skip
    """Train a cell (cached), answer the calibration questions, then the evaluation questions (the cell is finished
    when those exist: `answered`)."""
    adapter, first = None, None
    answer_cfg = cell_answer_config(cfg, cell)
    method = methods.get(cell.method)
    if method.trains or method.adapter_of:
        adapter = train_cell(cfg, run, cell.trained(), train_qs, feedback, log, progress)
    revising = replace(cfg.answer, revise_rounds=max(1, cfg.answer.revise_rounds))
    if calibration and not method.revise:
        answer_stage(cfg, run.calibration_answers(cell), list(calibration), run.calibration, adapter, log, progress,
                     answer_cfg)  # fmt: skip
    if calibration and method.revise:  # the same revision of the adapter's calibration answers: its threshold's data
        first_cal = answer_stage(cfg, run.calibration_answers(cell.trained()), list(calibration), run.calibration,
                                 adapter, log, progress, cell_answer_config(cfg, cell.trained()))  # fmt: skip
        answer_stage(cfg, run.calibration_answers(cell), list(calibration), run.calibration, adapter, log, progress,
                     revising, generations_path(first_cal))  # fmt: skip
    if method.revise:
        first_preds = answer_stage(cfg, run.eval_answers(cell.trained()), eval_qs, eval_file, adapter, log, progress,
                                   cell_answer_config(cfg, cell.trained()))  # fmt: skip
        first, answer_cfg = generations_path(first_preds), revising
    return answer_stage(cfg, run.eval_answers(cell), eval_qs, eval_file, adapter, log, progress, answer_cfg, first)


def cell_answer_config(cfg: ExperimentConfig, cell: Cell) -> AnswerConfig:
    """A cell's settings for plain answers. answer.na_score 'verdict' needs an adapter that writes feedback (laffi,
    laffi+sft, critique); the other cells score their answers with 'first_token'."""
    answer_cfg = replace(cfg.answer, revise_rounds=0)
    if answer_cfg.na_score == "verdict" and not methods.get(cell.trained().method).predicts_feedback:
        answer_cfg = replace(answer_cfg, na_score="first_token")
    return answer_cfg


def cell_feedback(cfg: ExperimentConfig, run: RunDir, cell: Cell, train_qs: list, feedback: dict[str, Path], log: Log,
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

    output = run.mix(cell)
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
        elif learns(cfg) and cfg.annotate.human_selection == "uncertain":
            selection = uncertain_selection(cfg.annotate, questions, read_predictions(feedback["answers"]), human,
                                            cell.human_fraction, cell.seed, run.selection_rounds(cell, bool(spec)),
                                            progress)  # fmt: skip
            write_json(run.selection(cell), selection)
            chosen = selection["human_ids"]
            share = [r for r in human if r.id in set(chosen)]
            learned = learned_ai_stage(cfg, run, cell, share, questions, feedback["answers"], log, progress,
                                       bool(spec))  # fmt: skip
            ai = read_feedback(learned)
            log(f"feedback: {cell.name}: {len(chosen)} human records chosen in {len(selection['rounds'])} rounds "
                f"(the first random, then closest to the learned annotator's cut)")
        elif learns(cfg):
            chosen = human_share([r.id for r in human], cell.human_fraction, cell.seed)
            share = [r for r in human if r.id in set(chosen)]
            learned = learned_ai_stage(cfg, run, cell, share, questions, feedback["answers"], log, progress,
                                       bool(spec))  # fmt: skip
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
        split["learned_annotator"] = str(learned.parent.relative_to(run.root))
    if cfg.annotate.human_selection != "random" and 0 < (cell.human_fraction or 0) < 1:
        split["human_selection"] = cfg.annotate.human_selection
        split["selection"] = str(run.selection(cell).relative_to(run.root))
    if spec:
        split["answers_from"] = spec
    order = {q.id: i for i, q in enumerate(train_qs)}
    write_jsonl(output, sorted(records, key=lambda r: order[r.id]))
    write_json(run.split(cell), split)
    return output


def uncertain_selection(cfg: AnnotateConfig, questions: list, preds: dict[str, str], human: list[FeedbackRecord],
                        fraction: float, seed: int, directory: Path, progress: bool = True) -> dict:  # fmt: skip
    """annotate.human_selection uncertain: which of `human`'s questions take the human record
    (`laffi.feedback.routing.select_uncertain`). Round k's annotator learns from the human records of the rounds before
    it and scores the other questions (`selection_scores`, cached under directory/round-<k>/). Returns the selection:
    its rounds, the chosen ids and each one's P(incorrect) when it was chosen."""
    from laffi.feedback.routing import select_uncertain

    in_preds = [r for r in human if r.id in preds]

    def score(chosen: list[str], k: int) -> tuple[dict[str, float], float]:
        taken = set(chosen)
        records = [r for r in in_preds if r.id in taken]
        return selection_scores(questions, preds, records, directory / f"round-{k}", cfg, progress)

    asked = {q.id for q in questions}
    ids = [r.id for r in in_preds if r.id in asked]
    return select_uncertain(ids, fraction, seed, cfg.first_round, cfg.selection_rounds, score)


def contradicting(cfg: ExperimentConfig, ai: list[FeedbackRecord]) -> set[str]:
    """Ids of AI records that contradict the gold answers, when annotate.filter_contradictions (else none)."""
    if not cfg.annotate.filter_contradictions:
        return set()
    from laffi.feedback.report import contradiction

    return {r.id for r in ai if contradiction(r, cfg.annotate.correct_threshold) is not None}


def learned_ai_stage(cfg: ExperimentConfig, run: RunDir, cell: Cell, share: list[FeedbackRecord], questions: list,
                     answers: Path, log: Log, progress: bool, on_answers_from: bool = False) -> Path:  # fmt: skip
    """A cell's AI feedback from the learned annotator: fine-tuned on the cell's human share (`share`; never on other
    questions, never on evaluation questions), it annotates the cell's other questions. Under
    feedback/annotator-<cell name>/ (shared by the cells of any method with the same size, seed and share): the
    adapter (cached by the share's records and the annotate settings) and ai.jsonl (+ failures); under
    feedback/answers_from/ for the answers of `train.answers_from` (`on_answers_from`)."""
    import json

    from laffi.records import to_dict

    directory = run.learned_annotator(cell, on_answers_from)
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


def train_cell(cfg: ExperimentConfig, run: RunDir, cell: Cell, train_qs: list, feedback: dict[str, Path], log: Log,
               progress: bool) -> Path:  # fmt: skip
    output = run.adapter(cell)
    data_file = subset_file(run, train_qs, cell.size)
    feedback_file = (cell_feedback(cfg, run, cell, train_qs, feedback, log, progress)
                     if cell.human_fraction is not None else None)  # fmt: skip
    tcfg = TrainConfig(**{**asdict(cfg.train), "method": cell.method, "seed": cell.seed,
                          "answers_from": judged_source(cfg, run, cell, train_qs, feedback, log, progress)})
    key = stage_key(data=file_hash(data_file), feedback=file_hash(feedback_file) if feedback_file else None,
                    model=key_settings(cfg.model), train=train_cache_settings(tcfg),
                    shots=cfg.answer.shots)  # fmt: skip
    if cached(output, key):
        return output
    partial, timing = output.with_name(output.name + ".partial"), run.train_timing(cell)
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


def judged_source(cfg: ExperimentConfig, run: RunDir, cell: Cell, train_qs: list, feedback: dict[str, Path],
                  log: Log, progress: bool) -> str:  # fmt: skip
    """Whose answers a method that learns to judge answers (`Method.answers_from == 'judge'`: critique) judges:
    `train.answers_from` when set, else the adapter of its `Method.judges` method with the same size and seed
    (trained first if needed), i.e. answers that are not the base model's own. Other methods get "" so that the
    setting never invalidates their cache."""
    method = methods.get(cell.method)
    if method.answers_from != "judge":
        return ""
    if cfg.train.answers_from or not method.judges:
        return cfg.train.answers_from
    return str(train_cell(cfg, run, Cell(method.judges, cell.size, cell.seed), train_qs, feedback, log, progress))
