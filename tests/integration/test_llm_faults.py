"""The LLM annotator's endpoint backend against a real local server that misbehaves on purpose: an OpenAI-compatible
chat-completions app (FastAPI, uvicorn on loopback, started by the test) that answers each question by a script —
500, 429 with Retry-After, a reply slower than the client's timeout, an empty or null completion, a body that is not
JSON, a completion without choices, text that is not in the annotator's form. Checks: each fault is retried with
growing delays, what still fails is recorded with the raw response, and a re-run asks again only for the failures."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections import defaultdict

import pytest
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from laffi.config import AnnotateConfig
from laffi.feedback import llm
from laffi.pipeline import stages
from laffi.records import Question

REPLY = "Verdict: incorrect\nFeedback: The passage says 1066."
RETRIES = 2  # 3 attempts in all

# What the server does on each attempt for each question; after the script, it answers properly.
SCRIPT = {
    "q0": ["500", "ok"], "q1": ["429", "ok"], "q2": ["slow", "ok"], "q3": ["empty", "ok"], "q4": ["not_json", "ok"],
    "q5": ["no_choices", "ok"], "q6": ["500", "500", "500"], "q7": ["prose", "prose", "prose"],
    "q8": ["null", "null", "null"], "q9": [],
}  # fmt: skip


def completion(content: str | None) -> dict:
    return {"id": "c", "object": "chat.completion", "created": 0, "model": "m",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 50, "completion_tokens": 9, "total_tokens": 59}}  # fmt: skip


def faulty_app(log: dict[str, list[float]]) -> FastAPI:
    app = FastAPI()

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Response:
        body = await request.json()
        qid = body["messages"][-1]["content"].split("Question: ", 1)[1].split(" ", 1)[0]  # "q3 asks ..."
        log[qid].append(time.monotonic())
        script = SCRIPT[qid]
        fault = script[len(log[qid]) - 1] if len(log[qid]) <= len(script) else "ok"
        if fault == "500":
            return JSONResponse({"error": {"message": f"boom on {qid}", "type": "server_error"}}, status_code=500)
        if fault == "429":
            return JSONResponse({"error": {"message": "slow down"}}, status_code=429, headers={"retry-after-ms": "300"})
        if fault == "slow":
            await asyncio.sleep(2.5)  # the client gives up after 1 s
        if fault == "not_json":
            return Response("<html>502 Bad Gateway</html>", media_type="application/json")
        if fault == "no_choices":
            return JSONResponse({**completion(None), "choices": []})
        content = {"empty": "", "null": None, "prose": "Looks fine to me."}.get(fault, REPLY)
        return JSONResponse(completion(content))

    return app


@pytest.fixture()
def server():
    log: dict[str, list[float]] = defaultdict(list)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    srv = uvicorn.Server(uvicorn.Config(faulty_app(log), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.time() + 20
    while not srv.started:
        assert thread.is_alive() and time.time() < deadline, "fault server did not start"
        time.sleep(0.05)
    yield {"url": f"http://127.0.0.1:{port}/v1", "log": log}
    srv.should_exit = True
    thread.join(timeout=10)


def questions() -> list[Question]:
    out = []
    for i in range(10):
        context = f"Passage {i}: the battle was in 1066."
        out.append(Question(id=f"q{i}", title="T", context=context, question=f"q{i} asks when was the battle?",
                            answers=["1066"], answer_starts=[context.index("1066")]))  # fmt: skip
    return out


def gaps(times: list[float]) -> list[float]:
    return [b - a for a, b in zip(times, times[1:], strict=False)]


def test_faults_are_retried_then_recorded_and_a_rerun_retries_only_failures(server, tmp_path):
    qs = questions()
    out = tmp_path / "llm.jsonl"
    cfg = AnnotateConfig(annotator="llm", endpoint=server["url"], api_model="m", max_retries=RETRIES, timeout=1.0,
                         concurrency=len(qs), shots=2, max_new_tokens=32)  # fmt: skip
    start = time.monotonic()
    records = stages.annotate(qs, {q.id: "1066" for q in qs}, out, cfg)
    took = time.monotonic() - start
    log = server["log"]

    # Every fault that clears within the retries gives a record; attempts = script length (1 for q9).
    assert sorted(r.id for r in records) == ["q0", "q1", "q2", "q3", "q4", "q5", "q9"]
    # The verdict states no answer: the gold one is appended (llm.with_right_answer).
    assert all((r.verdict, r.feedback) == ("incorrect", 'The passage says 1066. The right answer is "1066".')
               for r in records)  # fmt: skip
    assert {q: len(t) for q, t in log.items()} == {"q0": 2, "q1": 2, "q2": 2, "q3": 2, "q4": 2, "q5": 2, "q6": 3,
                                                   "q7": 3, "q8": 3, "q9": 1}  # fmt: skip
    # Backoff: the client's for HTTP errors, laffi's own for bad completions; each retry waits longer than the last.
    for qid in ("q6", "q7", "q8"):
        first, second = gaps(log[qid])
        assert 0.3 < first < second, (qid, first, second)
    assert gaps(log["q1"])[0] >= 0.29  # Retry-After (300 ms) is honoured
    assert gaps(log["q2"])[0] >= 1.0  # the slow reply timed out on the client first
    assert took < 20

    # What still failed is recorded with the raw response and why.
    failures = {f.id: f for f in llm.read_failures(llm.failures_path(out))}
    assert sorted(failures) == ["q6", "q7", "q8"]
    assert "InternalServerError" in failures["q6"].reason and "after 2 retries" in failures["q6"].reason
    assert failures["q6"].raw.startswith("HTTP 500: ") and "boom on q6" in failures["q6"].raw
    assert failures["q7"].raw == "Looks fine to me." and "no 'Verdict" in failures["q7"].reason
    assert "empty completion" in failures["q8"].reason and '"content":null' in failures["q8"].raw.replace(" ", "")

    # A re-run (the server now behaves) asks only for the three failures; the rest come from the cache.
    before = {q: len(t) for q, t in log.items()}
    again = stages.annotate(qs, {q.id: "1066" for q in qs}, out, cfg)
    asked = {q: len(t) - before.get(q, 0) for q, t in log.items() if len(t) > before.get(q, 0)}
    assert asked == {"q6": 1, "q7": 1, "q8": 1}
    assert [r.id for r in again] == [q.id for q in qs]
    assert {r.id for r in again if not r.meta["cached"]} == {"q6", "q7", "q8"}
    assert llm.read_failures(llm.failures_path(out)) == []
