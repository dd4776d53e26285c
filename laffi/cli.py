"""Command-line entry points. Thin: parse, call one library function, print.

This is the only place that turns a `LaffiError` into one line on stderr and exit code 2.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from dataclasses import fields
from pathlib import Path
from typing import Any

import typer

from laffi import methods
from laffi.cli_options import config_options, field_option, set_option
from laffi.cli_process import run_command
from laffi.config import AnnotateConfig, AnswerConfig, ExperimentConfig
from laffi.errors import LaffiError
from laffi.outputs import check_not_input, check_output_dir, check_output_file, database, show
from laffi.records import read_feedback, read_predictions

app = typer.Typer(
    add_completion=False,
    pretty_exceptions_enable=False,
    no_args_is_help=True,
    help="Fine-tune language models on natural-language feedback (LaFFi) and evaluate them on SQuAD 2.0.",
)

PLAN_HELP = ("Make nothing: print each cell's examples, optimizer steps and token positions (counted with the "
             "tokenizer) and its estimated peak memory and wall time (docs/scaling.md).")
PLAN_FOR_HELP = ("With --plan: 'here' (a short probe on this machine) or h100, h200, a100, l4 (from FLOPs and "
                 "bandwidth).")
PROBE_HELP = "With --plan here: time two training steps and a few answers (else no time estimate)."
PLAN_SHAPE_HELP = ("With --plan: plan for a model of this architecture (a transformers config.json, e.g. "
                   "configs/shapes/llama-2-7b.json; no weights needed) with model.name's tokenizer.")


def _print(text: str) -> None:
    """Print a command's result on stdout; a stdout that cannot take it (a full disk, /dev/full, a closed pipe) is a
    one-line error naming it. Standard output then goes to os.devnull, so the exit's flush fails no second time."""
    try:
        typer.echo(text)
    except OSError as e:
        with contextlib.suppress(OSError, ValueError):
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            os.close(devnull)
        raise LaffiError(f"stdout: cannot write ({(e.strerror or type(e).__name__).lower()})") from None


@app.command()
@config_options({"model": ["name", "dtype", "device"], "answer": [f.name for f in fields(AnswerConfig)]},
                flags={"model.name": "model", "answer.revise_rounds": "rounds"})
def answer(
    data: Path = typer.Option(..., help="SQuAD 2.0 JSON file ('bundled' for the shipped excerpt)."),
    out: Path = typer.Option(..., help="Predictions file to write: {question_id: answer}, '' = abstain."),
    adapter: Path | None = typer.Option(None, help="PEFT adapter directory to apply."),
    limit: int | None = typer.Option(None, min=1, help="Answer only the first N questions of the file."),
    generations: Path | None = typer.Option(None, help="Also write raw generations (JSONL) here."),
    revise: bool = typer.Option(False, help="Then predict feedback on each answer with the same (LaFFi) adapter and "
                                "take the right answer it states when it judges the answer incorrect (at least one "
                                "round: --rounds)."),
    first_answers: Path | None = typer.Option(None, help="With --revise: revise the answers in this generations "
                                              "JSONL (written by an earlier `--generations`) instead of answering "
                                              "again."),
    restart: bool = typer.Option(False, "--restart", help="Discard the partial answers an interrupted run left "
                                 "beside OUT and answer afresh (a resume with other settings is refused)."),
    progress: bool = typer.Option(True, help="Show progress bars."),
    cfg: Any = None,
) -> None:
    """Answer questions with a few-shot QA prompt (batched greedy decoding; resumes if interrupted).

    Each answer's no-answer probability (the abstention phrase's first token against the answer's own, at the first
    answer position) goes to OUT with the suffix .na_prob.json, the official --na-prob-file format (not with
    --revise). With --revise, each question's history (first answer, its probability of 'Verdict:
    incorrect', predicted feedback, final answer) goes to OUT with the suffix .revisions.jsonl; --revise-threshold T
    revises only the answers whose probability is above T. Settings come from the options, --set and --config (its
    `model:` and `answer:` sections)."""
    from dataclasses import replace

    from laffi.data import load_squad, resolve_data_path
    from laffi.engines.allocator import keep_freed_memory
    from laffi.models import resolve_device
    from laffi.pipeline import stages

    # Before any work: a device this machine lacks is one line, and nothing is written.
    cfg = replace(cfg, model=replace(cfg.model, device=resolve_device(cfg.model.device, "--device")))
    inputs = [("--data", data), ("--adapter", adapter), ("--first-answers", first_answers),
              ("--model", cfg.model.name)]
    check_output_file(out, "--out", inputs)
    beside = [stages.na_prob_path(out), stages.first_token_na_prob_path(out), stages.revisions_path(out),
              stages.timing_path(out)]  # fmt: skip
    for path in beside:  # written beside OUT: none may be an input either
        check_not_input(path, f"--out {show(out)} writes", inputs)
    if generations is not None:
        check_output_file(generations, "--generations", [*inputs, ("--out", out),
                                                         *((f"--out {show(out)} writes", b) for b in beside)])
    keep_freed_memory()  # before any tensor exists: answering ~6 % faster (engines/allocator.py; not for training)
    _library_bars(progress)
    questions = load_squad(resolve_data_path(str(data)))[:limit]
    settings = replace(cfg.answer, revise_rounds=max(1, cfg.answer.revise_rounds)) if revise else cfg.answer
    with _no_unused_resume_records():
        preds = stages.answer(questions, out, cfg.model, settings, str(adapter) if adapter else None,
                              generations_out=generations, progress=progress, first=first_answers,
                              where=str(data), restart=restart)  # fmt: skip
    abstained = sum(1 for a in preds.values() if not a)
    typer.echo(f"wrote {len(preds)} answers to {out} ({abstained} abstentions)", err=True)


