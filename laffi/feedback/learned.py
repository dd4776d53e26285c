"""The learned annotator: the annotator model LoRA-fine-tuned on human-written feedback records, instead of shown them.

The few-shot LLM annotator (llm.py) puts a handful of human records in its prompt; a 135M model copies their form but
not their judgement (docs/results.md). Here every human record becomes one training example of laffi's own loop:

    prompt      the few-shot annotator's prompt minus the shots: system message, then passage, question, gold answers
                and the model's answer (`llm.messages(q, answer, [])`)
    completion  Verdict: correct|incorrect
                Feedback: <the human's feedback>

so the adapter writes replies in exactly the form `llm.parse_reply` reads. The other questions are then annotated with
the adapter (greedy, batched, through the same cached and resumable path as the few-shot annotator; unparsable replies
go to OUT.failures.jsonl, never guessed; a record whose verdict is incorrect states the right answer, appended from the
gold answers where the reply states none: `llm.with_right_answer`). Records are labelled `llm-learned:<model>` and say
in `meta` how many records the annotator learned from and which; `TEMPLATE_VERSION` versions them.

Layering: laffi.feedback sits beside laffi.training and does not import it. This module makes the (prompt, completion)
texts and annotates with a finished adapter; `laffi.pipeline.stages.learn_annotator` runs the training loop on them.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Any

from laffi import prompts
from laffi.config import AnnotateConfig
from laffi.feedback import llm
from laffi.records import FeedbackRecord, Question

TEMPLATE_VERSION = llm.LEARNED_TEMPLATE_VERSION
# Written beside the adapter by the training step: which records it learned from and what it cost.
INFO = "annotator.json"

# A feedback text that repeats its verdict at the start ("Verdict: incorrect. ...", the reference annotator's form):
# the completion states the verdict once, on its own line.
_LEADING_VERDICT = re.compile(r"^\s*verdict\s*:\s*(correct|incorrect)\b[\s.:,;\-]*", re.I)


def annotator_id(cfg: AnnotateConfig) -> str:
    return f"llm-learned:{cfg.model}"


def messages(q: Question, predicted: str) -> list[dict[str, str]]:
    """The learned annotator's prompt: the few-shot annotator's with no shots."""
    return llm.messages(q, predicted, [])


def completion_text(r: FeedbackRecord) -> str:
    """What the annotator learns to reply to a record's prompt: `Verdict: ...` + `Feedback: ...` (llm.reply_text)."""
    return llm.reply_text(r.verdict, _LEADING_VERDICT.sub("", r.feedback).strip() or r.feedback)


def record_question(r: FeedbackRecord) -> Question:
    """The question a feedback record is about (records carry passage, question and gold answers)."""
    return Question(id=r.id, title=r.title, context=r.context, question=r.question, answers=list(r.gold_answers),
                    answer_starts=[-1] * len(r.gold_answers), is_impossible=not r.gold_answers)  # fmt: skip


def training_pairs(records: list[FeedbackRecord], tokenizer: Any) -> list[tuple[str, str, str]]:
    """(id, prompt text, completion text) per human record: the prompt rendered exactly as annotation renders it."""
    return [(r.id, prompts.render(messages(record_question(r), r.predicted_answer), tokenizer), completion_text(r))
            for r in records]  # fmt: skip


def adapter_hash(adapter: Path) -> str:
    """sha256 of the adapter's weight and config files: part of the annotation cache key."""
    h = hashlib.sha256()
    for f in sorted(p for p in Path(adapter).iterdir() if p.is_file() and p.name.startswith("adapter_")):
        h.update(f.name.encode())
        h.update(f.read_bytes())
    return h.hexdigest()


def annotate_learned(questions: list[Question], predictions: dict[str, str], adapter: Path, learned_from: list[str],
                     out: Path, cfg: AnnotateConfig, progress: bool = True,
                     share: float | None = None) -> list[FeedbackRecord]:  # fmt: skip
    """Feedback from the fine-tuned annotator on every question that has a prediction and is not among the records
    it learned from (`learned_from`: their ids; those questions already have human feedback). Writes `out` and
    `OUT.failures.jsonl`; resumes from the prompt cache beside `out`. `share`: the human records' share of incorrect
    verdicts (for `annotate.verdict: score` with the threshold from the human records)."""
    skip = set(learned_from)
    items = [(q, predictions[q.id]) for q in questions if q.id in predictions and q.id not in skip]
    meta = {"learned_from": len(skip), "adapter": str(adapter)}
    return llm.run_prompts(items, [messages(q, pred) for q, pred in items], out, cfg, annotator_id(cfg),
                           TEMPLATE_VERSION, meta, adapter=str(adapter), adapter_key=adapter_hash(adapter),
                           progress=progress, share=share)  # fmt: skip
