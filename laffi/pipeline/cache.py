"""The stage cache: a stage's output is reused when the marker beside it holds the same key and says done.

A key is a hash of the stage's input files and settings, plus `FORMAT`: the version of what stages write and of how
keys are made. Raising `FORMAT` (when a stage's output or a key's recipe changes meaning) makes every stage of an old
run directory run again, instead of each key keeping special cases for old directories.

`begin` clears output and partial state left by a run with other inputs, so a stage never resumes from, or returns,
work done for different settings; `answer` and `train` resume from their partial state when the key is unchanged.

Several processes may share one run directory (`laffi experiment --workers N`, or `--shard I/N` on several machines
over a shared file system): `cached` takes the stage's lock (an advisory `flock` on `.<output>.lock`) whenever it
answers False, so exactly one process makes a stage while the others wait for it and then find it cached; `finish`
releases the lock (so does the end of the process, if the stage fails).

`only_cached()` turns every stage that is not cached into a `NotCached` error instead of work: `laffi experiment
--report-only` uses it to report the cells a run directory holds without making any.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from laffi.files import read_json, write_json

FORMAT = 3
Log = Callable[[str], None]


def file_hash(path: Path) -> str:
    """sha256 of a file, or of every file under a directory (names and bytes), for cache keys."""
    h = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for f in files:
        h.update(str(f.relative_to(path) if path.is_dir() else f.name).encode())
        with open(f, "rb") as stream:
            for block in iter(lambda: stream.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def stage_key(**inputs: Any) -> str:
    payload = json.dumps({"format": FORMAT, **inputs}, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def marker(output: Path) -> Path:
    """Where a stage records the key of the inputs its output (or its partial state) belongs to."""
    return output.with_name(f".{output.name}.stage.json")


class NotCached(Exception):
    """A stage that `only_cached` forbids making: its output is missing or was made from other inputs."""

    def __init__(self, output: Path):
        super().__init__(str(output))
        self.output = output


_read_only = False  # set by `only_cached`


@contextmanager
def only_cached() -> Iterator[None]:
    """Within this block `cached` raises `NotCached` for a stage it would otherwise make (and takes no lock)."""
    global _read_only
    before, _read_only = _read_only, True
    try:
        yield
    finally:
        _read_only = before


def cached(output: Path, key: str) -> bool:
    """Whether `output` was made from inputs with this key. When it was not, the caller holds the stage's lock until
    `finish`: it is the one process that makes it (within `only_cached`: NotCached is raised instead)."""
    if _done(output, key):
        return True
    if _read_only:
        raise NotCached(output)
    _lock(output)
    if _done(output, key):  # another process made it while this one waited
        _unlock(output)
        return True
    return False


def _done(output: Path, key: str) -> bool:
    m = marker(output)
    if not (output.exists() and m.exists()):
        return False
    state = read_json(m)
    return state.get("key") == key and state.get("done") is True


_held: dict[str, int] = {}  # lock path -> open descriptor, for the stages this process is making


def lock_path(output: Path) -> Path:
    return output.with_name(f".{output.name}.lock")


def _lock(output: Path) -> None:
    path = lock_path(output)
    if str(path) in _held:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    fcntl.flock(fd, fcntl.LOCK_EX)  # waits while another process makes the stage
    _held[str(path)] = fd


def _unlock(output: Path) -> None:
    fd = _held.pop(str(lock_path(output)), None)
    if fd is not None:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def begin(output: Path, key: str, scratch: list[Path] = ()) -> None:
    """Start or resume a stage; output and `scratch` (partial state) of a run with other inputs are removed first."""
    if _read_only:  # a stage found cached whose companion files are gone: still nothing is made
        raise NotCached(output)
    m = marker(output)
    if not (m.exists() and read_json(m).get("key") == key):
        for path in [output, *scratch]:
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink(missing_ok=True)
    write_json(m, {"key": key, "done": False})


def finish(output: Path, key: str) -> None:
    write_json(marker(output), {"key": key, "done": True})
    _unlock(output)