annotate_app = typer.Typer(invoke_without_command=True, no_args_is_help=False,
                           help="Write feedback on predicted answers (or: annotate export / import).")
app.add_typer(annotate_app, name="annotate")


@annotate_app.callback()
@config_options({"annotate": [f.name for f in fields(AnnotateConfig)]},
                flags={"annotate.correct_threshold": "threshold"})
def annotate(
    ctx: typer.Context,
    data: Path | None = typer.Option(None, help="SQuAD 2.0 JSON file with the gold answers (required)."),
    predictions: Path | None = typer.Option(None, help="Predictions file {question_id: answer} (required)."),
    out: Path | None = typer.Option(None, help="Feedback records to write (JSONL) (required, but with "
                                    "--select-human)."),
    limit: int | None = typer.Option(None, min=1, help="Annotate only the first N questions of the data file that "
                                     "have a prediction."),
    select_human: int | None = typer.Option(None, min=1, help="Write no feedback: choose the N questions people should "
                                            "annotate first. The learned annotator (--annotator llm "
                                            "--learn-from-examples), fine-tuned on --examples (the human records so "
                                            "far), scores every other question; --out-queue gets the N whose "
                                            "P(incorrect) is closest to its cut (--verdict-threshold), least sure "
                                            "first: the order `laffi annotate-server --queue` serves."),
    out_queue: Path | None = typer.Option(None, help="With --select-human: the selection file to write (JSON)."),
    cfg: Any = None,
) -> None:
    """Write natural-language feedback on each predicted answer."""
    if ctx.invoked_subcommand is not None:
        return
    if (select_human is None) != (out_queue is None):
        raise LaffiError("annotate: --select-human N and --out-queue FILE go together")
    if select_human is not None and out is not None:
        raise LaffiError("annotate: --select-human writes --out-queue, no feedback: leave out --out")
    from laffi.data import load_squad, resolve_data_path
    from laffi.pipeline import stages

    for name, value in (("--data", data), ("--predictions", predictions), ("--out", out)):
        if value is None and not (name == "--out" and select_human is not None):
            raise LaffiError(f"annotate: {name} is required")
    from laffi.feedback import annotators

    settings = cfg.annotate
    runs_model = annotators.get(settings.annotator, "--annotator").runs_model
    if runs_model and not settings.endpoint:
        from laffi.models import resolve_device

        resolve_device(settings.device, "--device")  # before any work: a device this machine lacks is one line
    learn_from_examples = settings.learn_from_examples
    inputs = [("--data", data), ("--predictions", predictions), ("--examples", settings.examples or None),
              ("--model", settings.model)]
    if select_human is not None:
        if not (runs_model and learn_from_examples):
            raise LaffiError("annotate: --select-human needs the learned annotator (--annotator llm "
                             "--learn-from-examples)")
        check_output_file(out_queue, "--out-queue", inputs)
        from laffi.feedback.llm import default_examples_path
        from laffi.pipeline.shared import select_queue

        questions = load_squad(resolve_data_path(str(data)))
        preds = read_predictions(predictions, questions)
        if limit is not None:
            questions = [q for q in questions if q.id in preds][:limit]
            preds = {q.id: preds[q.id] for q in questions}
        examples = read_feedback(Path(settings.examples) if settings.examples else default_examples_path())
        chosen = select_queue(questions, preds, examples, out_queue, settings, select_human)
        typer.echo(f"wrote a queue of {len(chosen['order'])} of {chosen['scored']} questions to {out_queue}: "
                   f"P(incorrect) closest to {chosen['cut']:.4f}, the cut of the annotator learned from "
                   f"{len(examples)} human records ({chosen['adapter']}); serve it: laffi annotate-server --queue "
                   f"{out_queue}", err=True)  # fmt: skip
        return
    check_output_file(out, "--out", inputs)
    from laffi.feedback.llm import failures_path

    check_not_input(failures_path(out), f"--out {show(out)} writes", inputs)  # the LLM's unparsed replies
    questions = load_squad(resolve_data_path(str(data)))
    preds = read_predictions(predictions, questions)
    if limit is not None:
        questions = [q for q in questions if q.id in preds][:limit]
        preds = {q.id: preds[q.id] for q in questions}
    records = stages.annotate(questions, preds, out, settings)
    correct = sum(r.verdict == "correct" for r in records)
    extra = ""
    if runs_model:
        from laffi.feedback.llm import failures_path, read_failures, summary

        s = summary(records, read_failures(failures_path(out)))
        extra = f"; {s['failures']} unparsed replies in {failures_path(out)}; {s['tokens']} tokens, {s['seconds']} s"
        if learn_from_examples:
            from laffi.feedback.learned import INFO
            from laffi.files import read_json
            from laffi.pipeline.stages import annotator_adapter_path

            adapter = annotator_adapter_path(out)
            info = read_json(adapter / INFO)
            extra += (f"; learned from {len(info['learned_from'])} examples in {info['seconds']} s (adapter "
                      f"{adapter}), their questions skipped")  # fmt: skip
    typer.echo(f"wrote {len(records)} feedback records to {out} ({correct} correct){extra}", err=True)


