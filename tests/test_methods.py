"""coh, refine and critique: exact sequences and loss masks, refine's filter and resume, critique's answer sources,
and the coh answer-time prompt (tiny random model, bundled tokenizer)."""

import json
import random

import pytest

from laffi import prompts
from laffi.config import AnswerConfig, ModelConfig, TrainConfig
from laffi.errors import LaffiError
from laffi.feedback import reference
from laffi.files import write_jsonl
from laffi.methods import build_examples
from laffi.methods import refine as m
from laffi.methods.critique import critique_feedback
from laffi.methods.refine import judge_revision, refine_answers
from laffi.records import Generation, Question
from laffi.training.examples import tokenize_example

CTX = "Rollo led the Normans. They settled in Normandy in 911."
QA = Question(id="a", title="N", context=CTX, question="Who led the Normans?", answers=["Rollo"], answer_starts=[0])
QI = Question(id="b", title="N", context=CTX, question="Who led the Danes?", is_impossible=True)
FEEDBACK_911 = ('Verdict: incorrect. "911" is wrong. The passage says: "Rollo led the Normans." The right answer is '
                '"Rollo".')


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    from laffi.models import load_tokenizer

    return load_tokenizer(str(tiny_model_dir))


def runs(row, tokenizer):
    """The whole sequence decoded run by run: [(text, carries loss)], split wherever the loss mask changes."""
    ids, mask = row["input_ids"], row["completion_mask"]
    out, start = [], 0
    for i in range(1, len(ids) + 1):
        if i == len(ids) or mask[i] != mask[start]:
            out.append((tokenizer.decode(ids[start:i]), bool(mask[start])))
            start = i
    return out


def test_coh_wrong_answer_sequence_and_mask(tokenizer):
    fb = reference.annotate(QA, "911")
    assert fb.feedback == FEEDBACK_911
    (ex,) = build_examples("coh", [QA], [fb], tokenizer, shots=0, seed=0)
    assert ex.kind == "coh" and ex.prompt == prompts.render(prompts.qa_messages(QA, 0), tokenizer)
    assert ex.completion == f"An incorrect answer: 911\nFeedback: {FEEDBACK_911}\nA good answer: Rollo"
    row = tokenize_example(ex, tokenizer, 1024)
    n_prompt = len(tokenizer(ex.prompt, add_special_tokens=False)["input_ids"])
    pieces = runs(row, tokenizer)
    assert pieces == [
        (ex.prompt + "An incorrect answer:", False), (" 911", True),
        (f"\nFeedback: {FEEDBACK_911}\nA good answer:", False), (" Rollo<|im_end|>", True),
    ]  # fmt: skip
    # Loss tokens: the answers " 911" and " Rollo" and the end of turn; nothing of the prompt, markers or feedback.
    answer_ids = tokenizer(" 911", add_special_tokens=False)["input_ids"]
    gold_ids = tokenizer(" Rollo", add_special_tokens=False)["input_ids"]
    assert [t for t, m in zip(row["input_ids"], row["completion_mask"], strict=True) if m] == (
        answer_ids + gold_ids + [tokenizer.eos_token_id])
    assert row["completion_mask"][:n_prompt] == [0] * n_prompt


def test_coh_right_answer_is_the_answer_under_the_positive_marker(tokenizer):
    fb = reference.annotate(QA, "Rollo")
    (ex,) = build_examples("coh", [QA], [fb], tokenizer, shots=2, seed=0)
    row = tokenize_example(ex, tokenizer, 1024)
    pieces = runs(row, tokenizer)
    assert pieces == [(ex.prompt + "A good answer:", False), (" Rollo<|im_end|>", True)]
    # Abstaining on an unanswerable question, judged correct: the abstention phrase is the answer that carries loss.
    (imp,) = build_examples("coh", [QI], [reference.annotate(QI, "")], tokenizer, shots=0, seed=0)
    assert runs(tokenize_example(imp, tokenizer, 1024), tokenizer)[-1] == (" unanswerable<|im_end|>", True)


def test_coh_marker_phrasing_is_seeded_per_example():
    def draw(seed, qid):
        parts = prompts.coh_segments("911", "incorrect", "fb", "Rollo", random.Random(f"{seed}:{qid}"))
        return parts[0][0], parts[2][0].rsplit("\n", 1)[1]

    assert draw(0, "a") == draw(0, "a") == ("An incorrect answer:", "A good answer:")
    assert draw(0, "b") == ("A wrong answer:", "The right answer:")
    drawn = {draw(seed, qid) for seed in range(3) for qid in "abcdefgh"}
    assert {neg for neg, _ in drawn} == set(prompts.COH_NEGATIVE)
    assert {pos for _, pos in drawn} == set(prompts.COH_POSITIVE)


