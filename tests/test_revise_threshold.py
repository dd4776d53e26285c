"""answer.revise_threshold: revision rounds only for the answers whose probability of "Verdict: incorrect" is above it
(tiny random model with a 1-step laffi adapter; the feedback it predicts in the rounds is scripted, so that revisions
change answers, while the first answers and the verdict probabilities are the model's own)."""

from dataclasses import replace

import pytest

from laffi.config import AnswerConfig, ModelConfig, TrainConfig, load_run_config
from laffi.errors import LaffiError
from laffi.feedback import reference
from laffi.files import read_json
from laffi.metrics import normalize_answer
from laffi.pipeline import stages
from laffi.records import Generation, Revision, read_jsonl


@pytest.fixture()
def scripted_feedback(monkeypatch, excerpt_questions):
    """Predicted feedback in the revision rounds: 'incorrect, the right answer is <gold>' until the answer is gold.
    Everything else (first answers, verdict probabilities) is the real model's."""
    import laffi.engines.generation as gen

    real = gen.generate
    by_question = {q.question: q for q in excerpt_questions}

    def generate(model, tokenizer, texts, settings, on_batch=None, **kw):
        if "na_pair" in kw or not texts or not all("Proposed answer: " in t for t in texts):
            return real(model, tokenizer, texts, settings, on_batch, **kw)
        outs = []
        for text in texts:
            q = next(q for question, q in by_question.items() if f"Question: {question}\n" in text)
            current = text.rsplit("Proposed answer: ", 1)[1].split("<|im_end|>")[0]
            current = "" if current == "unanswerable" else current
            gold = q.answers[0] if q.answers else ""
            stated = f'"{gold}"' if gold else "unanswerable"
            verdict = "correct" if normalize_answer(current) == normalize_answer(gold) else "incorrect"
            outs.append(f"Verdict: {verdict}. The right answer is {stated}.")
        if on_batch:
            on_batch(list(range(len(texts))), outs)
        return outs

    monkeypatch.setattr(gen, "generate", generate)


def test_revise_threshold(tmp_path, tiny_model_dir, excerpt_questions, scripted_feedback):
    from laffi.engines.generation import DecodeSettings, revise_answers, verdict_scores
    from laffi.models import load_model, load_tokenizer

    qs = excerpt_questions[:8]
    model = ModelConfig(str(tiny_model_dir), "float32")
    adapter = tmp_path / "laffi"
    tcfg = TrainConfig(method="laffi", max_steps=1, batch_size=2, micro_batch_size=2, lora_r=2, learning_rate=0.5)
    stages.train(qs, [reference.annotate(q, "") for q in qs], adapter, model, tcfg, shots=0, progress=False)
    settings = AnswerConfig(shots=0, max_new_tokens=3, feedback_max_new_tokens=24, revise_rounds=2, workers=1,
                            batch_size=4)  # fmt: skip

    def revise(name, threshold, first=None):
        out = tmp_path / f"{name}.json"
        preds = stages.answer(qs, out, model, replace(settings, revise_threshold=threshold), adapter=str(adapter),
                              generations_out=tmp_path / f"{name}.gen.jsonl", progress=False, first=first)  # fmt: skip
        return preds, {r.id: r for r in read_jsonl(stages.revisions_path(out), Revision)}

    # Threshold 0 (the default): every answer is revised, exactly as before the setting existed.
    preds0, revs0 = revise("t0", 0.0)
    first = read_jsonl(tmp_path / "t0.gen.jsonl", Generation)
    tok = load_tokenizer(model.name)
    lm = load_model(model.name, dtype="float32", adapter=str(adapter))
    before = revise_answers(lm, tok, qs, first, 2, DecodeSettings(24, 4))  # the call of the code before the setting
    assert preds0 == {r.id: r.final_answer for r in before}
    assert [(r.feedback, r.verdicts, r.answers) for r in before] == [
        (revs0[q.id].feedback, revs0[q.id].verdicts, revs0[q.id].answers) for q in qs]  # fmt: skip
    changed = [g.id for g in first if preds0[g.id] != g.answer]
    assert len(changed) >= 4 and all(r.revised for r in revs0.values())
    # The recorded probabilities are verdict_scores' on the first answers.
    probs = verdict_scores(lm, tok, qs, {g.id: g.answer for g in first}, DecodeSettings(1, 4))
    assert {qid: r.incorrect_prob for qid, r in revs0.items()} == pytest.approx(probs, abs=1e-6)
    assert len({round(p, 6) for p in probs.values()}) > 1

    # Threshold 1: no answer changes; the probabilities are still recorded.
    preds1, revs1 = revise("t1", 1.0, first=tmp_path / "t0.gen.jsonl")
    assert preds1 == {g.id: g.answer for g in first}
    assert not any(r.revised or r.feedback for r in revs1.values())
    assert {qid: r.incorrect_prob for qid, r in revs1.items()} == pytest.approx(probs, abs=1e-6)

    # In between: exactly the answers above the threshold are revised (as at threshold 0), the others keep theirs.
    threshold = sorted(probs.values())[len(probs) // 2]
    mid, revs = revise("mid", threshold, first=tmp_path / "t0.gen.jsonl")
    above = {qid for qid, r in revs.items() if r.incorrect_prob > threshold}
    assert 0 < len(above) < len(qs) and {qid for qid, r in revs.items() if r.revised} == above
    assert mid == {g.id: preds0[g.id] if g.id in above else g.answer for g in first}
    assert read_json(tmp_path / "mid.timing.json")["revise_seconds"] > 0


def test_revise_threshold_bounds():
    for value in (-0.1, 1.5):
        with pytest.raises(LaffiError, match="answer.revise_threshold"):
            load_run_config(None, [f"answer.revise_threshold={value}"])