@annotate_app.command("export")
def annotate_export(
    db: Path = typer.Option(..., help="Annotation database (SQLite) of `laffi annotate-server`."),
    out: Path = typer.Option(..., help="Feedback records to write, annotator = human:<name>: FeedbackRecord JSONL "
                             "(.jsonl), or UTF-8 CSV (.csv) with the columns `annotate import` reads."),
    annotator: str | None = typer.Option(None, help="Only this annotator's work: NAME or human:NAME (an unknown "
                                         "name is an error)."),
    unsure: bool = typer.Option(False, "--unsure", help="Also the annotations marked unsure."),
    skipped: bool = typer.Option(False, "--skipped", help="Also the skipped items (empty verdict and feedback: not "
                                 "loadable as training feedback)."),
) -> None:
    """Export human annotations as feedback records (the same type every annotator writes), each with the answer
    it judged."""
    import csv
    import io

    from laffi.files import atomic_write_text, write_jsonl

    check_output_file(out, "--out", database("--db", db))
    if out.suffix not in (".jsonl", ".csv"):
        raise LaffiError(f"--out: {show(out)}: the name must end in .jsonl (feedback records) or .csv")
    store = _require_db(db)
    records = store.export(annotator, include_unsure=unsure, include_skipped=skipped)
    store.close()
    if out.suffix == ".csv":
        text = io.StringIO()
        writer = csv.writer(text)
        writer.writerow(["id", "verdict", "feedback", "annotator", "seconds", "predicted_answer", "right_answer"])
        for r in records:  # right_answer: '' = unanswerable; `annotate import` reads the other columns
            writer.writerow([r.id, r.verdict, r.feedback, r.annotator, r.meta.get("seconds", ""), r.predicted_answer,
                             r.meta.get("right_answer", "")])
        atomic_write_text(out, text.getvalue())
    else:
        write_jsonl(out, records)
    typer.echo(f"wrote {len(records)} human feedback records to {out}", err=True)


@annotate_app.command("import")
def annotate_import(
    db: Path = typer.Option(..., help="Annotation database (SQLite) whose items the feedback is about."),
    file: Path = typer.Option(..., "--file", help="Feedback written elsewhere: FeedbackRecord JSONL, or UTF-8 CSV "
                              "with columns id, verdict, feedback[, annotator, seconds, predicted_answer]."),
    annotator: str | None = typer.Option(None, help="Annotator name for every row (else the file's column)."),
) -> None:
    """Import feedback written elsewhere into the annotation database (then `annotate export` includes it).

    All or nothing (every row is checked before any is written) and idempotent: a row replaces the same annotator's
    annotation of the same item and answer, so importing a file twice is the same as once."""
    check_not_input(db, "--db", [("--file", file)])
    store = _require_db(db)
    n = store.import_file(file, annotator)
    store.close()
    typer.echo(f"imported {n} annotations into {db}", err=True)


def _require_db(db: Path):  # -> laffi.server.store.Store (imported lazily: the server's modules load slowly)
    """Open an existing annotation database; a missing file, a directory or another kind of file is an error."""
    from laffi.server.store import Store

    return Store(db, create=False)


annotators_app = typer.Typer(no_args_is_help=True, help="Manage the annotation app's annotators.")
app.add_typer(annotators_app, name="annotators")


@annotators_app.command("add")
def annotators_add(
    name: str = typer.Argument(..., help="Annotator name (letters, digits, '-', '_', '.')."),
    db: Path = typer.Option(Path("feedback.sqlite"), help="Annotation database (created if missing)."),
    admin: bool = typer.Option(False, help="May export everyone's annotations from the app."),
) -> None:
    """Create an annotator and print their token (shown only once)."""
    from laffi.server.imports import check_annotator_name
    from laffi.server.store import Store

    check_annotator_name(name)  # before the database is created: a refused name leaves no file behind
    store = Store(db)
    try:
        token = store.add_annotator(name, admin)
        try:
            _print(token)
        except LaffiError:
            store.remove_annotator(name)  # a token no one saw: the annotator is not made
            raise
    finally:
        store.close()


