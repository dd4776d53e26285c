"""The feedback-headroom probe: how much better a model answers when its feedback is in front of it.

Training a model to predict feedback can only teach it what it can use when the feedback is in its context. For every
question with a feedback record, the same model answers again with the refinement prompt (`prompts.refine_messages`:
the passage, the question, its first answer and a feedback text; or, with `train.sdft_teacher_prompt: qa`, the QA
prompt with its shots and those added, `prompts.qa_revise_messages`: sdft's teacher prompt), in these conditions:

- `first`: the first answers as given (not generated again);
- `no_feedback`: the first answer and no feedback (`NO_FEEDBACK`): what revising alone does;
- `verdict_only`: the first answer and the verdict alone (`Verdict: incorrect.`);
- `no_answer_sentence`: the whole feedback minus the sentence that states the right answer
  (`prompts.without_right_answer`);
- `feedback`: the whole feedback.

The headline is `feedback` - `no_feedback` (the headroom), with a paired bootstrap over the questions. On SQuAD the
right-answer sentence lets a model copy the answer: `no_answer_sentence` shows what is left without it. A predictive
law for self-distillation from feedback (arXiv 2605.30070) says the gain from learning on feedback is roughly linear in
this in-context gap; laffi measures the gap, not the law.

Files: `H.json` (per condition the official evaluation dict and the paired tests), and per condition
`H.<condition>.json` with `H.<condition>.na_prob.json` (first-token no-answer scores on the refinement prompt; for
`first`, the scores beside the given predictions when there are any). Generation resumes from
`.H.<condition>.json.partial.jsonl`; a finished condition's file is reused when its settings record matches.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from laffi import prompts
from laffi.errors import LaffiError
from laffi.files import printable, read_json, write_json
from laffi.records import FeedbackRecord, Question

CONDITIONS = ("first", "no_feedback", "verdict_only", "no_answer_sentence", "feedback")
GENERATED = CONDITIONS[1:]
NO_FEEDBACK = "(none)"
HEADLINE = ("feedback", "no_feedback")


def condition_feedback(condition: str, record: FeedbackRecord) -> str:
    """The feedback text the refinement prompt shows in a generated condition."""
    if condition == "no_feedback":
        return NO_FEEDBACK
    if condition == "verdict_only":
        return f"Verdict: {record.verdict}."
    if condition == "no_answer_sentence":
        return prompts.without_right_answer(record.feedback)
    if condition == "feedback":
        return record.feedback
    raise ValueError(f"headroom: no prompt for condition {condition!r}")


def condition_prompt(condition: str, q: Question, record: FeedbackRecord, tokenizer: Any, layout: str = "refinement",
                     shots: int = 0) -> str:  # fmt: skip
    """A generated condition's prompt in `layout` (`prompts.revise_messages`: 'refinement', or 'qa' with `shots`)."""
    return prompts.render(prompts.revise_messages(layout, q, shots, record.predicted_answer,
                                                  condition_feedback(condition, record)), tokenizer)  # fmt: skip


def condition_path(out: Path, condition: str) -> Path:
    return out.with_name(f"{out.stem}.{condition}.json")


def pair(questions: list[Question], preds: dict[str, str], records: list[FeedbackRecord],
         where: str) -> tuple[list[Question], dict[str, FeedbackRecord], list[str]]:  # fmt: skip
    """(questions probed, their records by id, ids skipped for want of a record). A record must judge the answer
    the predictions give: the first answer in every prompt is the one its feedback is about."""
    by_id = {r.id: r for r in records}
    if len(by_id) != len(records):
        raise LaffiError(f"{where}: more than one feedback record for a question")
    probed, skipped = [], []
    for q in questions:
        if q.id not in preds:
            continue
        r = by_id.get(q.id)
        if r is None:
            skipped.append(q.id)
            continue
        if r.predicted_answer.strip() != preds[q.id].strip():
            raise LaffiError(f"{where}: record '{printable(q.id)[:80]}' judges the answer "
                             f"{printable(repr(r.predicted_answer))[:60]}, the predictions say "
                             f"{printable(repr(preds[q.id]))[:60]}: feedback on other answers")  # fmt: skip
        probed.append(q)
    if not probed:
        raise LaffiError(f"{where}: no question has both a prediction and a feedback record")
    return probed, {q.id: by_id[q.id] for q in probed}, skipped


