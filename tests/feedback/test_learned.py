"""The learned annotator on the tiny random model: it trains on k human records, then writes one parseable record per
remaining question; its prompt is the few-shot annotator's minus the shots; bad configs are one-line errors."""

import json

import pytest

from laffi.config import AnnotateConfig, load_run_config
from laffi.errors import LaffiError
from laffi.feedback import learned, llm
from laffi.feedback.report import annotator_summary, answer_shares
from laffi.feedback.simulated import simulated_human_feedback
from laffi.files import write_jsonl
from laffi.pipeline import stages
from laffi.records import read_feedback, read_jsonl

REPLY = "Verdict: incorrect\nFeedback: Wrong."


def learn_cfg(model, **kw):
    return AnnotateConfig(annotator="llm", learn_from_examples=True, model=str(model), dtype="float32",
                          max_new_tokens=12, batch_size=4, learn_max_steps=3, learn_learning_rate=0.01,
                          learn_lora_r=4, learn_batch_size=2, **kw)  # fmt: skip


def test_prompt_is_the_few_shot_prompt_minus_the_shots(excerpt_questions):
    q = excerpt_questions[0]
    assert learned.messages(q, "x") == llm.messages(q, "x", [])
    r = simulated_human_feedback([q], {q.id: "x"})[0]
    assert learned.messages(learned.record_question(r), r.predicted_answer) == learned.messages(q, "x")
    # The completion is in the form the few-shot annotator's parser reads; a repeated leading verdict is dropped.
    r.feedback = 'Verdict: incorrect. "x" is wrong. The right answer is "y".'
    assert learned.completion_text(r) == 'Verdict: incorrect\nFeedback: "x" is wrong. The right answer is "y".'
    assert llm.parse_reply(learned.completion_text(r)) == ("incorrect", '"x" is wrong. The right answer is "y".')