@annotators_app.command("list")
def annotators_list(db: Path = typer.Option(Path("feedback.sqlite"), help="Annotation database.")) -> None:
    """Every annotator: name, role, whether their token works, and their counts."""
    store = _require_db(db)
    rows = store.list_annotators()
    store.close()
    for r in rows:
        role, state = "admin" if r["admin"] else "annotator", "active" if r["active"] else "revoked"
        _print(f"{r['name']}\t{role}\t{state}\t{r['annotated']} annotated, {r['unsure']} unsure, "
                   f"{r['skipped']} skipped, {r['todo']} to do")  # fmt: skip


@annotators_app.command("revoke")
def annotators_revoke(
    name: str = typer.Argument(..., help="Annotator whose token stops working (their annotations stay)."),
    db: Path = typer.Option(Path("feedback.sqlite"), help="Annotation database."),
) -> None:
    """Revoke an annotator's token at once (reset-token gives them a new one)."""
    store = _require_db(db)
    store.revoke(name)
    store.close()
    typer.echo(f"revoked {name}'s token", err=True)


@annotators_app.command("reset-token")
def annotators_reset_token(
    name: str = typer.Argument(..., help="Annotator who gets a new token (the old one stops working)."),
    db: Path = typer.Option(Path("feedback.sqlite"), help="Annotation database."),
) -> None:
    """Print a new token for an annotator (shown only once)."""
    store = _require_db(db)
    token = store.reset_token(name)
    store.close()
    _print(token)


@app.command("annotate-server")
def annotate_server(
    data: Path = typer.Option(..., help="SQuAD 2.0 JSON file with the questions and gold answers."),
    predictions: Path = typer.Option(..., help="Predictions file {question_id: answer} to annotate."),
    db: Path = typer.Option(..., help="Annotation database (SQLite, WAL mode; created if missing)."),
    host: str = typer.Option("127.0.0.1", help="Address to listen on."),
    port: int = typer.Option(8000, min=1, max=65535, help="Port to listen on."),
    drafts: Path | None = typer.Option(None, help="AI feedback (JSONL, from `laffi annotate --annotator llm`) that "
                                       "prefills each item whose answer it judged, to accept or edit."),
    guidelines: Path | None = typer.Option(None, help="Annotation guidelines (markdown) shown in the app (default: "
                                           "laffi/resources/annotation_guidelines.md)."),
    overlap: int | None = typer.Option(None, min=1, help="Assign each item to K annotators (each sees only their "
                                       "items; default: everyone sees every item)."),
    assign_seed: int = typer.Option(0, help="Seed of the order in which items are shared out (with --overlap)."),
    queue: Path | None = typer.Option(None, help="Selection file of `laffi annotate --select-human N --out-queue "
                                      "FILE`: serve only its items, in its order (those the learned annotator is "
                                      "least sure of first)."),
) -> None:
    """Serve the human annotation web app (create annotators first: laffi annotators add NAME --db DB)."""
    from laffi.data import load_squad, resolve_data_path
    from laffi.server.app import bind, prepare, read_inputs, serve

    check_not_input(db, "--db", [("--data", data), ("--predictions", predictions), ("--drafts", drafts),
                                 ("--guidelines", guidelines), ("--queue", queue)])  # fmt: skip
    questions = load_squad(resolve_data_path(str(data)))
    preds = read_predictions(predictions, questions)
    ai_drafts, guidelines_text = read_inputs(drafts, guidelines)
    sock = bind(host, port)  # a busy port is a one-line error before the database is touched
    try:
        done = prepare(db, questions, preds, ai_drafts, drafts, overlap, assign_seed, queue)
    except BaseException:
        sock.close()
        raise
    typer.echo(f"{done}; serving on http://{host}:{port}/", err=True)
    serve(db, sock, guidelines_text)


@app.command("feedback-report")
@config_options({"annotate": ["correct_threshold"]}, flags={"annotate.correct_threshold": "threshold"})
def feedback_report(
    human: Path = typer.Option(..., help="Human (or simulated-human / reference) feedback records (JSONL)."),
    ai: Path = typer.Option(..., help="AI feedback records (JSONL), e.g. from annotate --annotator llm."),
    failures: Path | None = typer.Option(None, help="The AI run's unparsed replies (default: AI.failures.jsonl "
                                         "beside --ai, when it exists)."),
    out: Path | None = typer.Option(None, help="Also write the report as JSON here."),
    filtered_out: Path | None = typer.Option(None, help="Write the AI records that do not contradict the gold "
                                             "answers here (JSONL)."),
    cfg: Any = None,
) -> None:
    """Agreement of AI with human feedback (accuracy, Cohen's kappa), contradictions with the gold answers, cost."""
    threshold = cfg.annotate.correct_threshold
    from laffi.feedback.llm import failures_path, read_failures
    from laffi.feedback.report import feedback_report as build
    from laffi.feedback.report import filter_contradictions, report_markdown
    from laffi.files import write_json, write_jsonl

    failures = failures or (failures_path(ai) if failures_path(ai).exists() else None)
    inputs = [("--human", human), ("--ai", ai), ("--failures", failures)]
    if out is not None:
        check_output_file(out, "--out", inputs)
    if filtered_out is not None:
        check_output_file(filtered_out, "--filtered-out", [*inputs, ("--out", out)])
    ai_records = read_feedback(ai)
    n_fail = len(read_failures(failures)) if failures else None
    rep = build(read_feedback(human), ai_records, n_fail, threshold)
    _print(report_markdown(rep))
    if out:
        write_json(out, rep)
    if filtered_out:
        kept = filter_contradictions(ai_records, threshold)
        write_jsonl(filtered_out, kept)
        typer.echo(f"wrote {len(kept)} of {len(ai_records)} AI records to {filtered_out}", err=True)


