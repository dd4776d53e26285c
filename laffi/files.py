"""Reading and writing files safely: every write atomic (temporary file in the same directory, then rename) so an
interrupted stage never leaves a half-written output; append-only JSONL that a resumed stage reads back whole (a torn
last line is dropped); every input through `read_input_bytes` (regular files only, size-capped) and every JSON
document through `parse_json` (depth, digit and lone-surrogate limits), so each bad file is one `LaffiError` line
whatever reads it. The typed records that these files hold are in laffi/records.py."""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import json
import os
import re
import stat
import tempfile
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from laffi.errors import LaffiError

T = TypeVar("T")

# Input files are read whole into memory; anything larger is a mistake (the SQuAD 2.0 train set is 40 MB), and the
# cap also bounds what a wrong path can make us read.
MAX_INPUT_BYTES = 2 * 1024**3


def printable(path: str | Path) -> str:
    """A path (or a JSON key) for an error message: control characters (a newline in a file name), lone surrogates
    (undecodable bytes of a file name) and other unprintable characters come out escaped as in `repr`, so the
    message stays one printable line."""
    text = str(path)
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def read_input_bytes(path: str | Path, what: str) -> bytes:
    """The bytes of an input file, or a one-line `LaffiError`: missing, a directory, not a regular file (a FIFO would
    block forever, /dev/zero never ends), larger than MAX_INPUT_BYTES, unreadable, a symlink loop."""
    name = printable(path)
    try:
        # O_NONBLOCK: opening a FIFO for reading would otherwise wait for a writer; regular files ignore the flag.
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except FileNotFoundError:
        raise LaffiError(f"{name}: file not found") from None
    except PermissionError:
        raise LaffiError(f"{name}: permission denied") from None
    except IsADirectoryError:  # Windows; Linux opens a directory and fstat says so below
        raise LaffiError(f"{name}: is a directory, expected a {what} file") from None
    except OSError as e:
        reason = "a symlink loop" if e.errno == errno.ELOOP else (e.strerror or str(e)).lower()
        raise LaffiError(f"{name}: cannot open ({reason})") from None
    try:
        info = os.fstat(fd)
        if stat.S_ISDIR(info.st_mode):
            raise LaffiError(f"{name}: is a directory, expected a {what} file")
        if not stat.S_ISREG(info.st_mode):
            raise LaffiError(f"{name}: not a regular file ({_file_kind(info.st_mode)}), expected a {what} file")
        if info.st_size > MAX_INPUT_BYTES:
            raise LaffiError(f"{name}: too large ({_size(info.st_size)}; the limit is {_size(MAX_INPUT_BYTES)})")
        data = _read_at_most(fd, MAX_INPUT_BYTES + 1)  # the file may grow after fstat
    except OSError as e:
        raise LaffiError(f"{name}: cannot read ({(e.strerror or str(e)).lower()})") from None
    finally:
        os.close(fd)
    if len(data) > MAX_INPUT_BYTES:
        raise LaffiError(f"{name}: too large (over {_size(MAX_INPUT_BYTES)})")
    return data


def _read_at_most(fd: int, limit: int) -> bytes:
    chunks, total = [], 0
    while total < limit:
        chunk = os.read(fd, min(limit - total, 1 << 24))
        if not chunk:
            break
        chunks.append(chunk)
        total += len(chunk)
    return b"".join(chunks)


def _file_kind(mode: int) -> str:
    for test, kind in ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket")):  # fmt: skip
        if test(mode):
            return kind
    return "not a plain file"


def _size(n: int) -> str:
    return f"{n / 1024**3:.1f} GiB" if n >= 1024**3 else f"{n / 1024**2:.1f} MiB"


def read_input_text(path: str | Path, what: str) -> str:
    """`read_input_bytes` decoded as UTF-8 (a one-line error naming the first bad byte otherwise)."""
    raw = read_input_bytes(path, what)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise LaffiError(f"{printable(path)}: not UTF-8 text (byte {e.start})") from None


