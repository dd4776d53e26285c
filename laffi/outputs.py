"""Check output locations before any work starts.

A command that loads a model and answers for minutes must not discover at the end that `--out` is a directory, that
its parent is a file, that the directory is read-only, or that `--out` is the input it is reading. Each check here
raises `LaffiError` naming the option and the path, and creates nothing: the writable-directory probe makes and removes
one temporary file in the nearest directory that already exists.

Every command that writes passes all its inputs (files, directories, databases) to these checks: an output file that
is an input (the same inode: a symlink or a hard link counts) is refused, and so is an output directory that holds an
input, since a stage may replace anything inside it (`laffi run`'s `out_dir/config.yaml`, a trained adapter folder).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

from laffi.errors import LaffiError
from laffi.files import printable


def show(path: str | Path) -> str:
    """A path for a one-line message (`files.printable`: control characters and lone surrogates escaped)."""
    return printable(path)


def _nearest_existing(path: Path) -> Path:
    """The closest ancestor of `path` (or `path`'s parent itself) that exists; raises if one of them is a file."""
    parent = path.absolute().parent
    for d in (parent, *parent.parents):
        if d.exists() or d.is_symlink():
            if not d.is_dir():
                raise NotADirectoryError(d)
            return d
    return Path("/")


def _check_writable_dir(directory: Path, flag: str, target: Path) -> None:
    try:
        fd, probe = tempfile.mkstemp(dir=directory, prefix=".laffi-write-probe.")
    except OSError as e:
        reason = "permission denied" if isinstance(e, PermissionError) else (e.strerror or type(e).__name__).lower()
        raise LaffiError(f"{flag} {show(target)}: cannot write in {show(directory)} ({reason})") from None
    os.close(fd)
    os.unlink(probe)


Inputs = Iterable[tuple[str, str | Path | None]]


def database(flag: str, path: str | Path | None) -> list[tuple[str, str | Path | None]]:
    """A SQLite database as inputs: the file and the WAL, shared-memory and journal files SQLite keeps beside it."""
    if path is None:
        return []
    return [(flag, path), *((flag, f"{path}{suffix}") for suffix in ("-wal", "-shm", "-journal"))]


def check_output_file(path: str | Path, flag: str, inputs: Inputs = ()) -> None:
    """`path` can be written as a file: not a directory, no file among its parents, in a writable directory, and not
    the same file as any of `inputs` ((option, path) pairs; writing over an input would destroy it)."""
    path = Path(path)
    if path.is_dir():
        raise LaffiError(f"{flag} {show(path)}: is a directory, expected a file path")
    check_not_input(path, flag, inputs)
    _check_location(path, flag)


def check_not_input(path: str | Path, flag: str, inputs: Inputs) -> None:
    """Refuse an output file `path` that is the same file as one of `inputs` (resolved path or same inode)."""
    path = Path(path)
    for option, source in inputs:
        if source is not None and str(source) != "" and _same_file(path, Path(source)):
            raise LaffiError(f"{flag} {show(path)}: is the same file as {option} {show(source)}; it would overwrite "
                             "the input")  # fmt: skip


def check_output_dir(path: str | Path, flag: str, inputs: Inputs = ()) -> None:
    """`path` can be used (or created) as an output directory, and holds none of `inputs` (nor is one of them)."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise LaffiError(f"{flag} {show(path)}: exists and is not a directory")
    for option, source in inputs:
        if source is not None and str(source) != "" and _inside(Path(source), path):
            raise LaffiError(f"{flag} {show(path)}: holds the input {option} {show(source)}, which writing there "
                             "could replace; give an output directory that holds no input")  # fmt: skip
    if path.is_dir():
        _check_writable_dir(path, flag, path)
        return
    _check_location(path, flag)


def _inside(source: Path, directory: Path) -> bool:
    """`source` (an existing file or folder) is `directory` or lies under it (symlinks resolved)."""
    try:
        if not (source.exists() and directory.exists()):
            return False
        if os.path.samefile(source, directory):
            return True
        return source.resolve().is_relative_to(directory.resolve())
    except (OSError, RuntimeError):
        return False


def _check_location(path: Path, flag: str) -> None:
    try:
        directory = _nearest_existing(path)
    except NotADirectoryError as e:
        raise LaffiError(f"{flag} {show(path)}: {show(e.args[0])} is a file, not a directory") from None
    _check_writable_dir(directory, flag, path)


def _same_file(a: Path, b: Path) -> bool:
    """The same path (two outputs not written yet), the same file through a symlink, or the same inode."""
    try:
        if os.path.realpath(a) == os.path.realpath(b):
            return True
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except (OSError, ValueError):
        return False