@app.command("annotators-compare")
@config_options({"annotate": ["correct_threshold"]}, flags={"annotate.correct_threshold": "threshold"})
def annotators_compare(
    feedback: list[str] = typer.Option(..., help="NAME=FB.jsonl, once per annotator (e.g. few-shot=AI.jsonl "
                                       "learned=L.jsonl reference=REF.jsonl): feedback on the same answers."),
    ids_from: Path | None = typer.Option(None, help="Compare only the questions of this SQuAD file (e.g. the "
                                         "held-out training questions)."),
    out: Path | None = typer.Option(None, help="Also write the comparison as JSON here."),
    cfg: Any = None,
) -> None:
    """Each annotator's feedback against the reference annotator's verdict: agreement, Cohen's kappa (per class too),
    feedback contradicting the gold answers, feedback stating a parseable right answer, tokens and seconds per item."""
    threshold = cfg.annotate.correct_threshold
    from laffi.feedback.learned import INFO
    from laffi.feedback.llm import failures_path, read_failures
    from laffi.feedback.report import annotator_summary, compare_markdown
    from laffi.files import read_json, write_json

    given: dict[str, Path] = {}
    for item in feedback:
        name, sep, path_text = item.partition("=")
        if not sep or not name or not path_text:
            raise LaffiError(f"--feedback: expected NAME=FILE, got '{item}'")
        if name in given:
            raise LaffiError(f"--feedback: the name '{name}' is given twice ({name}={given[name]} and {item}); "
                             "give each annotator its own name")  # fmt: skip
        given[name] = Path(path_text)
    if out is not None:
        check_output_file(out, "--out", [*((f"--feedback {n}=", p) for n, p in given.items()),
                                         *((f"--feedback {n}= (its failures)", failures_path(p))
                                           for n, p in given.items()), ("--ids-from", ids_from)])  # fmt: skip
    keep = None
    if ids_from is not None:
        from laffi.data import load_squad, resolve_data_path

        keep = {q.id for q in load_squad(resolve_data_path(str(ids_from)))}
    summaries = {}
    for name, path in given.items():
        records = [r for r in read_feedback(path) if keep is None or r.id in keep]
        fails = failures_path(path)
        n_fail = len([f for f in read_failures(fails) if keep is None or f.id in keep]) if fails.exists() else None
        adapter = next((r.meta["adapter"] for r in records if r.meta.get("adapter")), None)
        info = Path(adapter) / INFO if adapter else None
        seconds = read_json(info).get("seconds") if info is not None and info.exists() else None
        summaries[name] = annotator_summary(records, n_fail, threshold, seconds)
    _print(compare_markdown(summaries))
    if out:
        write_json(out, summaries)


@app.command()
@config_options({"model": ["name", "dtype", "device"], "answer": ["shots"], "train": ["method"]},
                flags={"model.name": "model", "train.method": "method"})
