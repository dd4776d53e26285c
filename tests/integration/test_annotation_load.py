"""Load on loopback: 50 annotators submit 40 annotations each, all at once, to the real server (`laffi
annotate-server`, uvicorn, SQLite in WAL mode). Bounded in time; afterwards the database holds exactly the 2000
annotations sent (none lost, none duplicated, none mixed up between annotators). Prints the latency percentiles
(goal p99 < 100 ms; not asserted, because this test also runs on busy shared machines: the bound is the total time)."""

from __future__ import annotations

import asyncio
import json
import random
import resource
import sqlite3
import statistics
import time

from lean_client import Connection
from server_helper import annotation_server, cpu_seconds

from laffi.data import write_squad
from laffi.records import Question
from laffi.server.store import Store

ANNOTATORS, SUBMISSIONS = 50, 40
TIME_LIMIT_S = 120


def items(n: int) -> list[Question]:
    out = []
    for i in range(n):
        context = f"Passage {i}: the answer to question {i} is {1000 + i}."
        out.append(Question(id=f"load-{i:03d}", title=f"Load_{i // 10}", context=context,
                            question=f"What is the answer to question {i}?", answers=[str(1000 + i)],
                            answer_starts=[context.index(str(1000 + i))]))  # fmt: skip
    return out


async def annotator(url: str, name: str, token: str, ids: list[str], latencies: list[float],
                    problems: list[str]) -> None:  # fmt: skip
    order = ids[:]
    random.Random(name).shuffle(order)  # each annotator its own order: writes to the same item interleave
    headers = {"Authorization": f"Bearer {token}"}
    async with Connection(url) as conn:  # one keep-alive connection per annotator, as one browser tab
        for k, item_id in enumerate(order):
            body = {"verdict": "correct" if k % 2 else "incorrect", "feedback": f"{name} on {item_id}", "seconds": 1.5}
            start = time.perf_counter()
            status, text = await conn.request("PUT", f"/api/annotations/{item_id}", body, headers)
            latencies.append(time.perf_counter() - start)
            if status != 200 or json.loads(text)["progress"]["done"] != k + 1:
                problems.append(f"{name} #{k} {item_id}: {status} {text[:200]!r}")


async def run_load(url: str, tokens: dict[str, str], ids: list[str]) -> tuple[list[float], list[str], float]:
    latencies: list[float] = []
    problems: list[str] = []
    start = time.perf_counter()
    await asyncio.wait_for(asyncio.gather(*(annotator(url, name, tok, ids, latencies, problems)
                                            for name, tok in tokens.items())), TIME_LIMIT_S)  # fmt: skip
    return latencies, problems, time.perf_counter() - start


def process_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def test_50_annotators_x_40_submissions(tmp_path):
    qs = items(SUBMISSIONS)
    data, preds, db = tmp_path / "load.json", tmp_path / "preds.json", tmp_path / "fb.sqlite"
    write_squad(qs, data)
    preds.write_text(json.dumps({q.id: "1000" for q in qs}))
    store = Store(db)
    tokens = {f"ann{i:02d}": store.add_annotator(f"ann{i:02d}") for i in range(ANNOTATORS)}
    store.close()
    with annotation_server(data, preds, db, tmp_path / "server.log") as (url, pid):
        server_cpu, client_cpu = cpu_seconds(pid), process_cpu()
        latencies, problems, wall = asyncio.run(run_load(url, tokens, [q.id for q in qs]))
        server_cpu, client_cpu = cpu_seconds(pid) - server_cpu, process_cpu() - client_cpu

    assert problems == []
    assert len(latencies) == ANNOTATORS * SUBMISSIONS
    with sqlite3.connect(db) as con:
        rows = con.execute("SELECT annotator, item_id, feedback, seconds FROM annotations").fetchall()
    expected = {(name, q.id, f"{name} on {q.id}", 1.5) for name in tokens for q in qs}
    assert len(rows) == len(expected) and set(rows) == expected  # 0 lost, 0 duplicated, 0 misattributed

    ms = sorted(x * 1000 for x in latencies)
    p50, p99 = statistics.median(ms), ms[int(0.99 * len(ms)) - 1]
    print(f"\nload: {len(ms)} submissions by {ANNOTATORS} concurrent annotators in {wall:.1f} s "
          f"({len(ms) / wall:.0f}/s); latency p50 {p50:.1f} ms, p99 {p99:.1f} ms, max {ms[-1]:.1f} ms "
          f"(goal p99 < 100 ms); CPU: server {server_cpu:.1f} s, load generator {client_cpu:.1f} s")  # fmt: skip