def probe(load: Any, tokenizer: Any, questions: list[Question], preds: dict[str, str], records: list[FeedbackRecord],
          out: Path, settings: Any, first_na: dict[str, float] | None = None, identity: dict[str, Any] | None = None,
          progress: Any = None, where: str = "feedback", layout: str = "refinement",
          shots: int = 0) -> dict[str, Any]:  # fmt: skip
    """Run the probe, write every condition's files and `out` (H.json); returns its content. `layout` and `shots`:
    the prompt of the generated conditions (`condition_prompt`); `identity` must name them.

    `load()` returns the model (`laffi.models.load_model`); it is called only when a condition's file is not made
    yet with the same `identity` (model, adapter, decoding settings, inputs). `settings`: a DecodeSettings."""
    from laffi.engines.generation import generate_records
    from laffi.metrics import score_one, squad_v2_scores
    from laffi.stats import paired_bootstrap

    probed, by_id, skipped = pair(questions, preds, records, where)
    by_q = {q.id: q for q in probed}
    model = None

    def parse(qid: str, raw: str) -> str:
        return prompts.parse_answer(raw, by_q[qid].context)

    identity = {**(identity or {}), "questions": [q.id for q in probed]}
    answers: dict[str, dict[str, str]] = {"first": {q.id: preds[q.id] for q in probed}}
    na: dict[str, dict[str, float] | None] = {"first": _subset(first_na, probed)}
    for condition in GENERATED:
        path = condition_path(out, condition)
        record = _settings_path(path)
        if path.exists() and record.exists() and read_json(record) == identity:
            answers[condition] = read_json(path)
            na_file = path.with_suffix(".na_prob.json")
            na[condition] = read_json(na_file) if na_file.exists() else None
            continue
        if model is None:
            model = load()
        partial = path.with_name(f".{path.name}.partial.jsonl")
        partial_record = _settings_path(partial)
        if partial.exists() and (not partial_record.exists() or read_json(partial_record) != identity):
            partial.unlink()  # made with other settings: its answers are not this probe's
        write_json(partial_record, identity)
        jobs = [(qid, condition_prompt(condition, by_q[qid], by_id[qid], tokenizer, layout, shots))
                for qid in by_id]  # fmt: skip
        done = generate_records(model, tokenizer, jobs, settings, parse, partial=partial, progress=progress,
                                na_scores=True)  # fmt: skip
        answers[condition] = {q.id: done[q.id].answer for q in probed}
        na[condition] = {q.id: done[q.id].na_prob for q in probed} if all(
            done[q.id].na_prob is not None for q in probed) else None  # fmt: skip
        if na[condition] is not None:
            write_json(path.with_suffix(".na_prob.json"), na[condition])
        write_json(path, answers[condition])
        write_json(record, identity)
        partial.unlink(missing_ok=True)
        partial_record.unlink(missing_ok=True)
    first_path = condition_path(out, "first")
    write_json(first_path, answers["first"])
    if na["first"] is not None:
        write_json(first_path.with_suffix(".na_prob.json"), na["first"])
    else:
        first_path.with_suffix(".na_prob.json").unlink(missing_ok=True)
    f1 = {c: [score_one(q, answers[c][q.id])[1] for q in probed] for c in CONDITIONS}
    conditions = {}
    for c in CONDITIONS:
        path = condition_path(out, c)
        conditions[c] = {
            "file": path.name,
            "scores": squad_v2_scores(probed, answers[c], str(path), na[c],
                                      na_source=str(path.with_suffix(".na_prob.json"))),
            "vs_first": paired_bootstrap(f1[c], f1["first"]) if c != "first" else None,
            "vs_no_feedback": paired_bootstrap(f1[c], f1["no_feedback"]) if c != "no_feedback" else None,
        }  # fmt: skip
    result: dict[str, Any] = {"questions": len(probed), "skipped": skipped, "conditions": conditions,
                              "abstain": squad_v2_scores(probed, {q.id: "" for q in probed}),
                              "prompts": {c: condition_feedback(c, _EXAMPLE) for c in GENERATED},
                              "layout": layout_of(layout, shots)}  # fmt: skip
    a, b = HEADLINE
    result["headroom"] = {"f1": result["conditions"][a]["scores"]["f1"] - result["conditions"][b]["scores"]["f1"],
                          **paired_bootstrap(f1[a], f1[b])}  # fmt: skip
    write_json(out, result)
    return result