def train(
    data: Path = typer.Option(..., help="SQuAD 2.0 JSON file of the training questions."),
    out: Path = typer.Option(..., help="Adapter directory to write."),
    feedback: Path | None = typer.Option(None, help="Feedback records (JSONL), needed by laffi methods."),
    human_feedback: Path | None = typer.Option(None, help="Human feedback (JSONL) to mix with --feedback (the AI "
                                               "feedback): see --human-fraction."),
    human_fraction: float = typer.Option(1.0, min=0.0, max=1.0, help="With --human-feedback: the share of training "
                                         "questions that take the human record (seeded; the rest take the AI's)."),
    mix_seed: int = typer.Option(0, help="Seed of the human/AI split."),
    answers_from: Path | None = typer.Option(None, help="critique only: the answers to critique, a predictions "
                                             "file {id: answer}, an adapter directory or base-Kshot (the model with "
                                             "K shots) (= --set train.answers_from=). laffi and laffi+sft take it in "
                                             "`laffi run` / `laffi experiment`, not here: they train on --feedback."),
    restart: bool = typer.Option(False, "--restart", help="Discard the checkpoint an interrupted run left in "
                                 "OUT.partial/ and train afresh (a resume with other settings is refused)."),
    progress: bool = typer.Option(True, help="Show progress bars."),
    cfg: Any = None,
    config_path: Path | None = None,
) -> None:
    """LoRA-fine-tune with one method; saves a PEFT adapter and the loss per step (train_log.jsonl). --config is
    read whole: its model:, answer.shots and train: sections.

    With --human-feedback, the split of the hybrid mix is written to OUT/feedback_mix.json."""
    from dataclasses import replace

    from laffi.data import load_squad, resolve_data_path
    from laffi.models import resolve_device
    from laffi.pipeline import stages
    from laffi.training.distributed import launched

    run_cfg = replace(cfg, train=replace(cfg.train, answers_from=str(answers_from))) if answers_from else cfg
    methods.get(run_cfg.train.method, "--method")
    if not launched():  # under a launcher accelerate places the model
        resolve_device(run_cfg.model.device, "--device")  # before any work: a device this machine lacks is one line
    model_cfg, shots, model, config = run_cfg.model, run_cfg.answer.shots, run_cfg.model.name, config_path
    if not methods.get(run_cfg.train.method).trains:
        raise LaffiError(f"--method: '{run_cfg.train.method}' trains nothing (trained methods: "
                         f"{', '.join(methods.names(trained=True))})")  # fmt: skip
    # Saving replaces the whole directory: none of the inputs may be in it.
    check_output_dir(out, "--out", [("--data", data), ("--feedback", feedback), ("--human-feedback", human_feedback),
                                    ("--config", config), ("--answers-from", answers_from),
                                    ("--model", model)])  # fmt: skip
    if out.is_dir() and any(out.iterdir()) and not (out / "adapter_config.json").exists():
        # Never replace a folder that holds something other than an adapter.
        raise LaffiError(f"--out {show(out)}: not empty and not an adapter directory; give a new directory")
    questions = load_squad(resolve_data_path(str(data)))
    records = read_feedback(feedback) if feedback else None
    split = None
    if human_feedback is not None:
        if records is None:
            raise LaffiError("--human-feedback: also give the AI feedback with --feedback")
        records, split = _mix(read_feedback(human_feedback), records, human_fraction, mix_seed, out)
        typer.echo(f"hybrid feedback: {split['human']} human, {split['ai']} AI records (fraction {human_fraction}, "
                   f"seed {mix_seed}); split in {out / 'feedback_mix.json'}", err=True)  # fmt: skip
    if records is not None:
        known = {q.id for q in questions}
        unknown = [r.id for r in records if r.id not in known]
        if unknown:
            raise LaffiError(f"{feedback}: '{unknown[0]}': question id not in {data} ({len(unknown)} in all)")
    _library_bars(progress)
    with _no_unused_resume_records():
        info = stages.train(questions, records, out, model_cfg, run_cfg.train, shots, progress,
                            restart=restart)  # fmt: skip
    if split is not None:  # written after training: saving the adapter replaces the directory
        from laffi.files import write_json

        write_json(out / "feedback_mix.json", split)
    typer.echo(f"saved adapter to {out}: {info['examples']} examples, {info['steps']} steps, "
               f"final loss {info['final_loss']:.4f}", err=True)  # fmt: skip


@contextlib.contextmanager
def _no_unused_resume_records() -> Any:
    """A command that fails before its first answer or checkpoint leaves no settings record behind
    (`laffi.resume.drop_unused`); partial work and its record stay for the resume."""
    from laffi import resume

    try:
        yield
    except BaseException:
        resume.drop_unused()
        raise


def _library_bars(progress: bool) -> None:
    """--no-progress also silences transformers' own bars (loading weights), not only laffi's."""
    if not progress:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()


def _mix(human: list, ai: list, fraction: float, seed: int, out: Path) -> tuple[list, dict]:
    from laffi.feedback.mix import mix_feedback

    records, split = mix_feedback(human, ai, fraction, seed)
    if not records:
        raise LaffiError("--human-feedback and --feedback have no question id in common")
    return records, split


@app.command()
@config_options({"model": ["name", "dtype", "device"],
                 "answer": ["shots", "max_new_tokens", "batch_size", "workers", "draft_tokens"],
                 "train": ["sdft_teacher_prompt"]},
                flags={"model.name": "model"})  # fmt: skip
def headroom(
    data: Path = typer.Option(..., help="SQuAD 2.0 JSON file with the gold answers ('bundled' for the excerpt)."),
    predictions: Path = typer.Option(..., help="The first answers {question_id: answer}: the ones the feedback "
                                     "judges (its .na_prob.json beside it, if any, scores the 'first' condition)."),
    feedback: Path = typer.Option(..., help="Feedback records (JSONL) on those answers, from any annotator."),
    out: Path = typer.Option(..., help="H.json to write; each condition's predictions go beside it "
                             "(H.<condition>.json, with .na_prob.json)."),
    adapter: Path | None = typer.Option(None, help="PEFT adapter directory to apply."),
    progress: bool = typer.Option(True, help="Show progress bars."),
    cfg: Any = None,
) -> None:
    """How much better the model answers with the feedback in its prompt: the refinement prompt (or, with
    --sdft-teacher-prompt qa, the QA prompt with --shots) with the first answer and no feedback, the verdict alone,
    the feedback minus its right-answer sentence, and the whole feedback, each scored as the official script scores,
    with paired bootstrap tests (laffi/feedback/headroom.py). Questions without a feedback record are listed and
    skipped. Resumable; settings from the options, --set and --config."""
    from dataclasses import replace

    from laffi.data import load_squad, resolve_data_path
    from laffi.feedback.headroom import CONDITIONS, condition_path, markdown
    from laffi.models import resolve_device
    from laffi.pipeline import stages

    cfg = replace(cfg, model=replace(cfg.model, device=resolve_device(cfg.model.device, "--device")))
    inputs = [("--data", data), ("--predictions", predictions), ("--feedback", feedback), ("--adapter", adapter),
              ("--model", cfg.model.name)]  # fmt: skip
    if predictions.with_suffix(".na_prob.json").exists():
        inputs.append(("--predictions' no-answer scores", predictions.with_suffix(".na_prob.json")))
    check_output_file(out, "--out", inputs)
    for condition in CONDITIONS:
        path = condition_path(out, condition)
        check_output_file(path, "--out", inputs)
        check_output_file(path.with_suffix(".na_prob.json"), "--out", inputs)
    data_file = resolve_data_path(str(data))
    questions = load_squad(data_file)
    result = stages.headroom(questions, predictions, feedback, out, cfg.model, cfg.answer,
                             str(adapter) if adapter else None, progress, data_file,
                             cfg.train.sdft_teacher_prompt)  # fmt: skip
    typer.echo(markdown(result))
    if result["skipped"]:
        typer.echo(f"skipped {len(result['skipped'])} questions without a feedback record (listed in {out})", err=True)
    typer.echo(f"wrote {out} and {', '.join(condition_path(out, c).name for c in CONDITIONS)}", err=True)


