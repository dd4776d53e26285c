"""`annotate.verdict: score`: the LLM annotator's verdict is P(" incorrect") against P(" correct") after "Verdict:",
cut at a threshold (given, or matched to the human records' share of incorrect verdicts); the model then writes the
feedback after the chosen verdict. Checked on the tiny random model against a plain forward pass."""

import math

import pytest

from laffi.config import AnnotateConfig, load_run_config
from laffi.errors import LaffiError
from laffi.feedback import llm
from laffi.feedback.simulated import simulated_human_feedback
from laffi.files import write_jsonl
from laffi.pipeline import stages


@pytest.mark.parametrize("probs, threshold, share, expected", [
    ([0.9, 0.1, 0.5, 0.3], 0.4, None, 0.4),          # a given threshold is used as it is
    ([0.9, 0.1, 0.5, 0.3], -1.0, 0.5, 0.4),          # 2 of 4 incorrect: between 0.5 and 0.3
    ([0.9, 0.1, 0.5, 0.3], -1.0, 0.25, 0.7),         # 1 of 4: between 0.9 and 0.5
    ([0.9, 0.1, 0.5, 0.3], -1.0, 0.0, 1.0),          # none incorrect
    ([0.9, 0.1, 0.5, 0.3], -1.0, 1.0, 0.0),          # all incorrect
])  # fmt: skip
def test_choose_threshold(probs, threshold, share, expected):
    assert llm.choose_threshold(probs, threshold, share) == pytest.approx(expected)


def test_threshold_from_records_needs_records():
    with pytest.raises(LaffiError, match="annotate.verdict_threshold: -1 needs human records"):
        llm.choose_threshold([0.2], -1.0, None)
    assert llm.incorrect_share([]) is None


def _setup(excerpt_questions, tmp_path):
    impossible = [q for q in excerpt_questions if q.is_impossible][:3]
    qs = impossible + [q for q in excerpt_questions if not q.is_impossible][:5]
    preds = {q.id: "" for q in qs}
    human = simulated_human_feedback(qs[:4], preds)  # 3 correct abstentions, 1 wrong one: share 0.25
    examples = tmp_path / "human.jsonl"
    write_jsonl(examples, human)
    return qs, preds, human, examples


def _forward_probability(model_dir, text):
    """P(" incorrect") / (P(" incorrect") + P(" correct")) for the next token after `text`, by one plain forward."""
    import torch

    from laffi.models import load_model, load_tokenizer

    tok, lm = load_tokenizer(str(model_dir)), load_model(str(model_dir), dtype="float32")
    ids = tok(text, add_special_tokens=False)["input_ids"]
    firsts = [tok(text + w, add_special_tokens=False)["input_ids"][len(ids)] for w in (" incorrect", " correct")]
    with torch.no_grad():
        logits = lm(torch.tensor([ids])).logits[0, -1]
    return 1 / (1 + math.exp(-(logits[firsts[0]] - logits[firsts[1]]).item()))


def test_scored_verdicts_follow_the_threshold_and_the_feedback_follows_the_verdict(excerpt_questions, tiny_model_dir,
                                                                                  tmp_path, monkeypatch):  # fmt: skip
    from laffi import prompts
    from laffi.models import load_tokenizer

    qs, preds, human, examples = _setup(excerpt_questions, tmp_path)
    cfg = AnnotateConfig(annotator="llm", model=str(tiny_model_dir), dtype="float32", shots=2, max_new_tokens=6,
                         batch_size=4, examples=str(examples), verdict="score")  # fmt: skip
    out = tmp_path / "ai.jsonl"
    records = stages.annotate(qs, preds, out, cfg, progress=False)
    failures = llm.read_failures(llm.failures_path(out))
    assert sorted([r.id for r in records] + [f.id for f in failures]) == sorted(q.id for q in qs)
    # The verdict is chosen before decoding, so a random model's replies still parse (unless its feedback is empty).
    assert len(records) >= 6
    shots = llm.select_examples(human, 2, 0)
    tok = load_tokenizer(str(tiny_model_dir))
    probs = {q.id: _forward_probability(tiny_model_dir, prompts.render(llm.messages(q, "", shots), tok) + "Verdict:")
             for q in qs}  # fmt: skip
    # share 1/4 of 8 items: the 2 highest probabilities are judged incorrect, the cut halfway to the third.
    ranked = sorted(probs.values(), reverse=True)
    assert records[0].meta["verdict_threshold"] == pytest.approx((ranked[1] + ranked[2]) / 2, rel=1e-4)
    for r in records:
        assert r.meta["incorrect_prob"] == pytest.approx(probs[r.id], rel=1e-4, abs=1e-6)
        assert r.verdict == ("incorrect" if r.meta["incorrect_prob"] > r.meta["verdict_threshold"] else "correct")
        assert r.meta["raw"].startswith(f"Verdict: {r.verdict}\nFeedback: ") and r.meta["verdict"] == "score"
    # A fixed threshold of 0 judges every item incorrect; the scores come from the cache, the model is not asked again.
    monkeypatch.setattr(llm, "incorrect_probabilities", lambda *a, **k: pytest.fail("scores should be cached"))
    zero = stages.annotate(qs, preds, tmp_path / "ai.jsonl", AnnotateConfig(**{**cfg.__dict__, "verdict_threshold":
                                                                              0.0}), progress=False)  # fmt: skip
    assert {r.verdict for r in zero} == {"incorrect"} and {r.meta["verdict_threshold"] for r in zero} == {0.0}
    # And a re-run of the first config asks nothing at all.
    monkeypatch.setattr(llm, "complete_local", lambda *a, **k: pytest.fail("replies should be cached"))
    again = stages.annotate(qs, preds, out, cfg, progress=False)
    assert [(r.id, r.verdict, r.feedback) for r in again] == [(r.id, r.verdict, r.feedback) for r in records]


def test_scored_verdict_config_errors(tmp_path):
    with pytest.raises(LaffiError, match="^annotate.verdict: 'score' reads the local model's probabilities"):
        AnnotateConfig(annotator="llm", verdict="score", endpoint="http://127.0.0.1:9/v1")
    with pytest.raises(LaffiError, match=r"^annotate.verdict_threshold: -1 \(from the human records\)"):
        AnnotateConfig(verdict_threshold=-0.5)


def test_flags_valid_only_together_are_accepted():
    # `--learn-from-examples` alone would be refused (it needs `--annotator llm`): together they make one config.
    cfg = load_run_config(None, [("--annotator", "annotate.annotator=llm"),
                                 ("--learn-from-examples", "annotate.learn_from_examples=true")])  # fmt: skip
    assert cfg.annotate.annotator == "llm" and cfg.annotate.learn_from_examples
    with pytest.raises(LaffiError, match=r"needs annotate.annotator: llm \(got 'reference'\)"):
        load_run_config(None, [("--learn-from-examples", "annotate.learn_from_examples=true")])
