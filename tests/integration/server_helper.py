"""Start the real annotation server (`laffi annotate-server`, uvicorn) for a test and stop it afterwards."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def annotation_server(data: Path, predictions: Path, db: Path, log_path: Path,
                      *extra: object) -> Iterator[tuple[str, int]]:  # fmt: skip
    """Yields the server's URL and process id once it answers; `extra`: more `annotate-server` flags. The server's
    output goes to `log_path` (a file, not a pipe: a full pipe would block the server)."""
    port = free_port()
    with open(log_path, "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "laffi", "annotate-server", "--data", str(data),
                                 "--predictions", str(predictions), "--db", str(db), "--port", str(port),
                                 *map(str, extra)], stdout=log, stderr=subprocess.STDOUT)  # fmt: skip
        url = f"http://127.0.0.1:{port}/"
        try:
            deadline = time.time() + 60
            while True:
                try:
                    urllib.request.urlopen(url, timeout=1)
                    break
                except OSError:
                    if proc.poll() is not None or time.time() > deadline:
                        pytest.fail(f"annotation server did not start: {log_path.read_text()[-2000:]}")
                    time.sleep(0.2)
            yield url, proc.pid
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far (Linux /proc)."""
    import os

    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
