"""Batched greedy generation and the resumable answer stage, on the tiny random model."""

import pytest

from laffi.generation import DecodeSettings, answer_questions, generate
from laffi.records import Generation, JsonlAppender, read_jsonl


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
