"""No-answer scores, span answers and the plain-path fallback (engines/steering.py, prefix_cache.py), tiny model."""

import json
import math

import pytest

from laffi import prompts
from laffi.engines import prefix_cache
from laffi.engines.generation import DecodeSettings, answer_questions, generate, stop_token_ids
from laffi.engines.steering import SpanConstraint, abstain_token_ids, na_probability


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    from laffi.models import load_model, load_tokenizer

    return load_model(str(tiny_model_dir), dtype="float32"), load_tokenizer(str(tiny_model_dir))


def _questions(excerpt_questions, n=8):
    by_context: dict[str, list] = {}
    for q in excerpt_questions:
        by_context.setdefault(q.context, []).append(q)
    return [q for qs in list(by_context.values())[:4] for q in qs[:2]][:n]  # 4 passages x 2 questions


def _reference_greedy(model, tok, text, steps):
    """Greedy decoding the slow obvious way: a full forward pass per token, no cache, batch of one."""
    import torch

    ids = tok(text, add_special_tokens=False)["input_ids"]
    stops = set(stop_token_ids(tok, model))
    out, first_logits = [], None
    with torch.inference_mode():
        for _ in range(steps):
            logits = model(input_ids=torch.tensor([ids + out])).logits[0, -1]
            first_logits = logits if first_logits is None else first_logits
            out.append(int(logits.argmax()))
            if out[-1] in stops:
                break
    return tok.decode(out, skip_special_tokens=True).strip(), first_logits


def test_unconstrained_answers_and_scores_equal_reference_greedy_on_both_paths(tiny, excerpt_questions):
    model, tok = tiny
    texts = [prompts.render(prompts.qa_messages(q, 2), tok) for q in _questions(excerpt_questions)]
    abstain = abstain_token_ids(tok, texts[0])
    assert tok.decode(abstain) == prompts.ABSTAIN_PHRASE
    reference = [_reference_greedy(model, tok, t, 6) for t in texts]
    for settings in (DecodeSettings(6, 4, draft_tokens=2), DecodeSettings(6, 4, reuse_prefix=False)):
        na = [None] * len(texts)
        out = generate(model, tok, texts, settings, na=na)
        assert out == [r[0] for r in reference]
        assert out == generate(model, tok, texts, settings)  # scoring changes no answer
        for p, (_, logits) in zip(na, reference, strict=True):
            own = int(logits.argmax())
            if own == abstain[0]:
                own = int(logits.topk(2).indices[1])
            expected = 1 / (1 + math.exp(float(logits[own] - logits[abstain[0]])))
            assert 0.0 < p < 1.0 and p == pytest.approx(expected, abs=1e-5)


def test_na_probability_rules():
    import torch

    logits = torch.tensor([0.0, 2.0, 1.0, -1.0])
    assert na_probability(logits, 1, 2) == pytest.approx(1 / (1 + math.exp(1.0)))  # own 1 (2.0) vs abstain 2 (1.0)
    # The model's own first token is the abstention token: against the best other one, so above 0.5.
    assert na_probability(logits, 1, 1) == pytest.approx(1 / (1 + math.exp(-1.0)))
    # Among allowed tokens only; the only allowed token being the abstention one: certain.
    assert na_probability(logits, 2, 2, allowed=[0, 2]) == pytest.approx(1 / (1 + math.exp(-1.0)))
    assert na_probability(logits, 3, 3, allowed=[3]) == 1.0


def test_span_constraint_allows_continuations_ends_and_the_abstention():
    c = SpanConstraint(passage=[5, 6, 7, 5, 8], starts=[0, 1, 2, 3, 4], ends={1, 2, 3, 4, 5}, abstain=[9, 10],
                       stops=[2])  # fmt: skip
    assert c.allowed([]) == [5, 6, 7, 8, 9]
    assert c.allowed([5]) == [2, 6, 8]  # continues either occurrence of 5, or ends
    assert c.allowed([5, 6]) == [2, 7]
    assert c.allowed([9]) == [10] and c.allowed([9, 10]) == [2]
    # A token that shares a character with its neighbour (split multi-byte character) begins or ends no span.
    c = SpanConstraint(passage=[5, 6, 7], starts=[0, 2], ends={2, 3}, abstain=[9], stops=[2])
    assert c.allowed([]) == [5, 7, 9] and c.allowed([5]) == [6] and c.allowed([5, 6]) == [2, 7]
    # A first token may be a passage token's form without its leading space (alias 11 for 6): the span goes on.
    c = SpanConstraint(passage=[5, 6, 7], starts=[0, 1, 2], ends={1, 2, 3}, abstain=[9], stops=[2], alias={11: {6}})
    assert c.allowed([]) == [5, 6, 7, 9, 11] and c.allowed([11]) == [2, 7] and c.allowed([5, 11]) == [2]


