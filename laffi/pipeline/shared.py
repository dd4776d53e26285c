"""The stages every cell of a grid shares: the article split, the base model's answers on the training questions
(or those of `train.answers_from`), and the feedback on them from the `annotate` annotator and from people. Each is
cached (laffi/pipeline/cache.py) under a key of its inputs and settings; `answer_stage` is the cached form of
`stages.answer` that the cells use too."""

from __future__ import annotations

from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from laffi import methods
from laffi.config import AnnotateConfig, AnswerConfig, ExperimentConfig, RunConfig, key_settings
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
from laffi.files import read_json, write_json, write_jsonl
from laffi.grid import Cell
from laffi.pipeline import stages
from laffi.pipeline.cache import begin, cached, file_hash, finish, stage_key
from laffi.records import FeedbackRecord, read_feedback, read_predictions
from laffi.rundir import Log, RunDir, generations_path, na_prob_path, timing_path


def split_stage(cfg: ExperimentConfig, run: RunDir, log: Log) -> tuple[Path, Path]:
    """Article split; the training questions in one seeded order, question by question or passage by passage
    (`data.sample_by`, `laffi.data.sample_training`): sizes take prefixes, so they are nested."""
    src = resolve_data_path(cfg.data.path)
    largest = max([*cfg.train_sizes, cfg.ablation_size])  # the ablation's size is sampled too (nested)
    settings = {**asdict(cfg.data), "train_questions": largest}
    key = stage_key(data=data_hash(cfg.data.path), settings=settings,
                    eval_data=data_hash(cfg.data.eval_path) if cfg.data.eval_path else None)  # fmt: skip
    train_file, eval_file = run.train, run.eval
    if cached(eval_file, key) and train_file.exists() and run.calibration.exists():
        return train_file, eval_file
    begin(eval_file, key, [train_file, run.calibration])
    train_all, eval_all = train_and_eval(cfg, load_squad(src))
    if largest > len(train_all):
        raise LaffiError(f"train_sizes: {largest} is more than the {len(train_all)} questions of the training "
                         f"articles in {src}")  # fmt: skip
    train_qs = sample_training(train_all, largest, cfg.data.split_seed, cfg.data.sample_by)
    eval_qs = sample_questions(eval_all, cfg.data.eval_questions or None, cfg.data.split_seed)  # as `laffi run`
    calibration = calibration_questions(cfg, train_all, train_qs)
    write_squad(calibration, run.calibration)
    return write_split(train_qs, eval_qs, train_file, eval_file, key, log, calibration)


def read_calibration(run: RunDir) -> list:
    """The calibration questions of a split (none with data.calibration_questions 0)."""
    return load_squad(run.calibration) if read_json(run.calibration)["data"] else []


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
    from laffi.files import printable

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


def answer_stage(cfg: RunConfig, output: Path, questions: list, data_file: Path, adapter: Path | None, log: Log,
                 progress: bool, answer_cfg: AnswerConfig | None = None, first: Path | None = None) -> Path:
    """`stages.answer` into `output`, cached; its raw generations go beside it (`rundir.generations_path`)."""
    stage_dir = output.parent
    answer_cfg = answer_cfg or replace(cfg.answer, revise_rounds=0)
    if adapter is None and answer_cfg.na_score == "verdict":  # the base model's own answers: no feedback to judge by
        answer_cfg = replace(answer_cfg, na_score="first_token")
    settings = key_settings(answer_cfg)
    if not answer_cfg.revise_rounds:  # revision settings don't change plain answers: cells share their answers
        for name in ("revise_rounds", "feedback_max_new_tokens", "revise_threshold"):
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
                  generations_out=generations_path(output), progress=progress, first=first)  # fmt: skip
    finish(output, key)
    return output


def subset_file(run: RunDir, train_qs: list, size: int) -> Path:
    path = run.subset(size)
    if not path.exists():
        write_squad(train_qs[:size], path)
    return path


