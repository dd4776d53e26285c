"""The LLM annotator: reply parsing, example choice, prompt, cache/resume, failures kept with their raw text."""

import json

import pytest

from laffi import prompts
from laffi.config import AnnotateConfig
from laffi.feedback import llm
from laffi.pipeline import stages
from laffi.records import read_jsonl


@pytest.mark.parametrize("raw, expected", [
    ("Verdict: correct\nFeedback: It matches the gold answer.", ("correct", "It matches the gold answer.")),
    ('Verdict: incorrect. "1066" is wrong. The right answer is "911".',
     ("incorrect", '"1066" is wrong. The right answer is "911".')),
    ("**Verdict:** Incorrect\n**Feedback:** Wrong year.", ("incorrect", "Wrong year.")),
    ("Verdict: correct", "empty feedback"),
    ("The answer looks fine to me.", "no 'Verdict: correct|incorrect' at the start of the reply"),
    ("Verdict: maybe\nFeedback: hm", "no 'Verdict: correct|incorrect' at the start of the reply"),
    ("", "no 'Verdict: correct|incorrect' at the start of the reply"),
])  # fmt: skip
def test_parse_reply(raw, expected):
    assert llm.parse_reply(raw) == expected


def examples():
    return read_jsonl(llm.default_examples_path(), llm.FeedbackRecord)


def test_select_examples_seeded_with_both_verdicts():
    ex = examples()
    assert len(ex) == 10 and {r.verdict for r in ex} == {"correct", "incorrect"}
    two = llm.select_examples(ex, 2, seed=0)
    assert sorted(r.verdict for r in two) == ["correct", "incorrect"]
    assert [r.id for r in llm.select_examples(ex, 4, seed=0)] == [r.id for r in llm.select_examples(ex, 4, seed=0)]
    assert {r.id for r in llm.select_examples(ex, 4, seed=0)} != {r.id for r in llm.select_examples(ex, 4, seed=5)}
    assert len(llm.select_examples(ex, 50, seed=0)) == 10 and llm.select_examples(ex, 0, seed=0) == []


def test_prompt_shows_gold_answers_and_the_shots(excerpt_questions):
    answerable = next(q for q in excerpt_questions if q.answers)
    impossible = next(q for q in excerpt_questions if not q.answers)
    shots = llm.select_examples(examples(), 2, seed=0)
    msgs = llm.messages(answerable, "", shots)
    assert [m["role"] for m in msgs] == ["system", "user", "assistant", "user", "assistant", "user"]
    assert msgs[2]["content"] == f"Verdict: {shots[0].verdict}\nFeedback: {shots[0].feedback}"
    assert f'Gold answers: "{answerable.answers[0]}"' in msgs[-1]["content"]
    assert msgs[-1]["content"].endswith("Proposed answer: unanswerable")
    assert "Gold answers: none" in llm.messages(impossible, "x", shots)[-1]["content"]


def _cfg(tmp_path, model, **kw):
    return AnnotateConfig(annotator="llm", model=str(model), dtype="float32", shots=2, max_new_tokens=8,
                          batch_size=4, **kw)  # fmt: skip


def test_local_backend_keeps_unparsed_replies_as_failures_and_resumes(excerpt_questions, tiny_model_dir, tmp_path,
                                                                       monkeypatch):  # fmt: skip
    qs = excerpt_questions[:3]
    preds = {q.id: "" for q in qs}
    out = tmp_path / "fb.jsonl"
    records = stages.annotate(qs, preds, out, _cfg(tmp_path, tiny_model_dir))
    failures = llm.read_failures(llm.failures_path(out))
    # A random tiny model never writes "Verdict: ...": every reply is a failure, kept with its raw text and cost.
    assert records == [] and read_jsonl(out, llm.FeedbackRecord) == []
    assert [f.id for f in failures] == [q.id for q in qs]
    assert all(f.raw and f.reason.startswith("no 'Verdict") and f.prompt_tokens > 300 and f.completion_tokens > 0
               for f in failures) and {f.annotator for f in failures} == {f"llm:{tiny_model_dir}"}  # fmt: skip
    cache = read_jsonl(llm.cache_path(out), llm.Completion)
    assert len(cache) == 3 and sorted(c.raw for c in cache) == sorted(f.raw for f in failures)

    # Resume: with every prompt in the cache the model is never loaded; a parseable cached reply becomes a record.
    lines = llm.cache_path(out).read_text().splitlines()
    shots = llm.select_examples(examples(), 2, 0)
    first_key = llm.prompt_key("local", str(tiny_model_dir), 8, llm.messages(qs[0], "", shots))
    at = next(i for i, line in enumerate(lines) if json.loads(line)["key"] == first_key)
    first = {**json.loads(lines[at]), "raw": "Verdict: incorrect\nFeedback: The passage answers it."}
    lines[at] = json.dumps(first)
    llm.cache_path(out).write_text("\n".join(lines) + "\n")
    monkeypatch.setattr(llm, "complete_local", lambda *a, **k: pytest.fail("the cache should have answered"))
    records = stages.annotate(qs, preds, out, _cfg(tmp_path, tiny_model_dir))
    # An incorrect verdict stating no right answer gets the one composed from the gold answers (the raw reply is kept).
    right = prompts.right_answer_sentence(qs[0].answers[0] if qs[0].answers else "")
    assert [(r.id, r.verdict, r.feedback) for r in records] == [(qs[0].id, "incorrect",
                                                                 f"The passage answers it. {right}")]  # fmt: skip
    assert records[0].meta["cached"] and records[0].meta["raw"] == first["raw"] and records[0].meta["shots"] == 2
    assert records[0].meta["right_answer"] == "appended" and records[0].template_version == llm.TEMPLATE_VERSION
    assert len(llm.read_failures(llm.failures_path(out))) == 2


def test_unreachable_endpoint_is_a_recorded_failure(excerpt_questions, tmp_path):
    import socket

    with socket.socket() as s:  # a free port that nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    qs = excerpt_questions[:2]
    out = tmp_path / "fb.jsonl"
    cfg = AnnotateConfig(annotator="llm", endpoint=f"http://127.0.0.1:{port}/v1", api_model="m", max_retries=1,
                         timeout=5.0, concurrency=2)  # fmt: skip
    records = stages.annotate(qs, {q.id: "" for q in qs}, out, cfg)
    failures = llm.read_failures(llm.failures_path(out))
    assert records == [] and len(failures) == 2
    assert all("request failed after 1 retries: APIConnectionError" in f.reason for f in failures)
    assert not llm.cache_path(out).read_text()  # failed requests are not cached: a re-run tries again


def test_endpoint_needs_api_model(excerpt_questions, tmp_path):
    from laffi.errors import LaffiError

    cfg = AnnotateConfig(annotator="llm", endpoint="http://127.0.0.1:9/v1")
    with pytest.raises(LaffiError, match="api_model"):
        stages.annotate(excerpt_questions[:1], {excerpt_questions[0].id: ""}, tmp_path / "f.jsonl", cfg)
