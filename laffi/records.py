"""Typed records that flow between stages, and their JSON/JSONL (de)serialisation.

Every write is atomic (temporary file in the same directory, then rename) so an interrupted stage never leaves a
half-written output. Append-only JSONL files are how long stages resume: a torn last line is dropped on reading.

Every input file goes through `read_input_bytes` (regular files only, size-capped) and every JSON document through
`_parse_json` (depth, digit and lone-surrogate limits), so each bad file is one `LaffiError` line whatever reads it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import json
import math
import os
import re
import stat
import tempfile
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
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


def _parse_json(text: str) -> Any:
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


@dataclass
class Question:
    """One SQuAD 2.0 question with its passage. `answers` is empty when `is_impossible`."""

    id: str
    title: str
    context: str
    question: str
    answers: list[str] = field(default_factory=list)
    answer_starts: list[int] = field(default_factory=list)
    is_impossible: bool = False


@dataclass
class Generation:
    """One model output: the raw text it generated and the answer parsed from it ("" = abstain)."""

    id: str
    raw: str
    answer: str
    na_prob: float | None = None  # no-answer score at the first answer position (engines/steering.py)


@dataclass
class Revision:
    """Answer, then predict feedback on it, then revise: one question's history over the rounds."""

    id: str
    first_answer: str
    feedback: list[str] = field(default_factory=list)  # the feedback the model predicted, one per round
    verdicts: list[str] = field(default_factory=list)  # "correct", "incorrect" or "unparsed", one per round
    answers: list[str] = field(default_factory=list)  # the answer after each round
    final_answer: str = ""
    # The adapter's probability of "Verdict: incorrect" on its first answer (`engines.generation.verdict_scores`),
    # and whether that was above answer.revise_threshold, so the rounds ran (False: it kept its first answer).
    incorrect_prob: float | None = None
    revised: bool = True


@dataclass
class FeedbackRecord:
    """Natural-language feedback on one predicted answer. Human, LLM and reference annotators all write this."""

    id: str
    question: str
    context: str
    predicted_answer: str
    gold_answers: list[str]
    verdict: str  # "correct" or "incorrect"
    feedback: str
    annotator: str  # "reference", "human:<name>", "llm:<model>"
    template_version: str
    title: str = ""
    is_impossible: bool = False
    meta: dict[str, Any] = field(default_factory=dict)


def to_dict(record: Any) -> dict[str, Any]:
    return dataclasses.asdict(record)


def from_dict(cls: type[T], data: Any, where: str) -> T:
    """Build a dataclass from a dict, naming `where` (file:line) and the field on any mismatch."""
    if not isinstance(data, dict):
        raise LaffiError(f"{where}: expected a JSON object, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise LaffiError(f"{where}: unknown field '{printable(unknown[0])}'")
    for name, f in fields.items():
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        if name not in data:
            if required:
                raise LaffiError(f"{where}: missing field '{name}'")
            continue
        _check_type(data[name], f.type, f"{where}: field '{name}'")
    if isinstance(data.get("meta"), dict):
        _check_meta(data["meta"], where)
    return cls(**data)


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _is_duration(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value >= 0


# The `meta` keys that reports add up (laffi/feedback/report.py, the LLM annotator's summary): a string or a NaN
# there would crash them, or silently poison a mean, long after the file was read.
_META_CHECKS = {"prompt_tokens": (_is_count, "an integer >= 0"), "completion_tokens": (_is_count, "an integer >= 0"),
                "seconds": (_is_duration, "a finite number >= 0")}  # fmt: skip


def _check_meta(meta: dict[str, Any], where: str) -> None:
    for key, (ok, expected) in _META_CHECKS.items():
        if key in meta and not ok(meta[key]):
            raise LaffiError(f"{where}: field 'meta.{key}' must be {expected}, got {json.dumps(meta[key])}")


_SIMPLE_TYPES = {"str": str, "bool": bool, "float": (int, float), "int": int}


def _check_type(value: Any, annotation: Any, where: str) -> None:
    # Annotations are strings because of `from __future__ import annotations`; we only use a few shapes.
    ann = str(annotation)
    if ann in _SIMPLE_TYPES:
        ok = isinstance(value, _SIMPLE_TYPES[ann]) and not (ann != "bool" and isinstance(value, bool))
    elif ann.startswith("list["):
        inner = _SIMPLE_TYPES[ann[5:-1]]
        ok = isinstance(value, list) and all(isinstance(v, inner) and not isinstance(v, bool) for v in value)
    elif ann.startswith("dict["):
        ok = isinstance(value, dict)
    else:
        ok = True
    if not ok:
        raise LaffiError(f"{where} has the wrong type ({type(value).__name__}, expected {ann})")


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
        return _parse_json(text)
    except json.JSONDecodeError as e:
        raise LaffiError(f"{printable(path)}: not valid JSON (line {e.lineno}, column {e.colno}: {e.msg})") from None
    except ValueError as e:
        raise LaffiError(f"{printable(path)}: not valid JSON: {e}") from None


def write_jsonl(path: str | Path, records: Iterable[Any]) -> None:
    lines = [json.dumps(to_dict(r), ensure_ascii=False) for r in records]
    atomic_write_text(path, "".join(line + "\n" for line in lines))


def read_jsonl(path: str | Path, cls: type[T], *, tolerate_torn_tail: bool = False) -> list[T]:
    """Read typed records. With `tolerate_torn_tail`, an unterminated last line (a crash mid-append) is dropped."""
    text = read_input_text(path, "JSONL")
    name = printable(path)
    lines = text.split("\n")
    if tolerate_torn_tail and lines and lines[-1]:
        lines[-1] = ""
    out = []
    for no, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            data = _parse_json(line)
        except json.JSONDecodeError as e:
            raise LaffiError(f"{name}:{no}: not valid JSON ({e.msg})") from None
        except ValueError as e:
            raise LaffiError(f"{name}:{no}: not valid JSON: {e}") from None
        out.append(from_dict(cls, data, f"{name}:{no}"))
    return out


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
        line = json.dumps(to_dict(record), ensure_ascii=False) + "\n"
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


# ---------------------------------------------------------------------------------------------- typed readers


def read_predictions(path: str | Path, questions: list[Question] | None = None) -> dict[str, str]:
    """Official-format predictions `{id: text}`; with `questions`, ids unknown to the data are an error."""
    preds = read_json(path, "predictions")
    name = printable(path)
    if not isinstance(preds, dict):
        raise LaffiError(f"{name}: expected a JSON object {{question_id: answer_text}}, got {type(preds).__name__}")
    for qid, text in preds.items():
        if not isinstance(text, str):
            raise LaffiError(f"{name}: '{printable(qid)}': answer must be a string, got {type(text).__name__}")
    if questions is not None:
        known = {q.id for q in questions}
        unknown = [qid for qid in preds if qid not in known]
        if unknown:
            raise LaffiError(f"{name}: '{printable(unknown[0])}': unknown question id ({len(unknown)} unknown in all)")
    return preds


def read_feedback(path: str | Path) -> list[FeedbackRecord]:
    """Feedback records (JSONL), each with a verdict of 'correct' or 'incorrect' and some feedback text."""
    records = read_jsonl(path, FeedbackRecord)
    name = printable(path)
    for no, r in enumerate(records, start=1):
        if r.verdict not in ("correct", "incorrect"):
            raise LaffiError(f"{name}: record {no} ('{printable(r.id)}'): verdict must be 'correct' or 'incorrect'")
        if not r.feedback.strip():
            raise LaffiError(f"{name}: record {no} ('{printable(r.id)}'): empty feedback")
    return records