def layout_of(layout: str, shots: int) -> dict[str, Any]:
    """H.json's "layout": the prompt the generated conditions used ('qa': with its shots; 'refinement' shows none).
    A file without it was made with the refinement prompt."""
    return {"prompt": layout, "shots": shots if layout == "qa" else 0}


def _subset(values: dict[str, float] | None, questions: list[Question]) -> dict[str, float] | None:
    if values is None or any(q.id not in values for q in questions):
        return None
    return {q.id: values[q.id] for q in questions}


def _settings_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.settings.json")


# The feedback each condition shows, on one example record (H.json "prompts", docs/methods.md).
_EXAMPLE = FeedbackRecord(
    id="example", question="When was the bridge opened?", context="The bridge was opened in 1932.",
    predicted_answer="1931", gold_answers=["1932"], verdict="incorrect",
    feedback='Verdict: incorrect. "1931" is wrong. The passage says: "The bridge was opened in 1932." The right '
             'answer is "1932".',
    annotator="reference", template_version="example",
)  # fmt: skip


def markdown(result: dict[str, Any]) -> str:
    """The probe's table: each condition's F1, HasAns / NoAns F1, and its difference to `first` and `no_feedback`."""

    def diff(d: dict[str, float] | None) -> str:
        if d is None:
            return "-"
        low, high = 100 * d["ci_low"], 100 * d["ci_high"]
        return f"{100 * d['mean_diff']:+.1f} ({low:+.1f} to {high:+.1f}, p={d['p_value']:.3f})"

    lines = [f"Feedback headroom on {result['questions']} questions ({len(result['skipped'])} without a feedback "
             "record skipped).", "", "| condition | F1 | HasAns F1 | NoAns F1 | vs first | vs no_feedback |",
             "|---|---:|---:|---:|---|---|"]  # fmt: skip
    a = result["abstain"]
    lines.append(f"| abstain (every question) | {a['f1']:.1f} | {a.get('HasAns_f1', float('nan')):.1f} | "
                 f"{a.get('NoAns_f1', float('nan')):.1f} | - | - |")
    for c in CONDITIONS:
        s = result["conditions"][c]["scores"]
        lines.append(f"| {c} | {s['f1']:.1f} | {s.get('HasAns_f1', float('nan')):.1f} | "
                     f"{s.get('NoAns_f1', float('nan')):.1f} | {diff(result['conditions'][c]['vs_first'])} | "
                     f"{diff(result['conditions'][c]['vs_no_feedback'])} |")  # fmt: skip
    h = result["headroom"]
    lines += ["", f"Headroom (feedback - no_feedback): {h['f1']:+.1f} F1 (95 % CI {100 * h['ci_low']:+.1f} to "
              f"{100 * h['ci_high']:+.1f}, p = {h['p_value']:.3f})."]  # fmt: skip
    return "\n".join(lines)