def feedback_sources(cfg: ExperimentConfig, run: RunDir, cells: list[Cell], train_qs: list, train_file: Path, log: Log,
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
            answers = answers_from_stage(cfg, run, spec, train_qs, train_file, log, progress)
            prefix = ANSWERS_FROM
        else:
            answers = answer_stage(cfg, run.train_answers(), train_qs, train_file, None, log, progress)
            prefix = ""
        sources[prefix + "answers"] = answers
        if any(p > 0 for p in shares):
            sources[prefix + "human"] = human_stage(cfg, run, train_qs, answers, log, spec)
        if any(p == 0 if learns(cfg) else p < 1 for p in shares):
            sources[prefix + "ai"] = ai_stage(cfg, run, train_qs, answers, log, progress, spec)
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


def answers_from_stage(cfg: ExperimentConfig, run: RunDir, spec: str, train_qs: list, train_file: Path, log: Log,
                       progress: bool) -> Path:  # fmt: skip
    """answers_from/train_answers.json: the training answers of `train.answers_from` (`methods.common.answers_source`),
    made like the base model's (`answer_stage`, the `answer` settings): 'base-Kshot' is the run's model with K
    shots, an adapter directory the run's model with that adapter; a predictions file is copied for the training
    questions, each of which it must answer. Cached by the source's content (or the stage's settings)."""
    from laffi.methods.common import answers_source

    kind, source = answers_source(spec)
    output = run.train_answers(answers_from=True)
    if kind == "predictions":
        preds = read_predictions(source)
        missing = [q.id for q in train_qs if q.id not in preds]
        if missing:
            raise LaffiError(f"train.answers_from: {spec}: no answer for training question id '{missing[0]}' "
                             f"({len(missing)} of {len(train_qs)} missing)")  # fmt: skip
        key = stage_key(data=file_hash(train_file), predictions=file_hash(source))
        if not cached(output, key):
            leftovers = [generations_path(output), timing_path(output), na_prob_path(output)]
            begin(output, key, leftovers)
            write_json(output, {q.id: preds[q.id] for q in train_qs})
            finish(output, key)
    else:
        # The answers only: their no-answer scores are not used (and 'verdict' scores need a LaFFi adapter).
        answer_cfg = replace(cfg.answer, revise_rounds=0, na_score="first_token")
        if kind == "base":
            answer_cfg = replace(answer_cfg, shots=source)
        output = answer_stage(cfg, output, train_qs, train_file, source if kind == "adapter" else None, log, progress,
                              answer_cfg)  # fmt: skip
    preds = read_predictions(output)
    log(f"answers_from: {spec}: {len(preds)} training answers ({sum(not a for a in preds.values())} abstentions)")
    return output


def annotation_settings(cfg: ExperimentConfig) -> dict[str, Any]:
    """The annotate settings that decide what an annotator writes, for cache keys (filtering happens afterwards)."""
    from laffi.feedback.llm import output_version

    settings = key_settings(cfg.annotate)
    settings.pop("filter_contradictions")
    for name in SELECTION_SETTINGS:  # which questions people annotate: the records an annotator learns from are keyed
        settings.pop(name)
    settings["output_version"] = output_version(cfg.annotate)  # what the annotator's records look like
    return settings


# annotate.* settings that choose the human share (laffi/feedback/routing.py), not what an annotator writes of it.
SELECTION_SETTINGS = ("human_selection", "first_round", "selection_rounds")


def selection_scores(questions: list, preds: dict[str, str], records: list[FeedbackRecord], directory: Path,
                     cfg: AnnotateConfig, progress: bool = True) -> tuple[dict[str, float], float]:  # fmt: skip
    """One round of the uncertain human selection: the learned annotator fine-tuned on `records` (directory/adapter,
    cached by their content: `stages.learn_annotator`) scores P(incorrect) of every question with a prediction that
    is not among them (directory/scores.json, cached by the adapter's weights and the prompts). Returns
    ({id: P(incorrect)}, the cut: `annotate.verdict_threshold`, or with -1 the one that judges the records' share of
    incorrect verdicts incorrect)."""
    import json

    from laffi.feedback import learned, llm

    adapter = directory / "adapter"
    stages.learn_annotator(records, adapter, cfg, progress)
    skip = {r.id for r in records}
    items = [(q, preds[q.id]) for q in questions if q.id in preds and q.id not in skip]
    msgs = [learned.messages(q, pred) for q, pred in items]
    output = directory / "scores.json"
    key = stage_key(adapter=learned.adapter_hash(adapter), model=cfg.model, dtype=cfg.dtype,
                    template=learned.TEMPLATE_VERSION,
                    prompts=json.dumps([[q.id, m] for (q, _), m in zip(items, msgs, strict=True)]))  # fmt: skip
    if not cached(output, key):
        begin(output, key)
        probs = llm.incorrect_probabilities(msgs, cfg, llm.load_local(cfg, str(adapter))) if msgs else []
        write_json(output, {q.id: p for (q, _), p in zip(items, probs, strict=True)})
        finish(output, key)
    scores = {k: float(v) for k, v in read_json(output).items()}
    return scores, llm.choose_threshold(list(scores.values()), cfg.verdict_threshold, llm.incorrect_share(records))


def select_queue(questions: list, preds: dict[str, str], examples: list[FeedbackRecord], out: Path,
                 cfg: AnnotateConfig, n: int, progress: bool = True) -> dict[str, Any]:  # fmt: skip
    """`laffi annotate --select-human N --out-queue OUT`: the learned annotator fine-tuned on `examples` (the human
    records so far; OUT.annotator/adapter) scores every other question (`selection_scores`) and OUT gets the `n` whose
    P(incorrect) is closest to the cut, closest first: {"order": ids, "incorrect_prob": {id: p}, "cut", "scored",
    "learned_from", "annotator", "adapter"}. `laffi annotate-server --queue OUT` serves them in that order."""
    from laffi.feedback import learned
    from laffi.feedback.routing import queue

    directory = stages.annotator_adapter_path(out)
    probs, cut = selection_scores(questions, preds, examples, directory, cfg, progress)
    if not probs:
        raise LaffiError(f"--select-human: every question with a prediction is among the {len(examples)} human "
                         f"records the annotator learns from (--examples)")  # fmt: skip
    order = queue(probs, cut, n, [q.id for q in questions])
    selection = {"selection": "uncertain", "order": order, "incorrect_prob": {i: probs[i] for i in order}, "cut": cut,
                 "scored": len(probs), "learned_from": [r.id for r in examples],
                 "annotator": learned.annotator_id(cfg), "adapter": str(directory / "adapter")}  # fmt: skip
    write_json(out, selection)
    return selection


def learns(cfg: ExperimentConfig) -> bool:
    """Whether the AI annotator is the learned one (fine-tuned on each cell's human share)."""
    return cfg.annotate.learn_from_examples  # AnnotateConfig allows it only for an annotator that runs a model


def human_stage(cfg: ExperimentConfig, run: RunDir, train_qs: list, answers: Path, log: Log, spec: str = "") -> Path:
    """feedback/human.jsonl: `human_feedback` on the base model's training answers, or on those of `train.answers_from`
    (`spec`: feedback/answers_from/human.jsonl)."""
    output = run.feedback("human", bool(spec))
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


def ai_stage(cfg: ExperimentConfig, run: RunDir, train_qs: list, answers: Path, log: Log, progress: bool = True,
             spec: str = "") -> Path:  # fmt: skip
    """Feedback from the `annotate` annotator. An LLM annotator learns from `annotate.examples` (default: the
    hand-written examples shipped with laffi, on passages outside SQuAD), never from the human feedback on all of
    these training questions: a question among its shots would have its own human feedback copied into its AI
    feedback. (The learned annotator learns from a cell's human share and annotates the cell's other questions:
    `learned_ai_stage`; this file is then only for cells without human feedback.) `spec`: on the answers of
    `train.answers_from` (feedback/answers_from/ai.jsonl)."""
    output = run.feedback("ai", bool(spec))
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