@app.command()
def score(
    data: Path = typer.Argument(..., help="SQuAD 2.0 JSON file."),
    predictions: Path = typer.Argument(..., help="Predictions file {question_id: answer}."),
    na_prob_file: Path | None = typer.Option(None, "--na-prob-file", "-n", help="No-answer probabilities "
                                             "{question_id: p} (e.g. PREDS.na_prob.json from `laffi answer`): adds "
                                             "best_exact, best_f1 and their thresholds."),
    na_prob_thresh: float = typer.Option(1.0, "--na-prob-thresh", "-t", help="Count a prediction as an abstention "
                                         "when its no-answer probability is above this."),
    only_answered: bool = typer.Option(False, "--only-answered", help="Score only the questions that PREDICTIONS "
                                       "has an entry for (an abstention counts), e.g. after `laffi answer --limit`; "
                                       "without it, a question of DATA missing from PREDICTIONS is an error."),
) -> None:
    """SQuAD 2.0 scores, the same keys and values as the official evaluate-v2.0.py (with the same options)."""
    import math

    from laffi.pipeline import stages

    if not math.isfinite(na_prob_thresh):
        raise LaffiError(f"--na-prob-thresh: must be a finite number, got {na_prob_thresh}")
    _print(json.dumps(stages.score(data, predictions, na_prob_file, na_prob_thresh, only_answered), indent=2))


@app.command()
def run(
    config: Path = typer.Argument(..., help="Run config (YAML)."),
    set_: list[str] = set_option("data.train_questions=300"),
    progress: bool = typer.Option(True, help="Show progress bars."),
    plan: bool = typer.Option(False, "--plan", help=PLAN_HELP),
    plan_for: str = typer.Option("here", "--plan-for", help=PLAN_FOR_HELP),
    probe: bool = typer.Option(True, "--probe/--no-probe", help=PROBE_HELP),
    plan_shape: Path | None = typer.Option(None, "--plan-shape", help=PLAN_SHAPE_HELP),
) -> None:
    """Every stage for each method of `methods` at one training size and seed: cached and resumable; prints the
    results table (the experiment of `laffi experiment` with one cell per method)."""
    from laffi.config import load_run_config
    from laffi.grid import check_method, run_preset

    cfg = load_run_config(config, set_, check_method=check_method)
    if plan:
        return _plan(run_preset(cfg), plan_for, probe, plan_shape)
    check_output_dir(cfg.out_dir, "out_dir", _config_inputs(config, cfg))
    _experiment(run_preset(cfg), progress)


def _plan(cfg: Any, plan_for: str, probe: bool, shape: Path | None) -> None:
    from laffi.pipeline.plan import markdown, model_shape, plan_grid

    config = model_shape(shape) if shape is not None else None
    typer.echo(markdown(plan_grid(cfg, plan_for, probe, log=lambda m: typer.echo(m, err=True), model_config=config)))