def test_coh_answer_time_prompt_is_the_training_prefix(tokenizer):
    """What answering tokenizes (prompt + positive marker, as one string) is token for token the start of a trained
    sequence, so the answer follows the marker exactly as in training."""
    fb = reference.annotate(QA, "Rollo")
    (ex,) = build_examples("coh", [QA], [fb], tokenizer, shots=2, seed=0)
    assert ex.completion.startswith(prompts.coh_answer_prefix())
    row = tokenize_example(ex, tokenizer, 1024)
    at_answer = tokenizer(ex.prompt + prompts.coh_answer_prefix(), add_special_tokens=False)["input_ids"]
    assert row["input_ids"][: len(at_answer)] == at_answer
    assert row["completion_mask"][len(at_answer) - 1 : len(at_answer) + 1] == [0, 1]


def test_refine_and_critique_sequences(tokenizer):
    fb = reference.annotate(QA, "911")
    (ref,) = build_examples("refine", [QA, QI], [fb], tokenizer, shots=0, seed=0, answers={"a": "Rollo"})
    assert (ref.kind, ref.id) == ("refine", "a")
    assert runs(tokenize_example(ref, tokenizer, 1024), tokenizer) == [(ref.prompt, False), ("Rollo<|im_end|>", True)]
    other = reference.annotate(QA, "Normandy")
    (crit,) = build_examples("critique", [QA], [other], tokenizer, shots=0, seed=0)
    (laffi,) = build_examples("laffi", [QA], [other], tokenizer, shots=0, seed=0)
    assert crit.kind == "critique" and (crit.prompt, crit.completion) == (laffi.prompt, laffi.completion)
    assert "Proposed answer: Normandy" in crit.prompt
    assert runs(tokenize_example(crit, tokenizer, 1024), tokenizer)[1] == (other.feedback + "<|im_end|>", True)
    for method in ("coh", "refine", "critique"):
        with pytest.raises(LaffiError, match="needs feedback"):
            build_examples(method, [QA], None, tokenizer, shots=0, seed=0)


def test_coh_long_prompt_is_cut_from_the_left_keeping_the_mask(tokenizer):
    (ex,) = build_examples("coh", [QA], [reference.annotate(QA, "911")], tokenizer, shots=2, seed=0)
    full = tokenize_example(ex, tokenizer, 1024)
    n_completion = len(full["input_ids"]) - full["completion_mask"].index(1) + len(
        tokenizer("A bad answer:", add_special_tokens=False)["input_ids"])  # fmt: skip
    cut = tokenize_example(ex, tokenizer, n_completion + 3)
    assert cut["input_ids"] == full["input_ids"][-(n_completion + 3):]
    assert cut["completion_mask"] == full["completion_mask"][-(n_completion + 3):]


def fb(verdict, first, feedback, q=QA):
    r = reference.annotate(q, first)
    r.verdict, r.feedback = verdict, feedback
    return r


@pytest.mark.parametrize(("record", "revised", "expected"), [
    (fb("correct", "Rollo", "Verdict: correct."), "rollo.", (True, m.KEPT_CONFIRMED)),
    (fb("correct", "Rollo", "Verdict: correct."), "the Normans", (False, m.DROPPED_CHANGED_CORRECT)),
    (fb("correct", "", "Verdict: correct.", QI), "", (True, m.KEPT_CONFIRMED)),
    (fb("incorrect", "911", FEEDBACK_911), "Rollo", (True, m.KEPT_MATCHES)),
    (fb("incorrect", "911", FEEDBACK_911), "The 911", (False, m.DROPPED_REPEATED_WRONG)),
    (fb("incorrect", "911", FEEDBACK_911), "Normandy", (False, m.DROPPED_DISAGREES)),
    (fb("incorrect", "911", FEEDBACK_911), "", (False, m.DROPPED_DISAGREES)),
    (fb("incorrect", "Rollo", 'Verdict: incorrect. The right answer is unanswerable.', QI), "", (True, m.KEPT_MATCHES)),
    (fb("incorrect", "911", "Verdict: incorrect. Look again."), "Rollo", (True, m.KEPT_NEW_SPAN)),
    (fb("incorrect", "911", "Verdict: incorrect. Look again."), "Harald", (False, m.DROPPED_NOT_IN_PASSAGE)),
])  # fmt: skip
def test_refine_keeps_only_revisions_the_feedback_accepts(record, revised, expected):
    assert judge_revision(record, revised) == expected


