"""Latency of the annotation server on loopback, measured side by side in one run: the database write alone with
SQLite's two sync modes, one annotator saving 400
annotations one after another (the server's own round trip), then 50 annotators saving 40 each all at once (the load
test's workload, tests/integration/test_annotation_load.py), with two load generators on the same cores as the server:
httpx's async client and the lean h11 client the load test uses. Prints p50/p99 and the CPU the server and the load
generator used. Usage: .venv/bin/python bench/annotation_server.py"""

from __future__ import annotations

import asyncio
import json
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "integration"))
from server_helper import annotation_server, cpu_seconds  # noqa: E402
from test_annotation_load import ANNOTATORS, TIME_LIMIT_S, items, run_load  # noqa: E402

from laffi.data import write_squad  # noqa: E402
from laffi.server.store import Store  # noqa: E402


def percentiles(seconds: list[float]) -> str:
    ms = sorted(x * 1000 for x in seconds)
    return f"p50 {statistics.median(ms):.2f} ms, p99 {ms[int(0.99 * len(ms)) - 1]:.2f} ms, max {ms[-1]:.2f} ms"


def own_cpu() -> float:
    u = resource.getrusage(resource.RUSAGE_SELF)
    return u.ru_utime + u.ru_stime


def store_saves(tmp: Path, synchronous: str) -> float:
    """Milliseconds per Store.save + progress (what one PUT does to the database) with this SQLite sync mode."""
    store = Store(tmp / f"sync-{synchronous}.sqlite")
    store.db.execute(f"PRAGMA synchronous={synchronous}")
    qs = items(40)
    store.add_items(qs, {q.id: "" for q in qs})
    store.add_annotator("a")
    start = time.perf_counter()
    for i in range(400):
        store.save("a", qs[i % 40].id, "correct", f"note {i}", 1.0)
        store.progress("a")
    store.close()
    return (time.perf_counter() - start) / 400 * 1000


async def run_load_httpx(url: str, tokens: dict[str, str], ids: list[str]) -> tuple[list[float], list[str], float]:
    """The same workload as `run_load`, through httpx.AsyncClient (one keep-alive connection per annotator)."""
    import random

    latencies: list[float] = []
    problems: list[str] = []

    async def one(client: httpx.AsyncClient, name: str, token: str) -> None:
        order = ids[:]
        random.Random(name).shuffle(order)
        for k, item_id in enumerate(order):
            body = {"verdict": "correct" if k % 2 else "incorrect", "feedback": f"{name} on {item_id}", "seconds": 1.5}
            start = time.perf_counter()
            r = await client.put(f"api/annotations/{item_id}", json=body, headers={"Authorization": f"Bearer {token}"})
            latencies.append(time.perf_counter() - start)
            if r.status_code != 200:
                problems.append(f"{name} #{k}: {r.status_code}")

    limits = httpx.Limits(max_connections=ANNOTATORS, max_keepalive_connections=ANNOTATORS)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=30) as client:
        start = time.perf_counter()
        await asyncio.wait_for(asyncio.gather(*(one(client, n, t) for n, t in tokens.items())), TIME_LIMIT_S)
        return latencies, problems, time.perf_counter() - start


def main() -> None:
    tmp = Path(tempfile.mkdtemp())
    full, normal = store_saves(tmp, "FULL"), store_saves(tmp, "NORMAL")
    print(f"Store.save + progress: synchronous=FULL {full:.2f} ms, NORMAL {normal:.2f} ms (WAL; laffi uses NORMAL)")
    qs = items(40)
    write_squad(qs, tmp / "data.json")
    (tmp / "preds.json").write_text(json.dumps({q.id: "1000" for q in qs}))
    store = Store(tmp / "fb.sqlite")
    # Two sets of 50 annotators, one per load generator: each run saves 2000 new annotations (the same work).
    teams = {label: {f"{label[:4]}{i:02d}": store.add_annotator(f"{label[:4]}{i:02d}") for i in range(50)}
             for label in ("httpx client", "lean h11 client")}  # fmt: skip
    solo = store.add_annotator("solo")  # not one of the 50: their progress counts start at 0
    store.close()
    with annotation_server(tmp / "data.json", tmp / "preds.json", tmp / "fb.sqlite", tmp / "server.log") as (url, pid):
        headers = {"Authorization": f"Bearer {solo}"}
        latencies = []
        with httpx.Client(base_url=url) as client:
            for i in range(400):
                start = time.perf_counter()
                r = client.put(f"api/annotations/{qs[i % 40].id}", headers=headers,
                               json={"verdict": "correct", "feedback": f"note {i}"})  # fmt: skip
                latencies.append(time.perf_counter() - start)
                r.raise_for_status()
        print(f"1 annotator, 400 saves one after another: {percentiles(latencies)}")
        for label, load in (("httpx client", run_load_httpx), ("lean h11 client", run_load)):
            server, own = cpu_seconds(pid), own_cpu()
            latencies, problems, wall = asyncio.run(load(url, teams[label], [q.id for q in qs]))
            server, own = cpu_seconds(pid) - server, own_cpu() - own
            print(f"50 annotators x 40 saves at once, {label}: {percentiles(latencies)}; "
                  f"{len(latencies) / wall:.0f} saves/s; CPU server {server:.1f} s, load generator {own:.1f} s; "
                  f"{len(problems)} problems")


if __name__ == "__main__":
    main()