def parse_json(text: str) -> Any:
    """`json.loads`, with the ways a syntactically valid document still breaks Python turned into `ValueError`s
    whose message is one line; `json.JSONDecodeError` passes through for the caller's line/column message."""
    try:
        data = json.loads(text)
    except RecursionError:
        # The C decoder recurses once per nesting level: ~1,000 levels exhaust Python's stack.
        raise ValueError("nested too deeply") from None
    except json.JSONDecodeError:
        raise
    except ValueError as e:
        # Integers over sys.get_int_max_str_digits() digits (4,300): Python refuses to convert them.
        if "integer string conversion" in str(e):
            raise ValueError(f"a number with more than {_max_digits()} digits") from None
        raise ValueError(str(e).splitlines()[0] if str(e) else "not valid JSON") from None
    # Only a \ud800-style escape can make a lone surrogate (the UTF-8 decoder rejects encoded ones); such a string
    # cannot be written back as UTF-8, so it is bad input here rather than a crash (and an empty folder) later.
    if _SURROGATE_ESCAPE.search(text):
        where = _lone_surrogate(data)
        if where is not None:
            raise ValueError(f"{where}: lone surrogate in a string (not valid Unicode)")
    return data


_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


def _max_digits() -> str:
    import sys

    return f"{sys.get_int_max_str_digits():,}" if hasattr(sys, "get_int_max_str_digits") else "4,300"


def has_lone_surrogate(text: str) -> bool:
    if text.isascii():
        return False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _lone_surrogate(data: Any) -> str | None:
    """The JSON path (`data[0].qas[1].id`, `key "..."`) of the first string holding a lone surrogate, or None.
    Iterative: the document may be nested as deep as the decoder allows."""
    stack: list[tuple[Any, str]] = [(data, "")]
    while stack:
        value, where = stack.pop()
        if isinstance(value, str):
            if has_lone_surrogate(value):
                return where or "top level"
        elif isinstance(value, dict):
            for key, item in value.items():
                if has_lone_surrogate(key):
                    return f"{where or 'top level'}: a key"
                stack.append((item, f"{where}.{printable(key)}" if where else printable(key)))
        elif isinstance(value, list):
            stack.extend((item, f"{where}[{i}]") for i, item in enumerate(value))
    return None


# ---------------------------------------------------------------------------------------------- atomic writes


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write `text` to `path` via a temporary file + rename, so readers never see a partial file.

    The temporary file is `.NAME.PID.RANDOM.tmp`: a writer killed before the rename (kill -9, power loss) leaves it
    behind, and the next write of the same file removes it once its process is gone (`_remove_stale_temporaries`)."""
    path = Path(path)
    try:
        # Encoded before anything touches the disk: text that cannot be written leaves no folder or file behind.
        data = text.encode("utf-8")
    except UnicodeEncodeError:
        raise LaffiError(f"{printable(path)}: cannot write a lone surrogate (not valid Unicode)") from None
    made = missing_folders(path.parent)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        _remove_stale_temporaries(path)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp")
    except OSError as e:
        remove_empty_folders(made)
        raise LaffiError(f"{printable(path)}: cannot write ({(e.strerror or str(e)).lower()})") from None
    _WRITING.add(os.path.abspath(tmp))
    try:
        # mkstemp creates 0600 files; give the output the permissions a normal open() would.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        remove_empty_folders(made)  # a full disk leaves no folder this write made
        if isinstance(e, OSError):  # e.g. the output path is a directory, or the disk is full
            raise LaffiError(f"{printable(path)}: cannot write ({(e.strerror or str(e)).lower()})") from None
        raise
    finally:
        _WRITING.discard(os.path.abspath(tmp))


def missing_folders(folder: Path) -> list[Path]:
    """The folders of `folder`'s path that do not exist yet, deepest first (what a `mkdir(parents=True)` makes)."""
    out = []
    for d in (folder, *folder.parents):
        if d.exists() or d.is_symlink():
            break
        out.append(d)
    return out


def remove_empty_folders(folders: list[Path]) -> None:
    """Remove the folders (deepest first) that a failed write made, as long as they are empty."""
    for d in folders:
        try:
            d.rmdir()
        except OSError:
            return


_STARTED = time.time()
_WRITING: set[str] = set()  # this process's temporaries being written now (by any thread)


