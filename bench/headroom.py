"""The feedback-headroom probe on the pool with the bundled model, per annotator and shot count. Not a timed test.

For `--questions` questions of the pool's training articles (the article split of configs/paper.yaml: 2 articles
held out, seed 0), the model answers with each `--shots` (its first answers, with no-answer scores); each annotator
writes feedback on those answers; `laffi headroom` (laffi/feedback/headroom.py) answers again with the refinement
prompt without and with each feedback. Prints one row per (shots, annotator): the annotator's Cohen's kappa against
the gold verdicts, F1 in each condition, the headroom (feedback - no_feedback) with its paired bootstrap interval, and
the wall time. Everything is cached under --out: a re-run with more annotators reuses what exists.

    .venv/bin/python bench/headroom.py --out runs/headroom --questions 300 --shots 0,2 \\
        --annotators reference,simulated-human,llm,learned

Annotators: reference (deterministic, from the gold answers), simulated-human (the labelled stand-in for people),
llm (the bundled model, few-shot, taught by laffi's hand-written examples), learned (the bundled model LoRA-trained
on `--learned-share` of the questions' simulated-human records, `--learned-epochs` epochs, scored verdicts; the
questions it learned from get no AI record and are skipped by the probe).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
POOL = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "squad_v2" / "squad_v2_pool.json"


def training_questions(n: int):
    from laffi.config import ExperimentConfig, load_run_config
    from laffi.data import load_squad, sample_training
    from laffi.pipeline.shared import train_and_eval

    root = Path(__file__).resolve().parents[1]
    cfg = load_run_config(root / "configs" / "paper.yaml", [f"data.path={POOL}"], ExperimentConfig)
    train_all, _ = train_and_eval(cfg, load_squad(POOL))
    return sample_training(train_all, n, cfg.data.split_seed, "question")


def feedback(annotator: str, questions, answers: Path, out: Path, args) -> Path:
    from laffi.config import AnnotateConfig
    from laffi.feedback import reference
    from laffi.feedback.simulated import simulated_human_feedback
    from laffi.files import write_jsonl
    from laffi.pipeline import stages
    from laffi.records import read_predictions

    path = out / f"{annotator}.jsonl"
    if path.exists():
        return path
    preds = read_predictions(answers, questions)
    if annotator == "reference":
        write_jsonl(path, [reference.annotate(q, preds[q.id]) for q in questions])
    elif annotator == "simulated-human":
        write_jsonl(path, simulated_human_feedback(questions, preds))
    elif annotator == "llm":
        stages.annotate(questions, preds, path, AnnotateConfig(annotator="llm"), progress=False)
    elif annotator == "learned":
        share = questions[: round(args.learned_share * len(questions))]
        human = out / "learned-human.jsonl"
        write_jsonl(human, simulated_human_feedback(share, {q.id: preds[q.id] for q in share}))
        cfg = AnnotateConfig(annotator="llm", learn_from_examples=True, examples=str(human),
                             learn_epochs=args.learned_epochs, verdict="score")  # fmt: skip
        stages.annotate(questions, preds, path, cfg, progress=False)
    else:
        raise SystemExit(f"headroom: unknown annotator {annotator!r}")
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("runs/headroom"))
    parser.add_argument("--questions", type=int, default=300)
    parser.add_argument("--shots", default="0,2")
    parser.add_argument("--annotators", default="reference,simulated-human")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--learned-share", type=float, default=0.25)
    parser.add_argument("--learned-epochs", type=float, default=5.0)
    args = parser.parse_args()

    from laffi.config import AnswerConfig, ModelConfig
    from laffi.data import write_squad
    from laffi.feedback.headroom import markdown
    from laffi.feedback.report import annotator_summary
    from laffi.models import resolve_device, resolve_dtype
    from laffi.pipeline import stages
    from laffi.records import read_feedback

    device = resolve_device("auto")
    model = ModelConfig("bundled", resolve_dtype("auto", device), device)
    questions = training_questions(args.questions)
    args.out.mkdir(parents=True, exist_ok=True)
    data = args.out / "questions.json"
    write_squad(questions, data)
    rows = []
    for shots in [int(k) for k in args.shots.split(",")]:
        folder = args.out / f"{shots}shot"
        folder.mkdir(exist_ok=True)
        answers = folder / "answers.json"
        if not answers.exists():
            start = time.perf_counter()
            stages.answer(questions, answers, model, AnswerConfig(shots=shots), progress=False)
            print(f"{shots}-shot first answers: {time.perf_counter() - start:.0f} s", flush=True)
        for annotator in args.annotators.split(","):
            start = time.perf_counter()
            fb = feedback(annotator, questions, answers, folder, args)
            made = time.perf_counter() - start
            start = time.perf_counter()
            h = stages.headroom(questions, answers, fb, folder / annotator / "H.json", model,
                                AnswerConfig(max_new_tokens=args.max_new_tokens), progress=False,
                                data_file=data)  # fmt: skip
            seconds = time.perf_counter() - start
            kappa = annotator_summary(read_feedback(fb))["cohen_kappa"]
            print(f"\n## {shots}-shot first answers, {annotator} feedback (kappa {kappa:.3f}; feedback {made:.0f} s, "
                  f"probe {seconds:.0f} s)\n\n{markdown(h)}", flush=True)  # fmt: skip
            f1 = {c: v["scores"]["f1"] for c, v in h["conditions"].items()}
            d = h["headroom"]
            rows.append(f"| {shots} | {annotator} | {kappa:.3f} | {h['questions']} | {f1['first']:.1f} | "
                        f"{f1['no_feedback']:.1f} | {f1['verdict_only']:.1f} | {f1['no_answer_sentence']:.1f} | "
                        f"{f1['feedback']:.1f} | {d['f1']:+.1f} ({100 * d['ci_low']:+.1f} to {100 * d['ci_high']:+.1f},"
                        f" p = {d['p_value']:.3f}) | {seconds / 60:.1f} |")  # fmt: skip
    print("\n| shots | annotator | kappa | questions | first | no_feedback | verdict_only | no_answer_sentence | "
          "feedback | headroom (feedback - no_feedback) | probe min |\n"
          "|---:|---|---:|---:|---:|---:|---:|---:|---:|---|---:|\n" + "\n".join(rows))


if __name__ == "__main__":
    main()