def test_learns_from_k_records_and_annotates_the_rest(excerpt_questions, tiny_model_dir, tmp_path, monkeypatch):
    from laffi import prompts
    from laffi.engines import generation
    from laffi.models import load_tokenizer

    # 2 unanswerable then 8 answerable questions, all abstained on: the k = 4 human records have both verdicts.
    impossible = [q for q in excerpt_questions if q.is_impossible][:2]
    qs = impossible + [q for q in excerpt_questions if not q.is_impossible][:8]
    preds = {q.id: "" for q in qs}
    human = simulated_human_feedback(qs[:4], preds)
    assert {r.verdict for r in human} == {"correct", "incorrect"}
    examples = tmp_path / "human.jsonl"
    write_jsonl(examples, human)
    out = tmp_path / "ai.jsonl"
    cfg = learn_cfg(tiny_model_dir, examples=str(examples))
    records = stages.annotate(qs, preds, out, cfg, progress=False)
    adapter = stages.annotator_adapter_path(out)
    info = json.loads((adapter / learned.INFO).read_text())
    # Trained with laffi's loop on exactly the k records (loss on the reply only), adapter saved.
    assert info["learned_from"] == [r.id for r in human] and info["steps"] == 3
    assert info["annotators"] == ["simulated-human:paraphrase-v1"] and (adapter / "adapter_config.json").exists()
    train_info = json.loads((adapter / "laffi_train.json").read_text())
    assert train_info["examples"] == 4 and train_info["examples_by_kind"] == {"annotator": 4}
    # Every remaining question is annotated once (a random 2-layer model cannot learn the reply format: its replies
    # are kept as failures with their raw text), the k learned-from questions never.
    failures = llm.read_failures(llm.failures_path(out))
    assert sorted([r.id for r in records] + [f.id for f in failures]) == sorted(q.id for q in qs[4:])
    assert {f.annotator for f in failures} == {f"llm-learned:{tiny_model_dir}"}

    # With replies in the asked-for form, each remaining question gets one parseable record. The decoder is stubbed
    # (the model with the adapter merged is still loaded); it sees exactly the shot-less prompts of those questions.
    seen = []

    def reply(model, tokenizer, texts, settings, on_batch=None):
        seen.extend(texts)
        outputs = [REPLY] * len(texts)
        if on_batch is not None:
            on_batch(list(range(len(texts))), outputs)
        return outputs

    monkeypatch.setattr(generation, "generate", reply)
    out2 = tmp_path / "ai2.jsonl"
    records = stages.annotate(qs, preds, out2, cfg, progress=False)
    tokenizer = load_tokenizer(str(tiny_model_dir))
    assert seen == [prompts.render(learned.messages(q, ""), tokenizer) for q in qs[4:]]
    assert [r.id for r in records] == [q.id for q in qs[4:]] and llm.read_failures(llm.failures_path(out2)) == []
    assert all(r.verdict == "incorrect" and r.annotator == f"llm-learned:{tiny_model_dir}"
               and r.template_version == learned.TEMPLATE_VERSION and r.meta["learned_from"] == 4
               for r in records)  # fmt: skip
    # Each incorrect verdict ends with the right answer composed from the gold answers, which parses back to gold.
    assert all(r.feedback == f"Wrong. {prompts.right_answer_sentence(r.gold_answers[0])}"
               and prompts.parse_feedback(r.feedback)[1] == r.gold_answers[0]
               and r.meta["right_answer"] == "appended" for r in records)  # fmt: skip
    shares = answer_shares(records)
    assert shares["states_answer_incorrect"] == 1.0 and shares["incorrect_verdicts"] == len(records)
    assert annotator_summary(records)["answer_appended"] == 1.0
    assert read_feedback(out2) == records
    # Cached: a second run trains nothing (same adapter) and asks nothing (every prompt is in the cache).
    stamp = (stages.annotator_adapter_path(out2) / "adapter_model.safetensors").stat().st_mtime_ns
    seen.clear()
    again = stages.annotate(qs, preds, out2, cfg, progress=False)
    assert (stages.annotator_adapter_path(out2) / "adapter_model.safetensors").stat().st_mtime_ns == stamp
    assert seen == [] and all(r.meta["cached"] for r in again) and [r.id for r in again] == [r.id for r in records]
    assert len(read_jsonl(llm.cache_path(out2), llm.Completion)) == 6


@pytest.mark.parametrize("kw, message", [
    ({"annotator": "reference", "learn_from_examples": True},
     "annotate.learn_from_examples: needs annotate.annotator: llm (got 'reference')"),
    ({"annotator": "llm", "learn_from_examples": True, "endpoint": "http://127.0.0.1:9/v1"},
     "annotate.learn_from_examples: fine-tunes a local model"),
])  # fmt: skip
def test_bad_config_is_one_line_error(kw, message, tmp_path):
    with pytest.raises(LaffiError, match="^" + message.replace("(", r"\(").replace(")", r"\)")):
        AnnotateConfig(**kw)
    path = tmp_path / "c.yaml"
    path.write_text("annotate:\n  annotator: reference\n  learn_from_examples: true\n")
    with pytest.raises(LaffiError) as e:
        load_run_config(path)
    assert "\n" not in str(e.value) and "learn_from_examples" in str(e.value)


def test_cli_bad_config_is_one_line(small_squad, tmp_path, capsys):
    from laffi.cli import main

    preds = tmp_path / "p.json"
    preds.write_text("{}")
    with pytest.raises(SystemExit) as e:
        main(["annotate", "--data", str(small_squad), "--predictions", str(preds), "--out", str(tmp_path / "o.jsonl"),
              "--annotator", "reference", "--learn-from-examples"])  # fmt: skip
    assert e.value.code == 2
    assert capsys.readouterr().err == ("laffi: error: annotate.learn_from_examples: needs annotate.annotator: llm "
                                       "(got 'reference')\n")