def _remove_stale_temporaries(path: Path) -> None:
    """Remove `.NAME.*.tmp` siblings of `path` whose writer is dead: its pid no longer runs, or it is our own pid
    but not a write in progress here (pids are reused, in containers often the same small numbers). Files of live
    writers are kept: another process may be writing the same output right now."""
    prefix = f".{path.name}."
    try:
        candidates = [p for p in path.parent.iterdir() if p.name.startswith(prefix) and p.name.endswith(".tmp")]
    except OSError:
        return
    for tmp in candidates:
        # mkstemp's random part is 8 characters without dots; anything else belongs to another NAME (`a.b` vs `a`).
        parts = tmp.name[len(prefix) : -len(".tmp")].split(".")
        try:
            if len(parts) == 2 and parts[0].isdigit() and len(parts[1]) == 8:
                pid = int(parts[0])
                stale = os.path.abspath(tmp) not in _WRITING if pid == os.getpid() else not _alive(pid)
            elif len(parts) == 1 and len(parts[0]) == 8:  # `.NAME.RANDOM.tmp`, from before temporaries had a pid
                stale = tmp.stat().st_mtime < _STARTED
            else:
                continue
            if stale:
                tmp.unlink()
        except OSError:
            continue  # gone already, or not ours to remove


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, OSError):
        return True  # exists but belongs to someone else, or cannot tell: keep the file
    return True


def write_json(path: str | Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def read_json(path: str | Path, what: str = "JSON") -> Any:
    text = read_input_text(path, what)
    try:
        return parse_json(text)
    except json.JSONDecodeError as e:
        raise LaffiError(f"{printable(path)}: not valid JSON (line {e.lineno}, column {e.colno}: {e.msg})") from None
    except ValueError as e:
        raise LaffiError(f"{printable(path)}: not valid JSON: {e}") from None


def write_jsonl(path: str | Path, records: Iterable[Any]) -> None:
    lines = [json.dumps(_plain(r), ensure_ascii=False) for r in records]
    atomic_write_text(path, "".join(line + "\n" for line in lines))


class JsonlAppender:
    """Append records one line at a time (flushed), so a killed stage can resume from what is on disk."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._made = missing_folders(self.path.parent)
        self._created = not self.path.exists()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._truncate_torn_tail()
            self._f = open(self.path, "a", encoding="utf-8")
            self._size = os.fstat(self._f.fileno()).st_size  # what is on disk, whole lines only
        except OSError as e:
            self._undo()
            raise LaffiError(f"{printable(self.path)}: cannot append ({(e.strerror or str(e)).lower()})") from None

    def _truncate_torn_tail(self) -> None:
        try:
            info = os.stat(self.path)
        except FileNotFoundError:
            return
        if not stat.S_ISREG(info.st_mode):
            raise LaffiError(f"{printable(self.path)}: not a regular file ({_file_kind(info.st_mode)})")
        # Only the tail matters: read backwards in blocks up to the last newline instead of the whole file.
        with open(self.path, "r+b") as f:
            end = info.st_size
            pos = end
            while pos > 0:
                start = max(0, pos - 65536)
                f.seek(start)
                block = f.read(pos - start)
                nl = block.rfind(b"\n")
                if nl >= 0:
                    pos = start + nl + 1
                    break
                pos = start
            if pos != end:
                f.truncate(pos)

    def append(self, record: Any) -> None:
        line = json.dumps(_plain(record), ensure_ascii=False) + "\n"
        try:
            line.encode("utf-8")
        except UnicodeEncodeError:  # checked before writing: a half-written line would be a torn tail mid-file
            raise LaffiError(f"{printable(self.path)}: cannot write a lone surrogate (not valid Unicode)") from None
        try:
            self._f.write(line)
            self._f.flush()
        except OSError as e:  # a full disk: the lines written so far stay whole, the torn one goes
            with contextlib.suppress(OSError, ValueError):
                self._f.close()
            self._undo()
            raise LaffiError(f"{printable(self.path)}: cannot write ({(e.strerror or str(e)).lower()})") from None
        self._size += len(line.encode("utf-8"))

    def _undo(self) -> None:
        """After a failed write: cut the file back to its whole lines; a file (and folders) this appender made
        that holds no line is removed."""
        size = getattr(self, "_size", 0)
        with contextlib.suppress(OSError):
            if self._created and size == 0:
                self.path.unlink(missing_ok=True)
                remove_empty_folders(self._made)
            elif self.path.exists():
                os.truncate(self.path, size)

    def close(self) -> None:
        with contextlib.suppress(ValueError):  # closed already by a failed write
            self._f.close()

    def __enter__(self) -> JsonlAppender:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def iter_chunks(items: list[T], size: int) -> Iterator[list[T]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def _plain(record: Any) -> Any:
    """A record as JSON takes it: a dataclass as its dict, anything else as it is."""
    return dataclasses.asdict(record) if dataclasses.is_dataclass(record) else record
