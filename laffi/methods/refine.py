"""`refine`: learn from revisions that the feedback accepts (Scheurer et al. 2022, "ILF").

Before training, the model being trained (no adapter) is shown its first answer and the feedback on it and writes a
revised answer; the revisions that the feedback's verdict and the SQuAD normalisation accept become the targets of the
plain QA prompt. Every decision, with its reason, is saved beside the adapter (`refine_items.jsonl`). Generation
resumes from `<adapter>.partial/`, which the trainer also uses for its checkpoints.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from laffi import prompts
from laffi.config import ModelConfig, TrainConfig
from laffi.errors import LaffiError
from laffi.methods.common import Method, generate, qa_examples, work_dir
from laffi.metrics import normalize_answer
from laffi.records import FeedbackRecord, Question
from laffi.training.examples import Example

# Why a revision was kept or dropped (the report counts each).
KEPT_CONFIRMED = "kept: repeats the answer the feedback judged correct"
KEPT_MATCHES = "kept: the answer the feedback states"
KEPT_NEW_SPAN = "kept: a new answer that is a span of the passage (the feedback states no answer)"
DROPPED_CHANGED_CORRECT = "dropped: changed the answer the feedback judged correct"
DROPPED_REPEATED_WRONG = "dropped: repeats the answer the feedback judged incorrect"
DROPPED_DISAGREES = "dropped: not the answer the feedback states"
DROPPED_NOT_IN_PASSAGE = "dropped: not a span of the passage"


@dataclass
class RefineDecision:
    id: str
    first_answer: str
    verdict: str
    feedback_answer: str | None  # the right answer the feedback states ("" = abstain), None when it states none
    raw: str  # what the model wrote
    revised_answer: str  # parsed from `raw` ("" = abstain)
    kept: bool
    reason: str


def _same(a: str, b: str) -> bool:
    """Equal after the SQuAD normalisation; an abstention ("") equals only an abstention."""
    return normalize_answer(a) == normalize_answer(b) and bool(a.strip()) == bool(b.strip())


def judge_revision(record: FeedbackRecord, revised: str) -> tuple[bool, str]:
    """Keep a revised answer only when the feedback accepts it: the same answer after a "correct" verdict; after an
    "incorrect" one, a different answer that is the one the feedback states (or, when it states none, a span of the
    passage or an abstention)."""
    first = record.predicted_answer
    if record.verdict == "correct":
        return (True, KEPT_CONFIRMED) if _same(revised, first) else (False, DROPPED_CHANGED_CORRECT)
    if _same(revised, first):
        return False, DROPPED_REPEATED_WRONG
    stated = prompts.parse_feedback(record.feedback)[1]
    if stated is not None:
        return (True, KEPT_MATCHES) if _same(revised, stated) else (False, DROPPED_DISAGREES)
    if not revised or prompts.parse_answer(revised, record.context, require_in_context=True):
        return True, KEPT_NEW_SPAN
    return False, DROPPED_NOT_IN_PASSAGE


def refine_answers(questions: list[Question], feedback: list[FeedbackRecord], out: Path, model: ModelConfig,
                   shots: int, progress: bool = True) -> tuple[dict[str, str], dict[str, Any]]:  # fmt: skip
    """Revised answers that the feedback accepts ({id: answer}) and the report of every decision.

    The model being trained (without adapter) revises its own first answer (the one the feedback is about)."""
    if not feedback:
        raise LaffiError("feedback: method 'refine' needs feedback records (--feedback FEEDBACK.jsonl)")
    by_id = {q.id: q for q in questions}
    records = [r for r in feedback if r.id in by_id]
    if not records:
        raise LaffiError("feedback: no record is about one of the training questions")

    by_record = {r.id: r for r in records}

    def prompt(tokenizer: Any, qid: str) -> str:
        r = by_record[qid]
        return prompts.render(prompts.refine_messages(by_id[qid], r.predicted_answer, r.feedback), tokenizer)

    def parse(qid: str, raw: str) -> str:
        return prompts.parse_answer(raw, by_id[qid].context)

    partial = work_dir(out) / "refine.generations.jsonl"
    gens = generate(list(by_record), prompt, parse, partial, model, None, progress, "refine")
    decisions = []
    for r in records:
        g = gens[r.id]
        kept, reason = judge_revision(r, g.answer)
        decisions.append(RefineDecision(r.id, r.predicted_answer, r.verdict, prompts.parse_feedback(r.feedback)[1],
                                        g.raw, g.answer, kept, reason))  # fmt: skip
    answers = {d.id: d.revised_answer for d in decisions if d.kept}
    reasons: dict[str, int] = {}
    for d in decisions:
        reasons[d.reason] = reasons.get(d.reason, 0) + 1
    summary = {"reviser": f"{model.name} (the model being trained, no adapter)",
               "template_version": prompts.REFINE_TEMPLATE_VERSION, "revised": len(decisions), "kept": len(answers),
               "dropped": len(decisions) - len(answers), "reasons": dict(sorted(reasons.items()))}  # fmt: skip
    if not answers:
        raise LaffiError(f"refine: no revised answer was kept ({', '.join(f'{n} {r}' for r, n in reasons.items())})")
    return answers, {"summary": summary, "items": decisions}


def prepare(questions: list[Question], feedback: list[FeedbackRecord] | None, out: Path, model: ModelConfig,
            cfg: TrainConfig, shots: int, progress: bool) -> tuple[Any, Any, Any]:  # fmt: skip
    answers, report = refine_answers(questions, feedback or [], out, model, shots, progress)
    return feedback, answers, report


def build(questions: list[Question], feedback: list[FeedbackRecord] | None, tokenizer: Any, shots: int, seed: int,
          answers: dict[str, str] | None, train: Any = None) -> list[Example]:  # fmt: skip
    if not feedback:
        raise LaffiError("feedback: method 'refine' needs feedback records (--feedback FEEDBACK.jsonl)")
    if answers is None:
        raise LaffiError("refine: no revised answers (laffi.methods.refine.refine_answers makes them)")
    return qa_examples("refine", questions, answers, tokenizer, shots)


def made_data(d: dict[str, Any]) -> tuple[str, str]:
    """The report's row: revised answers kept for training, and why the rest were dropped."""
    why = "; ".join(f"{n} {reason}" for reason, n in d["reasons"].items())
    return f"revised {d['revised']}, kept {d['kept']}, dropped {d['dropped']}", why


METHOD = Method("refine", "QA prompt -> the model's own revisions that the feedback accepts", build=build,
                reads_feedback=True, prepare=prepare, made_data=made_data, order=50)
