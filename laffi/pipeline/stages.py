"""The pipeline's stages as library functions over files: answer, annotate, train, score.

The CLI commands and the run/experiment orchestrator both call these, so a stage behaves the same whichever way it is
started. Each writes its output atomically; `answer` resumes from a partial JSONL beside its output.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from laffi.config import AnnotateConfig, AnswerConfig, ModelConfig, TrainConfig, train_cache_settings
from laffi.data import load_squad, resolve_data_path
from laffi.errors import LaffiError
from laffi.files import read_json, write_json, write_jsonl  # noqa: F401
from laffi.records import FeedbackRecord, Generation, Question, read_feedback, read_jsonl, read_predictions  # noqa: F401
from laffi.rundir import (  # noqa: F401  (the sidecar names, for the callers of these stages)
    first_token_na_prob_path,
    generations_path,
    na_prob_path,
    partial_path,
    revisions_path,
    timing_path,
)


def answer(
    questions: list[Question],
    out: Path,
    model: ModelConfig,
    settings: AnswerConfig,
    adapter: str | None = None,
    generations_out: Path | None = None,
    progress: bool = True,
    first: Path | None = None,
    where: str = "questions",
    restart: bool = False,
) -> dict[str, str]:
    """Answer `questions`, write `{id: answer}` (official prediction format) to `out`. Resumes after a crash.

    With `first` (a generations JSONL that an earlier `answer` run with the same model, adapter and settings wrote),
    the first answers are read from it instead of generated again, so revising costs only the feedback rounds.
    A resume with other settings is refused (`laffi.resume`); `restart` discards the partial answers instead."""
    from tqdm.auto import tqdm

    from laffi.engines.generation import DecodeSettings, answer_prefix, answer_questions, revise_answers
    from laffi.models import load_model, load_tokenizer

    if settings.na_score == "verdict" and adapter is None:
        raise LaffiError("answer.na_score: 'verdict' needs a LaFFi adapter (--adapter)")
    if settings.engine == "vllm":
        return answer_vllm(questions, out, model, settings, adapter, generations_out, first, where)
    claim_partial_answers(questions, out, model, settings, adapter, first, restart)
    tokenizer = load_tokenizer(model.name)
    lm = load_model(model.name, dtype=model.dtype, adapter=adapter, device=model.device)
    check_prompt_lengths(questions, tokenizer, lm, settings, where)
    partial = partial_path(out)
    resumed = partial.exists()
    start = time.perf_counter()
    if first is not None:
        gens = reuse_generations(first, questions)
        timing = {"questions": len(questions), "answer_seconds": _answer_seconds(first), "resumed": resumed,
                  "first_answers_from": str(first)}  # fmt: skip
    else:
        with tqdm(total=len(questions), desc=f"answer {out.name}", unit="q", disable=not progress) as bar:
            gens = answer_questions(
                lm, tokenizer, questions, settings.shots,
                DecodeSettings(settings.max_new_tokens, settings.batch_size, workers=settings.workers,
                               draft_tokens=settings.draft_tokens),
                partial=partial, require_in_context=settings.require_in_context, progress=bar.update,
                answer_prefix=answer_prefix(adapter), constrain=settings.constrain,
            )  # fmt: skip
        timing = {"questions": len(questions), "answer_seconds": time.perf_counter() - start, "resumed": resumed}
    first_token_file = first_token_na_prob_path(out)
    first_token_file.unlink(missing_ok=True)
    if settings.na_score == "verdict" and not settings.revise_rounds:
        from dataclasses import replace

        from laffi.engines.generation import verdict_scores

        scores = verdict_scores(lm, tokenizer, questions, {g.id: g.answer for g in gens},
                                DecodeSettings(1, settings.batch_size, workers=settings.workers))  # fmt: skip
        if all(g.na_prob is not None for g in gens):  # the first-token score too, so the two can be compared
            write_json(first_token_file, {g.id: g.na_prob for g in gens})
        gens = [replace(g, na_prob=scores[g.id]) for g in gens]
    preds = {g.id: g.answer for g in gens}
    revisions = []
    if settings.revise_rounds > 0:
        from laffi.engines.generation import verdict_scores

        start = time.perf_counter()
        # Each first answer's probability of "Verdict: incorrect" (one prefill each): recorded in the revisions, and
        # what answer.revise_threshold compares.
        incorrect = verdict_scores(lm, tokenizer, questions, {g.id: g.answer for g in gens},
                                   DecodeSettings(1, settings.batch_size, workers=settings.workers))  # fmt: skip
        with tqdm(desc=f"revise {out.name}", unit="q", disable=not progress) as bar:
            revisions = revise_answers(
                lm, tokenizer, questions, gens, settings.revise_rounds,
                DecodeSettings(settings.feedback_max_new_tokens, settings.batch_size, workers=settings.workers,
                               draft_tokens=settings.draft_tokens),
                partial=partial, require_in_context=settings.require_in_context, progress=bar.update,
                threshold=settings.revise_threshold, incorrect_probs=incorrect,
            )  # fmt: skip
        timing["revise_seconds"] = time.perf_counter() - start
        preds = {r.id: r.final_answer for r in revisions}
    if generations_out is not None:
        write_jsonl(generations_out, gens)
    if revisions:
        write_jsonl(revisions_path(out), revisions)
    write_json(timing_path(out), timing)
    write_na_probs(out, gens if not revisions else [])
    write_json(out, preds)
    for leftover in out.parent.glob(f"{partial.name}*"):
        leftover.unlink()
    return preds


def claim_partial_answers(questions: list[Question], out: Path, model: ModelConfig, settings: AnswerConfig,
                          adapter: str | None, first: Path | None, restart: bool) -> None:  # fmt: skip
    """Refuse to resume partial answers of `out` made with other settings (or discard them: `restart`)."""
    from dataclasses import asdict

    from laffi.pipeline.cache import file_hash, marker
    from laffi.resume import claim, digest

    answer = asdict(settings)
    if not settings.revise_rounds:  # revision settings don't change plain answers
        for name in ("revise_rounds", "feedback_max_new_tokens", "revise_threshold"):
            answer.pop(name)
    # A path that is not there is named by the load that follows: here it is only its name.
    record = {"model": asdict(model), "answer": answer, "questions": digest(questions),
              "adapter": (file_hash(Path(adapter)) if Path(adapter).is_dir() else adapter) if adapter else None,
              "first_answers": (file_hash(first) if first.is_file() else str(first)) if first is not None else None}
    partial = partial_path(out)
    rounds = sorted(out.parent.glob(f"{partial.name}.round*")) if out.parent.is_dir() else []
    claim(out.with_name(f"{partial.name}.settings.json"), [partial, *rounds], record, "answers", restart,
          vouched=marker(out).exists())  # fmt: skip




def write_na_probs(out: Path, gens: list[Generation]) -> None:
    """The first answers' no-answer scores beside `out`; none (and no stale file) when an answer has no score: revised
    answers (the score is about the first answer)."""
    path = na_prob_path(out)
    if gens and all(g.na_prob is not None for g in gens):
        write_json(path, {g.id: g.na_prob for g in gens})
    else:
        path.unlink(missing_ok=True)


def answer_vllm(questions: list[Question], out: Path, model: ModelConfig, settings: AnswerConfig, adapter: str | None,
                generations_out: Path | None, first: Path | None, where: str) -> dict[str, str]:  # fmt: skip
    """`answer` with `answer.engine: vllm` (laffi/engines/vllm.py): the same prompts, parsing, no-answer scores
    (first-token, or the adapter's verdict) and output files, on the process's one vLLM engine."""
    from types import SimpleNamespace

    from transformers import AutoConfig, GenerationConfig

    from laffi.engines import vllm as engine
    from laffi.engines.generation import answer_prefix, stop_token_ids
    from laffi.models import load_tokenizer, resolve_model

    engine.require_vllm()
    if settings.revise_rounds or first is not None:
        raise LaffiError("answer.engine: revise rounds run on the 'transformers' engine only")
    if settings.constrain != "none":
        raise LaffiError("answer.constrain: runs on the 'transformers' engine only")
    tokenizer = load_tokenizer(model.name)
    path = resolve_model(model.name)
    check_prompt_lengths(questions, tokenizer, SimpleNamespace(config=AutoConfig.from_pretrained(path)), settings,
                         where)  # fmt: skip
    try:
        generation_config = GenerationConfig.from_pretrained(path)
    except OSError:
        generation_config = None
    stops = stop_token_ids(tokenizer, SimpleNamespace(generation_config=generation_config))
    start = time.perf_counter()
    llm = engine.engine(path, model.dtype, adapter)
    gens = engine.answer_questions(llm, tokenizer, questions, settings.shots, settings.max_new_tokens, stops, adapter,
                                   settings.require_in_context, answer_prefix(adapter))  # fmt: skip
    timing = {"questions": len(questions), "answer_seconds": time.perf_counter() - start, "resumed": False,
              "engine": "vllm"}  # fmt: skip
    first_token_file = first_token_na_prob_path(out)
    first_token_file.unlink(missing_ok=True)
    if settings.na_score == "verdict":
        from dataclasses import replace

        scores = engine.verdict_scores(llm, tokenizer, questions, {g.id: g.answer for g in gens}, adapter)
        if all(g.na_prob is not None for g in gens):  # the first-token score too, so the two can be compared
            write_json(first_token_file, {g.id: g.na_prob for g in gens})
        gens = [replace(g, na_prob=scores[g.id]) for g in gens]
    if generations_out is not None:
        write_jsonl(generations_out, gens)
    write_json(timing_path(out), timing)
    write_na_probs(out, gens)
    preds = {g.id: g.answer for g in gens}
    write_json(out, preds)
    return preds


def check_prompt_lengths(questions: list[Question], tokenizer: Any, model: Any, settings: AnswerConfig,
                         where: str) -> None:  # fmt: skip
    """Refuse, before any work, a question whose prompt and answer cannot fit the model's context: a model
    silently degrades (or fails mid-run) past the length it was trained on."""
    from laffi import prompts

    limit = getattr(model.config, "max_position_embeddings", None)
    if not limit:
        return
    room = limit - max(settings.max_new_tokens, settings.feedback_max_new_tokens if settings.revise_rounds else 0)
    for q in questions:
        n = len(tokenizer(prompts.render(prompts.qa_messages(q, settings.shots), tokenizer))["input_ids"])
        if n > room:
            raise LaffiError(f"{where}: question '{q.id}': context too long: the prompt is {n} tokens, the model "
                             f"takes {limit} including {limit - room} new tokens")  # fmt: skip


def reuse_generations(path: Path, questions: list[Question]) -> list[Generation]:
    """First answers written by an earlier run, one per question, in question order."""
    by_id = {g.id: g for g in read_jsonl(path, Generation)}
    missing = [q.id for q in questions if q.id not in by_id]
    if missing:
        raise LaffiError(f"{path}: no first answer for question id '{missing[0]}' ({len(missing)} missing)")
    return [by_id[q.id] for q in questions]


def _answer_seconds(generations: Path) -> float | None:
    """Seconds the run that wrote `generations` spent answering (from its timing file), so revision costs compare."""
    if not generations.name.endswith(".generations.jsonl"):  # not written by `laffi run`: no timing beside it
        return None
    timing = generations.with_name(generations.name.removesuffix(".generations.jsonl") + ".timing.json")
    return read_json(timing).get("answer_seconds") if timing.exists() else None




def annotate(questions: list[Question], preds: dict[str, str], out: Path, cfg: AnnotateConfig,
             progress: bool = True) -> list[FeedbackRecord]:  # fmt: skip
    """Feedback on every question that has a prediction, written as JSONL records, by the annotator
    `cfg.annotator` (laffi/feedback/annotators.py): one that writes from the gold answers, or a language model."""
    from laffi.feedback import annotators

    annotator = annotators.get(cfg.annotator)
    if annotator.runs_model:
        from laffi.feedback.llm import annotate_llm, default_examples_path

        examples = read_feedback(Path(cfg.examples) if cfg.examples else default_examples_path())
        if cfg.learn_from_examples:
            return annotate_learning(questions, preds, examples, out, cfg, progress)
        return annotate_llm(questions, preds, examples, out, cfg, progress)
    assert annotator.write is not None
    records = annotator.write(questions, preds, cfg)
    if not records:
        raise LaffiError(f"{out}: no question has a prediction to annotate")
    write_jsonl(out, records)
    return records


def annotator_adapter_path(out: Path) -> Path:
    """Where the learned annotator's adapter for the feedback file `out` lives: beside it."""
    return out.with_name(f"{out.name}.annotator")


def annotate_learning(questions: list[Question], preds: dict[str, str], examples: list[FeedbackRecord], out: Path,
                      cfg: AnnotateConfig, progress: bool = True,
                      adapter: Path | None = None) -> list[FeedbackRecord]:  # fmt: skip
    """The learned annotator (laffi/feedback/learned.py): fine-tune on `examples` (cached in `adapter`, default
    OUT.annotator/), then annotate every question with a prediction that is not among them."""
    from laffi.feedback.learned import annotate_learned
    from laffi.feedback.llm import incorrect_share

    adapter = adapter or annotator_adapter_path(out)
    learn_annotator(examples, adapter, cfg, progress)
    return annotate_learned(questions, preds, adapter, [r.id for r in examples], out, cfg, progress,
                            incorrect_share(examples))  # fmt: skip


def annotator_train_config(cfg: AnnotateConfig) -> TrainConfig:
    """The training settings of the learned annotator: TrainConfig's defaults with annotate.learn_* (alpha = 2r)."""
    micro = 2 if cfg.learn_batch_size % 2 == 0 else 1
    return TrainConfig(method="annotator", epochs=cfg.learn_epochs, max_steps=cfg.learn_max_steps,
                       learning_rate=cfg.learn_learning_rate, lora_r=cfg.learn_lora_r, lora_alpha=2 * cfg.learn_lora_r,
                       batch_size=cfg.learn_batch_size, micro_batch_size=micro, seed=cfg.seed)  # fmt: skip


def learn_annotator(records: list[FeedbackRecord], adapter: Path, cfg: AnnotateConfig,
                    progress: bool = True) -> dict[str, Any]:  # fmt: skip
    """LoRA-fine-tune the annotator model (`cfg.model`) on human feedback records with laffi's training loop
    (laffi.training.loop.train on `Example`s: loss on the `Verdict:` / `Feedback:` reply only) and save the adapter
    to `adapter`, with `annotator.json` (ids learned from, seconds). Cached: the same records (by content), model and
    learn_* settings reuse the adapter."""
    import json

    from laffi.feedback.learned import INFO, training_pairs
    from laffi.models import load_tokenizer
    from laffi.pipeline.cache import begin, cached, finish, stage_key
    from laffi.records import to_dict
    from laffi.training.examples import Example
    from laffi.training.loop import train as run_training

    if not records:
        raise LaffiError("annotate.learn_from_examples: no human feedback records to learn from")
    tcfg = annotator_train_config(cfg)
    content = json.dumps([to_dict(r) for r in sorted(records, key=lambda r: r.id)], sort_keys=True, default=str)
    key = stage_key(records=content, model=cfg.model, dtype=cfg.dtype, train=train_cache_settings(tcfg))
    if cached(adapter, key):
        return read_json(adapter / INFO)
    begin(adapter, key, [adapter.with_name(adapter.name + ".partial"), adapter.with_name(adapter.name + ".tmp")])
    tokenizer = load_tokenizer(cfg.model)
    examples = [Example(kind="annotator", id=i, prompt=p, completion=c)
                for i, p, c in training_pairs(records, tokenizer)]  # fmt: skip
    start = time.perf_counter()
    info = run_training(cfg.model, cfg.dtype, examples, tcfg, adapter, progress=progress, tokenizer=tokenizer,
                        device=cfg.device)
    summary = {"learned_from": [r.id for r in records], "annotators": sorted({r.annotator for r in records}),
               "verdicts": {v: sum(r.verdict == v for r in records) for v in ("correct", "incorrect")},
               "seconds": round(time.perf_counter() - start, 2), "steps": info["steps"],
               "final_loss": info["final_loss"], "tokens": info["tokens"]}  # fmt: skip
    write_json(adapter / INFO, summary)
    finish(adapter, key)
    return summary


def train(
    questions: list[Question],
    feedback: list[FeedbackRecord] | None,
    out: Path,
    model: ModelConfig,
    cfg: TrainConfig,
    shots: int,
    progress: bool = True,
    restart: bool = False,
) -> dict[str, Any]:
    """Train one method's adapter into `out`. A method that makes its own data first (refine, critique: its
    `prepare`) does so resumably under `out`.partial/ and leaves what it made and a report beside the adapter files.
    A resume with other settings is refused (`laffi.resume`); `restart` discards `out`.partial/ instead."""
    from laffi import methods
    from laffi.methods.common import save_report
    from laffi.models import load_tokenizer
    from laffi.training.distributed import launched
    from laffi.training.loop import train as run_training

    method = methods.get(cfg.method, "train.method")
    if cfg.answers_from and method.answers_from != "judge":
        raise LaffiError(answers_from_unused(cfg.method, method.answers_from))
    if launched() and method.prepare is not None:
        # Making data generates and writes files; it is not shared out between processes.
        raise LaffiError(f"train.method: '{cfg.method}' runs on one process only (not under accelerate launch)")
    launching = cfg.launcher.strip() and not launched() and method.prepare is None
    claim_checkpoint(questions, feedback, out, model, cfg, shots, restart, write=not launching)  # the child writes
    if launching:
        return launch_training(questions, feedback, out, model, cfg, shots, progress)
    tokenizer = load_tokenizer(model.name)
    answers, report = None, None
    if method.prepare is not None:
        feedback, answers, report = method.prepare(questions, feedback, out, model, cfg, shots, progress)
    examples = methods.build_examples(cfg.method, questions, feedback, tokenizer, shots, cfg.seed, answers, cfg)
    info = run_training(model.name, model.dtype, examples, cfg, out, progress=progress, tokenizer=tokenizer,
                        answer_prefix=method.answer_prefix, device=model.device)  # fmt: skip
    if report is not None:
        save_report(out, cfg.method, report)
        info[cfg.method] = report["summary"]
    return info


def claim_checkpoint(questions: list[Question], feedback: list[FeedbackRecord] | None, out: Path, model: ModelConfig,
                     cfg: TrainConfig, shots: int, restart: bool, write: bool = True) -> None:  # fmt: skip
    """Refuse to resume `out`.partial/ (checkpoint, data a method made) made with other settings, or discard it
    (`restart`). Its record, `settings.json`, is written first, so a checkpoint never exists without one."""
    from dataclasses import asdict

    from laffi.pipeline.cache import marker
    from laffi.resume import claim, digest
    from laffi.training.distributed import launched, rank

    work = out.with_name(out.name + ".partial")
    if restart and launched():
        raise LaffiError(f"--restart: not under a launcher (several processes would discard {work} at once); "
                         "use train.launcher, or remove it first")  # fmt: skip
    if launched() and rank() != 0:
        return  # one process checks and writes the record: the others would race it (a record half-written)
    record = {"model": asdict(model), "train": train_cache_settings(cfg), "shots": shots,
              "questions": digest(questions), "feedback": digest(feedback) if feedback is not None else None}
    claim(work / "settings.json", [work], record, "training checkpoint", restart, write, vouched=marker(out).exists())


def answers_from_unused(method: str, use: str) -> str:
    """The error for `train.answers_from` given to a method that trains on the records it is given."""
    if use == "feedback":
        return (f"train.answers_from: method '{method}' trains on the given --feedback records, whatever answers they "
                "judge; train.answers_from chooses those answers in `laffi run` / `laffi experiment` only (here: "
                "`laffi answer`, then `laffi annotate` on its answers; or --method critique)")  # fmt: skip
    return f"train.answers_from: method '{method}' does not use it (critique does; laffi and laffi+sft in `laffi run`)"


def launch_training(
    questions: list[Question],
    feedback: list[FeedbackRecord] | None,
    out: Path,
    model: ModelConfig,
    cfg: TrainConfig,
    shots: int,
    progress: bool,
) -> dict[str, Any]:
    """Run `<cfg.launcher> -m laffi train ...` on the same questions, feedback and settings (written beside `out`),
    wait for it, and return what it recorded. The processes it starts resume from `out`.partial/ like any run."""
    import shlex
    import shutil
    import subprocess
    import sys
    from dataclasses import asdict

    import yaml

    from laffi.data import write_squad
    from laffi.engines.vllm import release as release_vllm
    from laffi.files import atomic_write_text
    from laffi.training.loop import TRAIN_INFO

    try:
        launcher = shlex.split(cfg.launcher)
    except ValueError as exc:
        raise LaffiError(f"train.launcher: cannot parse '{cfg.launcher}': {exc}") from None
    inputs = out.with_name(out.name + ".launch")
    inputs.mkdir(parents=True, exist_ok=True)
    write_squad(questions, inputs / "data.json")
    # The child trains in its own processes: launcher "" there, or it would launch again.
    settings = {**asdict(cfg), "launcher": ""}
    atomic_write_text(inputs / "config.yaml", yaml.safe_dump({"train": settings}, sort_keys=False))
    cmd = [*launcher, "-m", "laffi", "train", "--method", cfg.method, "--data", str(inputs / "data.json"),
           "--out", str(out), "--model", model.name, "--dtype", model.dtype, "--shots", str(shots),
           "--config", str(inputs / "config.yaml"), "--progress" if progress else "--no-progress"]  # fmt: skip
    if feedback is not None:
        write_jsonl(inputs / "feedback.jsonl", feedback)
        cmd += ["--feedback", str(inputs / "feedback.jsonl")]
    release_vllm()  # the launched processes train on the GPU this process's vLLM engine would hold
    try:
        # stdout of the workers goes to our stderr: a caller's stdout (e.g. results) stays clean.
        code = subprocess.run(cmd, stdout=sys.stderr, check=False).returncode
    except OSError as exc:
        raise LaffiError(f"train.launcher: cannot start '{launcher[0]}': {exc.strerror}") from None
    finally:
        shutil.rmtree(inputs, ignore_errors=True)  # rewritten on every launch
    if code != 0:
        raise LaffiError(f"train.launcher: '{cfg.launcher} -m laffi train' exited with status {code} (see its "
                         "output above)")  # fmt: skip
    return read_json(out / TRAIN_INFO, "training record")


def score(data: Path, predictions: Path, na_prob_file: Path | None = None, na_prob_thresh: float = 1.0,
          only_answered: bool = False) -> dict[str, Any]:  # fmt: skip
    """The official evaluate-v2.0.py's output for these options (`--na-prob-file`, `--na-prob-thresh`).
    `only_answered`: score only the questions the predictions file has an entry for (e.g. `laffi answer --limit`)."""
    from laffi.metrics import squad_v2_scores

    questions = load_squad(resolve_data_path(str(data)), strict=False)
    preds = read_predictions(predictions)
    if only_answered:
        questions = [q for q in questions if q.id in preds]
        if not questions:
            raise LaffiError(f"{predictions}: --only-answered: no question of {data} has a prediction here")
    na_probs = read_json(na_prob_file, "no-answer probabilities") if na_prob_file is not None else None
    return squad_v2_scores(questions, preds, source=str(predictions), na_probs=na_probs, na_prob_thresh=na_prob_thresh,
                           na_source=str(na_prob_file))  # fmt: skip


def headroom(questions: list[Question], preds_file: Path, feedback_file: Path, out: Path, model: ModelConfig,
             settings: AnswerConfig, adapter: str | None = None, progress: bool = True,
             data_file: Path | None = None, layout: str = "refinement") -> dict[str, Any]:  # fmt: skip
    """The feedback-headroom probe (laffi/feedback/headroom.py) of `model` (+ `adapter`) on the first answers in
    `preds_file` and the feedback on them in `feedback_file`, in the prompt `layout` (`train.sdft_teacher_prompt`;
    'qa' with `settings.shots`); writes `out` (H.json) and each condition's files."""
    from tqdm.auto import tqdm

    from laffi.config import key_settings
    from laffi.engines.generation import DecodeSettings
    from laffi.feedback import headroom as probe
    from laffi.models import load_model, load_tokenizer
    from laffi.pipeline.cache import file_hash

    preds = read_predictions(preds_file, questions)
    records = read_feedback(feedback_file)
    na_file = preds_file.with_suffix(".na_prob.json")
    first_na = read_json(na_file, "no-answer probabilities") if na_file.exists() else None
    decode = DecodeSettings(settings.max_new_tokens, settings.batch_size, workers=settings.workers,
                            draft_tokens=settings.draft_tokens)  # fmt: skip
    identity = {"model": key_settings(model), "adapter": file_hash(Path(adapter)) if adapter else None,
                "decode": {"max_new_tokens": decode.max_new_tokens, "draft_tokens": decode.draft_tokens},
                "data": file_hash(data_file) if data_file else None, "predictions": file_hash(preds_file),
                "feedback": file_hash(feedback_file), "prompt": prompts_version(layout, settings.shots)}  # fmt: skip
    tokenizer = load_tokenizer(model.name)
    with tqdm(desc=f"headroom {out.name}", unit="q", disable=not progress) as bar:
        return probe.probe(lambda: load_model(model.name, dtype=model.dtype, adapter=adapter, device=model.device),
                           tokenizer, questions, preds, records, out, decode, first_na, identity, bar.update,
                           where=str(feedback_file), layout=layout, shots=settings.shots)  # fmt: skip


def prompts_version(layout: str = "refinement", shots: int = 0) -> str:
    """The headroom probe's prompts, for cache keys ('qa': with its shots; 'refinement' shows none)."""
    from laffi import prompts
    from laffi.feedback.headroom import NO_FEEDBACK

    shown = "" if layout == "refinement" else f" ({shots} shots)"
    return f"{prompts.revise_version(layout)}{shown}; no feedback: {NO_FEEDBACK}"