@app.command()
def experiment(
    config: Path = typer.Argument(..., help="Experiment config (YAML): a run config plus seeds, train_sizes and the "
                                  "human_fractions ablation."),
    set_: list[str] = set_option("seeds=[0,1]"),
    progress: bool = typer.Option(True, help="Show progress bars."),
    workers: int | None = field_option(ExperimentConfig, "workers", "--workers"),
    shard: str | None = typer.Option(None, help="I/N: run the shared stages and every N-th cell from the I-th "
                                     "(I = 0..N-1, e.g. a SLURM array's task id) against a run directory that other "
                                     "shards share; the last shard to finish writes the report."),
    report_only: bool = typer.Option(False, "--report-only", help="Make nothing: write the report of the cells "
                                     "out_dir already holds for this config and list the ones not made yet (a "
                                     "grid made a size or a machine at a time)."),
    plan: bool = typer.Option(False, "--plan", help=PLAN_HELP),
    plan_for: str = typer.Option("here", "--plan-for", help=PLAN_FOR_HELP),
    probe: bool = typer.Option(True, "--probe/--no-probe", help=PROBE_HELP),
    plan_shape: Path | None = typer.Option(None, "--plan-shape", help=PLAN_SHAPE_HELP),
) -> None:
    """The grid methods x seeds x training sizes plus the human-feedback ablation, every stage cached and resumable;
    writes results.json, results.md and report.html."""
    from laffi.config import load_run_config
    from laffi.grid import check_method

    if report_only and shard:
        raise LaffiError("--report-only: not with --shard (it makes nothing to share)")
    extra = [f"workers={workers}"] if workers else []
    cfg = load_run_config(config, [*set_, *extra], ExperimentConfig, check_method)
    if plan:
        return _plan(cfg, plan_for, probe, plan_shape)
    check_output_dir(cfg.out_dir, "out_dir", _config_inputs(config, cfg))
    _experiment(cfg, progress, _shard(shard) if shard else None, report_only)


def _config_inputs(config: Path, cfg: Any) -> list[tuple[str, str | Path | None]]:
    """The files and folders a run or experiment config reads (those that name a path): none may be in out_dir."""
    inputs: list[tuple[str, str | Path | None]] = [("the config", config)]
    for section, key in (("data", "path"), ("data", "eval_path"), ("model", "name"), ("annotate", "examples"),
                         ("annotate", "model"), ("train", "answers_from"), (None, "human_feedback")):  # fmt: skip
        holder = getattr(cfg, section, None) if section else cfg
        value = getattr(holder, key, None)
        if isinstance(value, str) and value:
            inputs.append((f"{section}.{key}" if section else key, value))
    return inputs


def _shard(text: str) -> tuple[int, int]:
    i, sep, n = text.partition("/")
    if not (sep and i.strip().isdigit() and n.strip().isdigit() and 0 <= int(i) < int(n)):
        raise LaffiError(f"--shard: expected I/N with 0 <= I < N, got '{text}'")
    return int(i), int(n)


def _experiment(cfg: Any, progress: bool, shard: tuple[int, int] | None = None, report_only: bool = False) -> None:
    from laffi.experiment import run_and_report

    _library_bars(progress)
    summary = run_and_report(cfg, log=lambda m: typer.echo(m, err=True), progress=progress, shard=shard,
                             report_only=report_only)  # fmt: skip
    out = Path(cfg.out_dir)
    if summary is None:
        _print(f"shard {shard[0]}/{shard[1]} done; the last shard to finish writes {out / 'results.md'}")
        return
    from laffi.report.render import groups_table

    # The methods table and the headline sentence(s); the paired tests, cells and plots are in the report.
    sentences = [summary.verdict] + ([summary.verdict_calibrated] if summary.verdict_calibrated else [])
    _print(groups_table(summary.abstain, summary.groups) + "\n\n" + "\n".join(sentences)
           + f"\n\nresults: {out / 'results.md'} (and results.json); report: {out / 'report.html'}")


@app.command()
@config_options({"model": ["name", "dtype", "device"], "answer": ["shots"]}, flags={"model.name": "model"})
def attention(
    data: Path = typer.Option(..., help="SQuAD 2.0 JSON file ('bundled' for the shipped excerpt)."),
    adapters: str = typer.Option("base", help="Models to compare, comma-separated: 'base' (no adapter), an adapter "
                                 "directory, or NAME=DIR. E.g. base,runs/pool/sft/adapter,runs/pool/laffi/adapter."),
    out: Path = typer.Option(Path("runs/attention"), help="Folder for attention.json, attention.md and the PNGs."),
    questions: int = typer.Option(30, min=1, help="Questions measured (a seeded sample of the file, same for all)."),
    seed: int = typer.Option(0, help="Seed of the question sample."),
    cfg: Any = None,
) -> None:
    """Attention entropy, distance and where the answer position looks, per layer and head, for each model."""
    from laffi.attention import attention_report, parse_adapters
    from laffi.models import resolve_device, resolve_dtype

    model, shots = cfg.model.name, cfg.answer.shots
    device = resolve_device(cfg.model.device, "--device")
    dtype = resolve_dtype(cfg.model.dtype, device)  # before any work: a device this machine lacks is one line
    chosen = parse_adapters(adapters)
    check_output_dir(out, "--out", [("--data", data), ("--model", model),
                                    *((f"--adapters {name}=", path) for name, path in chosen.items())])  # fmt: skip
    report = attention_report(model, str(data), chosen, questions, out, shots=shots, dtype=dtype,
                              seed=seed, log=lambda m: typer.echo(m, err=True), device=device)  # fmt: skip
    _print(report["markdown"])
    typer.echo(f"wrote {report['files']['json']}, {report['files']['markdown']} and the plots in {out}", err=True)


def main(argv: list[str] | None = None) -> None:
    """`laffi ...`: the command table above, run as a process (laffi/cli_process.py: signals, warnings, exit codes)."""
    run_command(app, argv)


if __name__ == "__main__":
    main()
