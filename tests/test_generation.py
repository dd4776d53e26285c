"""Batched greedy generation and the resumable answer stage, on the tiny random model."""

import pytest

from laffi.engines.generation import DecodeSettings, answer_questions, generate
from laffi.files import JsonlAppender
from laffi.records import Generation, read_jsonl


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    from laffi.models import load_model, load_tokenizer

    return load_model(str(tiny_model_dir), dtype="float32"), load_tokenizer(str(tiny_model_dir))


def test_batched_equals_one_by_one(tiny, excerpt_questions):
    from laffi import prompts

    model, tok = tiny
    texts = [prompts.render(prompts.qa_messages(q, 2), tok) for q in excerpt_questions[:5]]
    batched = generate(model, tok, texts, DecodeSettings(max_new_tokens=6, batch_size=4))
    single = [generate(model, tok, [t], DecodeSettings(max_new_tokens=6, batch_size=1))[0] for t in texts]
    assert batched == single
    assert len(set(batched)) > 1  # a random model still gives different text for different prompts


def test_answer_questions_resumes_from_partial(tiny, excerpt_questions, tmp_path):
    model, tok = tiny
    qs = excerpt_questions[:6]
    full = answer_questions(model, tok, qs, 2, DecodeSettings(4, 3))
    partial = tmp_path / "p.jsonl"
    with JsonlAppender(partial) as app:
        app.append(Generation(id=qs[1].id, raw="kept", answer="kept"))
    resumed = answer_questions(model, tok, qs, 2, DecodeSettings(4, 3), partial=partial)
    assert resumed[1].answer == "kept"  # not recomputed
    assert [g.raw for i, g in enumerate(resumed) if i != 1] == [g.raw for i, g in enumerate(full) if i != 1]
    assert sorted(g.id for g in read_jsonl(partial, Generation)) == sorted(q.id for q in qs)


def test_revised_answer_rules():
    from laffi.engines.generation import revised_answer

    ctx = "Rollo led the Normans in 911."
    stated = 'Verdict: incorrect. x. The right answer is "Rollo".'
    assert revised_answer(stated, "William", ctx) == ("incorrect", "Rollo")
    assert revised_answer("Verdict: incorrect. The right answer is unanswerable.", "William", ctx) == ("incorrect", "")
    assert revised_answer('Verdict: correct. The right answer is "Rollo".', "William", ctx) == ("correct", "William")
    assert revised_answer("Verdict: incorrect. No stated answer.", "William", ctx) == ("incorrect", "William")
    assert revised_answer("gibberish", "William", ctx) == ("unparsed", "William")
    same = 'Verdict: incorrect. The right answer is "the Rollo".'
    assert revised_answer(same, "Rollo", ctx) == ("incorrect", "Rollo")
    # With require_in_context a stated answer that is not in the passage becomes an abstention.
    assert revised_answer('Verdict: incorrect. The right answer is "Harold".', "x", ctx, True) == ("incorrect", "")


def test_revise_rounds_records_and_stopping(monkeypatch, excerpt_questions):
    import laffi.engines.generation as gen
    from laffi.records import Generation

    qs = excerpt_questions[:3]
    script = {  # (question, current answer) -> predicted feedback
        (qs[0].id, "William"): 'Verdict: incorrect. "William" is wrong. The right answer is "Rollo".',
        (qs[0].id, "Rollo"): 'Verdict: correct. "Rollo" answers the question. The right answer is "Rollo".',
        (qs[1].id, "Paris"): "Verdict: incorrect. The right answer is unanswerable.",
        (qs[1].id, ""): 'Verdict: incorrect. Abstaining is wrong. The right answer is "Paris".',
        (qs[2].id, "911"): 'Verdict: correct. The right answer is "911".',
    }
    prompts_per_round = []

    def fake_generate(model, tokenizer, texts, settings, on_batch=None):
        prompts_per_round.append(len(texts))
        outs = []
        for text in texts:
            q = next(q for q in qs if q.question in text)
            current = text.rsplit("Proposed answer: ", 1)[1].split("<|im_end|>")[0]
            current = "" if current == "unanswerable" else current
            outs.append(script.get((q.id, current), "no verdict here"))
        if on_batch:
            on_batch(list(range(len(texts))), outs)
        return outs

    monkeypatch.setattr(gen, "generate", fake_generate)
    from laffi.models import load_tokenizer

    first = [Generation(qs[0].id, "", "William"), Generation(qs[1].id, "", "Paris"), Generation(qs[2].id, "", "911")]
    revs = gen.revise_answers(None, load_tokenizer("bundled"), qs, first, rounds=3, settings=gen.DecodeSettings())
    assert prompts_per_round == [3, 2, 1]  # settled questions leave later rounds
    assert [r.final_answer for r in revs] == ["Rollo", "", "911"]
    assert revs[0].verdicts == ["incorrect", "correct"] and revs[0].answers == ["Rollo", "Rollo"]
    # The second question flip-flops (Paris -> abstain -> Paris -> abstain) until the round limit stops it.
    assert revs[1].verdicts == ["incorrect"] * 3 and revs[1].answers == ["", "Paris", ""]
    assert revs[2].verdicts == ["correct"] and revs[2].first_answer == "911" and len(revs[2].feedback) == 1