@pytest.mark.parametrize("reuse_prefix", [True, False])
def test_span_answers_are_spans_of_their_passage_or_abstentions(tiny, excerpt_questions, reuse_prefix):
    model, tok = tiny
    qs = _questions(excerpt_questions)
    settings = DecodeSettings(8, 4, reuse_prefix=reuse_prefix, draft_tokens=2)
    gens = answer_questions(model, tok, qs, 2, settings, constrain="span")
    free = answer_questions(model, tok, qs, 2, settings)
    assert sum(g.raw != f.raw for g, f in zip(gens, free, strict=True)) >= len(qs) // 2  # the random model wanders off
    for q, g in zip(qs, gens, strict=True):
        assert g.raw and (g.raw in q.context or g.raw == prompts.ABSTAIN_PHRASE), g.raw
        assert g.na_prob is not None and 0.0 <= g.na_prob <= 1.0
    if reuse_prefix:
        plain = answer_questions(model, tok, qs, 2, DecodeSettings(8, 4, reuse_prefix=False), constrain="span")
        assert [g.raw for g in gens] == [g.raw for g in plain]
        assert [g.na_prob for g in gens] == pytest.approx([g.na_prob for g in plain], abs=1e-5)


def test_missing_transformers_internal_falls_back_with_one_warning(tiny, excerpt_questions, monkeypatch, capsys):
    from transformers import masking_utils

    model, tok = tiny
    texts = [prompts.render(prompts.qa_messages(q, 2), tok) for q in _questions(excerpt_questions)]
    expected = generate(model, tok, texts, DecodeSettings(6, 4))
    capsys.readouterr()
    monkeypatch.setattr(prefix_cache, "_warned", set())
    monkeypatch.delattr(masking_utils, "sdpa_mask")
    calls = []
    monkeypatch.setattr(model, "generate", lambda *a, _g=model.generate, **k: calls.append(1) or _g(*a, **k))
    assert generate(model, tok, texts, DecodeSettings(6, 4)) == expected
    assert generate(model, tok, texts, DecodeSettings(6, 4)) == expected
    assert calls  # the plain path ran
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("laffi: warning: ") and "sdpa_mask" in err[0]


def test_answer_writes_na_probs_beside_the_predictions_and_resumes(small_squad, tiny_model_dir, tmp_path,
                                                                     monkeypatch):  # fmt: skip
    from laffi.cli import main
    from laffi.engines import generation
    from laffi.files import write_jsonl
    from laffi.pipeline.stages import partial_path
    from laffi.records import Generation, read_jsonl

    preds = tmp_path / "preds.json"
    args = ["answer", "--data", str(small_squad), "--out", str(preds), "--model", str(tiny_model_dir), "--dtype",
            "float32", "--limit", "4", "--max-new-tokens", "3", "--batch-size", "2", "--workers", "1",
            "--no-progress"]  # fmt: skip
    main(args)
    na = json.loads((tmp_path / "preds.na_prob.json").read_text())
    assert list(na) == list(json.loads(preds.read_text())) and all(0 < p < 1 for p in na.values())
    # A resumed run keeps the score stored with each finished answer: a run stopped after its first batch, whose
    # first stored answer is then marked, resumes with it.
    preds.unlink()
    real = generation.generate

    def stop_after_one_batch(model, tokenizer, texts, settings, on_batch=None, **kw):
        def once(indices, outputs):
            on_batch(indices, outputs)
            raise KeyboardInterrupt

        return real(model, tokenizer, texts, settings, on_batch=once, **kw)

    monkeypatch.setattr(generation, "generate", stop_after_one_batch)
    with pytest.raises(SystemExit) as stopped:
        main(args)
    assert stopped.value.code == 130
    monkeypatch.setattr(generation, "generate", real)
    kept = read_jsonl(partial_path(preds), Generation)
    first = kept[0].id
    write_jsonl(partial_path(preds), [Generation(id=first, raw="kept", answer="kept", na_prob=0.25), *kept[1:]])
    main(args)
    resumed = json.loads((tmp_path / "preds.na_prob.json").read_text())
    assert resumed[first] == 0.25 and {k: v for k, v in resumed.items() if k != first} == {
        k: v for k, v in na.items() if k != first}  # fmt: skip
    main([*args, "--constrain", "span"])
    assert json.loads(preds.read_text()).keys() == na.keys()


def test_verdict_scores_are_the_feedback_prompts_incorrect_vs_correct(tiny, excerpt_questions):
    import torch

    from laffi.engines.generation import verdict_scores

    model, tok = tiny
    qs = _questions(excerpt_questions, 4)
    answers = {q.id: ("Rollo" if i % 2 else "") for i, q in enumerate(qs)}
    scores = verdict_scores(model, tok, qs, answers, DecodeSettings(4, 2))
    for q in qs:  # one full forward pass each, the slow way
        text = prompts.render(prompts.feedback_messages(q, answers[q.id]), tok) + "Verdict:"
        ids = tok(text, add_special_tokens=False)["input_ids"]
        first = {w: tok(text + w, add_special_tokens=False)["input_ids"][len(ids)] for w in (" incorrect", " correct")}
        wrong, right = first[" incorrect"], first[" correct"]
        with torch.inference_mode():
            logits = model(input_ids=torch.tensor([ids])).logits[0, -1]
        assert scores[q.id] == pytest.approx(1 / (1 + math.exp(float(logits[right] - logits[wrong]))), abs=1e-5)


def test_answer_na_score_verdict_needs_an_adapter(small_squad, tiny_model_dir, tmp_path):
    from laffi.cli import main

    with pytest.raises(SystemExit) as e:
        main(["answer", "--data", str(small_squad), "--out", str(tmp_path / "p.json"), "--model", str(tiny_model_dir),
              "--limit", "2", "--na-score", "verdict", "--no-progress"])  # fmt: skip
    assert e.value.code == 2
