"""Command-line entry points. Thin: parse, call one library function, print.

This is the only place that turns a `LaffiError` into one line on stderr and exit code 2.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import typer

from laffi.errors import LaffiError

app = typer.Typer(
    add_completion=False,
    pretty_exceptions_enable=False,
    no_args_is_help=True,
    help="Fine-tune language models on natural-language feedback (LaFFi) and evaluate them on SQuAD 2.0.",
)

MODEL_HELP = "Model: 'bundled' (SmolLM2-135M-Instruct), a Hugging Face id, a local directory or a .gguf file."
DTYPE_HELP = "Weights dtype: float32, bfloat16 or float16."


def _err(msg: str) -> None:
    typer.echo(f"laffi: error: {msg}", err=True)


@app.command()
def answer(
    data: Path = typer.Option(..., help="SQuAD 2.0 JSON file ('bundled' for the shipped excerpt)."),
    out: Path = typer.Option(..., help="Predictions file to write: {question_id: answer}, '' = abstain."),
    model: str = typer.Option("bundled", help=MODEL_HELP),
    adapter: Path | None = typer.Option(None, help="PEFT adapter directory to apply."),
    shots: int = typer.Option(2, min=0, max=4, help="Few-shot examples in the prompt (2+ include an unanswerable)."),
    limit: int | None = typer.Option(None, min=1, help="Answer only the first N questions of the file."),
    batch_size: int = typer.Option(8, min=1, help="Questions decoded together."),
    max_new_tokens: int = typer.Option(32, min=1, help="Longest answer generated, in tokens."),
    dtype: str = typer.Option("bfloat16", help=DTYPE_HELP),
    require_in_context: bool = typer.Option(False, help="Abstain when the answer is not a span of the passage."),
    generations: Path | None = typer.Option(None, help="Also write raw generations (JSONL) here."),
    revise: bool = typer.Option(False, help="Then predict feedback on each answer with the same (LaFFi) adapter and "
                                "take the right answer it states when it judges the answer incorrect."),
    rounds: int = typer.Option(1, min=1, max=10, help="Revision rounds (with --revise)."),
    feedback_max_new_tokens: int = typer.Option(160, min=1, help="Longest predicted feedback (with --revise)."),
) -> None:
    """Answer questions with a few-shot QA prompt (batched greedy decoding; resumes if interrupted).

    With --revise, each question's history (first answer, predicted feedback, final answer) goes to
    OUT with the suffix .revisions.jsonl."""
    from laffi import stages
    from laffi.config import AnswerConfig, ModelConfig
    from laffi.data import load_squad, resolve_data_path

    questions = load_squad(resolve_data_path(str(data)))[:limit]
    cfg = AnswerConfig(shots=shots, batch_size=batch_size, max_new_tokens=max_new_tokens,
                       require_in_context=require_in_context, revise_rounds=rounds if revise else 0,
                       feedback_max_new_tokens=feedback_max_new_tokens)  # fmt: skip
    preds = stages.answer(questions, out, ModelConfig(model, dtype), cfg, str(adapter) if adapter else None,
                          generations_out=generations)  # fmt: skip
    abstained = sum(1 for a in preds.values() if not a)
    typer.echo(f"wrote {len(preds)} answers to {out} ({abstained} abstentions)", err=True)


@app.command()
def annotate(
    data: Path = typer.Option(..., help="SQuAD 2.0 JSON file with the gold answers."),
    predictions: Path = typer.Option(..., help="Predictions file {question_id: answer}."),
    out: Path = typer.Option(..., help="Feedback records to write (JSONL)."),
    annotator: str = typer.Option("reference", help="Who writes the feedback: reference."),
    threshold: float = typer.Option(0.8, min=0.0, max=1.0, help="Best F1 at which an answer is judged correct."),
) -> None:
    """Write natural-language feedback on each predicted answer."""
    from laffi import stages
    from laffi.config import AnnotateConfig
    from laffi.data import load_squad, resolve_data_path

    questions = load_squad(resolve_data_path(str(data)))
    preds = stages.read_predictions(predictions, questions)
    records = stages.annotate(questions, preds, out, AnnotateConfig(annotator, threshold))
    correct = sum(r.verdict == "correct" for r in records)
    typer.echo(f"wrote {len(records)} feedback records to {out} ({correct} correct)", err=True)


@app.command()
def train(
    method: str = typer.Option(..., help="sft, laffi, laffi+sft, coh, refine or critique (docs/methods.md)."),
    data: Path = typer.Option(..., help="SQuAD 2.0 JSON file of the training questions."),
    out: Path = typer.Option(..., help="Adapter directory to write."),
    feedback: Path | None = typer.Option(None, help="Feedback records (JSONL), needed by laffi methods."),
    model: str = typer.Option("bundled", help=MODEL_HELP),
    dtype: str = typer.Option("bfloat16", help=DTYPE_HELP),
    shots: int = typer.Option(2, min=0, max=4, help="Shots of the QA prompt in SFT examples (as at answer time)."),
    config: Path | None = typer.Option(None, help="YAML config whose 'train:' section sets the defaults."),
    set_: list[str] = typer.Option([], "--set", help="Override a setting: --set train.epochs=1 (repeatable)."),
    answers_from: Path | None = typer.Option(None, help="critique: the answers to critique, a predictions file "
                                             "{id: answer} or an adapter directory (= --set train.answers_from=)."),
) -> None:
    """LoRA-fine-tune with one method; saves a PEFT adapter and the loss per step (train_log.jsonl)."""
    from laffi import stages
    from laffi.config import ModelConfig, load_run_config
    from laffi.data import load_squad, resolve_data_path

    extra = [f"train.answers_from={answers_from}"] if answers_from else []
    run_cfg = load_run_config(config, [f"train.method={method}", *set_, *extra])
    questions = load_squad(resolve_data_path(str(data)))
    records = stages.read_feedback(feedback) if feedback else None
    if records is not None:
        known = {q.id for q in questions}
        unknown = [r.id for r in records if r.id not in known]
        if unknown:
            raise LaffiError(f"{feedback}: '{unknown[0]}': question id not in {data} ({len(unknown)} in all)")
    info = stages.train(questions, records, out, ModelConfig(model, dtype), run_cfg.train, shots)
    typer.echo(f"saved adapter to {out}: {info['examples']} examples, {info['steps']} steps, "
               f"final loss {info['final_loss']:.4f}", err=True)  # fmt: skip


@app.command()
def score(
    data: Path = typer.Argument(..., help="SQuAD 2.0 JSON file."),
    predictions: Path = typer.Argument(..., help="Predictions file {question_id: answer}."),
) -> None:
    """SQuAD 2.0 scores, the same keys and values as the official evaluate-v2.0.py."""
    from laffi import stages

    typer.echo(json.dumps(stages.score(data, predictions), indent=2))


@app.command()
def run(
    config: Path = typer.Argument(..., help="Run config (YAML)."),
    set_: list[str] = typer.Option([], "--set", help="Override a setting: --set data.train_questions=300."),
) -> None:
    """All stages from one config; cached and resumable; prints the results table."""
    from laffi.config import load_run_config
    from laffi.experiments import run_pipeline
    from laffi.reports import comparisons_table, results_table

    cfg = load_run_config(config, set_)
    summary = run_pipeline(cfg, log=lambda m: typer.echo(m, err=True))
    held_out = ", ".join(summary["eval_articles"])
    typer.echo(f"\nHeld-out articles: {held_out}; {summary['train_questions']} training / "
               f"{summary['eval_questions']} evaluation questions.\n")  # fmt: skip
    typer.echo(results_table(summary["scores"], summary["statistics"]["f1_ci95"]))
    typer.echo("\nPaired bootstrap over the same questions (F1, 1,000 resamples):\n")
    typer.echo(comparisons_table(summary["statistics"]["paired"]))
    for method, r in summary.get("revision", {}).items():
        typer.echo(f"\n{method}: revision changed {r['changed']} of {r['questions']} answers ({r['helped']} helped, "
                   f"{r['hurt']} hurt); {r['questions_per_second_answer_only']:.2f} questions/s answering, "
                   f"{r['questions_per_second_with_revision']:.2f} with revision")  # fmt: skip
    typer.echo(f"\nresults: {Path(cfg.out_dir) / 'results.json'}")


def main(argv: list[str] | None = None) -> None:
    try:
        app(args=argv, standalone_mode=False)
    except LaffiError as e:
        _err(str(e))
        sys.exit(2)
    except KeyboardInterrupt:
        _err("interrupted (re-run the same command to resume)")
        sys.exit(130)
    except Exception as e:  # click usage errors and the like
        import click

        if isinstance(e, click.exceptions.ClickException):
            e.show()
            sys.exit(e.exit_code)
        if isinstance(e, click.exceptions.Exit):
            sys.exit(e.exit_code)
        if isinstance(e, click.exceptions.Abort):
            sys.exit(1)
        raise


if __name__ == "__main__":
    main()