def test_refine_answers_resume_from_partial_and_report(tmp_path):
    """With every revision already in the partial file, nothing is generated (the model name need not exist)."""
    q3 = Question(id="c", title="N", context=CTX, question="When did they settle?", answers=["911"], answer_starts=[51])
    records = [reference.annotate(QA, "911"), reference.annotate(QI, ""), reference.annotate(q3, "Rollo")]
    out = tmp_path / "adapter"
    write_jsonl(tmp_path / "adapter.partial" / "refine.generations.jsonl", [
        Generation("a", "Rollo", "Rollo"), Generation("b", "Normandy", "Normandy"), Generation("c", "Rollo", "Rollo"),
    ])  # fmt: skip
    answers, report = refine_answers([QA, QI, q3], records, out, ModelConfig("no-such-model"), shots=0)
    assert answers == {"a": "Rollo"}
    reasons = {m.DROPPED_CHANGED_CORRECT: 1, m.DROPPED_REPEATED_WRONG: 1, m.KEPT_MATCHES: 1}
    assert report["summary"]["reasons"] == reasons
    assert (report["summary"]["revised"], report["summary"]["kept"], report["summary"]["dropped"]) == (3, 1, 2)
    assert [d.reason for d in report["items"]] == [m.KEPT_MATCHES, m.DROPPED_CHANGED_CORRECT, m.DROPPED_REPEATED_WRONG]
    write_jsonl(tmp_path / "adapter.partial" / "refine.generations.jsonl", [
        Generation(i, "x", "Harald") for i in "abc"])  # fmt: skip
    with pytest.raises(LaffiError, match="no revised answer was kept"):
        refine_answers([QA, QI, q3], records, out, ModelConfig("no-such-model"), shots=0)


def test_critique_feedback_from_a_predictions_file(tmp_path):
    preds = tmp_path / "other.json"
    preds.write_text(json.dumps({"a": "Normandy", "b": ""}))
    records, report = critique_feedback([QA, QI, Question(id="z", title="N", context=CTX, question="?")], str(preds),
                                        tmp_path / "adapter", ModelConfig("no-such-model"), shots=0)  # fmt: skip
    assert [(r.id, r.predicted_answer, r.verdict) for r in records] == [("a", "Normandy", "incorrect"),
                                                                        ("b", "", "correct")]  # fmt: skip
    assert records[0].feedback == reference.annotate(QA, "Normandy").feedback
    assert {k: report["summary"][k] for k in ("kind", "answered", "missing", "judged_correct")} == {
        "kind": "predictions", "answered": 2, "missing": 1, "judged_correct": 1}
    for bad, msg in [("", "needs the answers to critique"), (str(tmp_path / "nope"), "no such predictions file"),
                     (str(tmp_path), "not a PEFT adapter directory")]:  # fmt: skip
        with pytest.raises(LaffiError, match=msg):
            critique_feedback([QA], bad, tmp_path / "adapter", ModelConfig("no-such-model"), shots=0)


def test_coh_adapter_answers_after_its_marker_without_being_told(tmp_path, tiny_model_dir, excerpt_questions):
    """stages.answer reads the adapter's laffi_train.json: its raw outputs are the greedy continuations of the QA
    prompt + "A good answer:", for a coh adapter, and of the plain QA prompt for an sft adapter."""
    from laffi.engines.generation import DecodeSettings, answer_prefix, generate
    from laffi.models import load_model, load_tokenizer
    from laffi.pipeline import stages
    from laffi.records import read_jsonl

    qs = excerpt_questions[:3]
    model = ModelConfig(str(tiny_model_dir), "float32")
    tcfg = dict(max_steps=1, batch_size=2, micro_batch_size=2, lora_r=2, learning_rate=0.5)
    feedback = [reference.annotate(q, "") for q in qs]
    for method in ("coh", "sft"):
        adapter = tmp_path / method
        stages.train(qs, feedback, adapter, model, TrainConfig(method=method, **tcfg), shots=0, progress=False)
        info = json.loads((adapter / "laffi_train.json").read_text())
        assert info["config"]["method"] == method
        prefix = "A good answer:" if method == "coh" else ""
        assert answer_prefix(adapter) == info["answer_prefix"] == prefix
        out = tmp_path / f"{method}.json"
        stages.answer(qs, out, model, AnswerConfig(shots=0, max_new_tokens=4), adapter=str(adapter),
                      generations_out=tmp_path / f"{method}.gen.jsonl", progress=False)  # fmt: skip
        tok = load_tokenizer(str(tiny_model_dir))
        lm = load_model(str(tiny_model_dir), "float32", adapter=str(adapter))
        texts = [prompts.render(prompts.qa_messages(q, 0), tok) + prefix for q in qs]
        expected = generate(lm, tok, texts, DecodeSettings(4, 8))
        assert [g.raw for g in read_jsonl(tmp_path / f"{method}.gen.jsonl", Generation)] == expected
    assert answer_prefix(None) == "" and answer_prefix(tmp_path) == ""


def test_critique_without_answers_from_trains_on_the_given_records(tmp_path, tiny_model_dir):
    from laffi.pipeline import stages

    other = [reference.annotate(QA, "Normandy"), reference.annotate(QI, "Rollo")]
    cfg = TrainConfig(method="critique", max_steps=1, batch_size=2, micro_batch_size=2, lora_r=2)
    info = stages.train([QA, QI], other, tmp_path / "a", ModelConfig(str(tiny_model_dir), "float32"), cfg, shots=0,
                        progress=False)  # fmt: skip
    assert info["examples_by_kind"] == {"critique": 2} and "critique" not in info
    assert not (tmp_path / "a" / "critique_report.json").exists()
