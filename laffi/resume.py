"""Partial work carries the settings that made it: a resume with other settings is refused, never mixed.

`laffi answer` appends finished answers to a partial JSONL beside its output and `laffi train` checkpoints into
`OUT.partial/`; a re-run resumes from them. Before any of that work is read, `claim` compares the settings recorded
beside the partial work (a small JSON: settings, model, adapter and data identity) with the run's own. Equal: the run
resumes. Different, or partial work with no readable record: one line that names what differs and how to start
afresh (`--restart`, which discards the partial work). `laffi run` / `laffi experiment` clear the partial state of
other settings before a stage starts (`laffi.pipeline.cache.begin`), so there the settings always agree.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

from laffi.errors import LaffiError
from laffi.files import printable, write_json
from laffi.records import to_dict

RESTART = "add --restart to discard it and start afresh"


def digest(records: Any) -> str:
    """sha256 of records (dataclasses, dicts, lists) by content: the identity of the questions or feedback trained on
    or answered, whichever file they were read from."""
    items = [to_dict(r) if hasattr(r, "__dataclass_fields__") else r for r in records]
    payload = json.dumps(items, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


_claimed: list[tuple[Path, list[Path]]] = []  # records this process wrote, for `drop_unused`


def claim(record: Path, partial: list[Path], settings: dict[str, Any], what: str, restart: bool = False,
          write: bool = True, vouched: bool = False) -> bool:  # fmt: skip
    """Make the partial work in `partial` (files or directories) this run's: returns whether there is some to resume.

    With `restart`, the partial work and its record are removed first. Partial work whose record is missing,
    unreadable or holds other settings is refused (LaffiError, one line). The record is (re)written for this run
    (unless not `write`: another process, started for this run, writes it). `vouched`: the stage cache's marker
    beside the output vouches for the partial work (`laffi run` / `experiment`: `cache.begin` cleared the partial
    state of any other key), which is then resumed without comparing records."""
    settings = json.loads(json.dumps(settings, sort_keys=True, default=str))  # the form it takes on disk
    if restart:
        for path in [*partial, record]:
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink(missing_ok=True)
    present = [p for p in partial if p.exists() and not (p.is_dir() and _only(p, record))]
    if present and not vouched:
        where = printable(present[0])
        try:
            saved = json.loads(record.read_text(encoding="utf-8"))
            if not isinstance(saved, dict) or not isinstance(saved.get("settings"), dict):
                raise ValueError("not a settings record")
        except FileNotFoundError:
            raise LaffiError(f"{where}: partial {what} with no record of the settings that made it "
                             f"({printable(record)} is missing); {RESTART}") from None  # fmt: skip
        except (OSError, UnicodeDecodeError, ValueError) as e:
            raise LaffiError(f"{printable(record)}: the settings record of the partial {what} cannot be read "
                             f"({_reason(e)}); {RESTART}") from None  # fmt: skip
        differ = differences(saved["settings"], settings)
        if differ:
            raise LaffiError(f"{where}: partial {what} made with other settings ({differ}); re-run with those "
                             f"settings to resume it, or {RESTART}")  # fmt: skip
    if write:
        write_json(record, {"settings": settings})
        _claimed.append((record, partial))
    return bool(present)


def drop_unused() -> None:
    """Remove the records of claims that no partial work followed (a run that failed before its first answer or
    checkpoint): a failed command leaves nothing behind."""
    while _claimed:
        record, partial = _claimed.pop()
        if not any(p.exists() and not (p.is_dir() and _only(p, record)) for p in partial):
            record.unlink(missing_ok=True)
            for p in partial:
                if p.is_dir() and not any(p.iterdir()):
                    p.rmdir()


def _only(directory: Path, record: Path) -> bool:
    """Whether `directory` holds nothing but `record` (a run that stopped before any work)."""
    return all(p == record for p in directory.iterdir())


def _reason(e: Exception) -> str:
    if isinstance(e, OSError):
        return (e.strerror or type(e).__name__).lower()
    return str(e).splitlines()[0] if str(e) else type(e).__name__


def differences(old: dict[str, Any], new: dict[str, Any], limit: int = 3) -> str:
    """'answer.shots 0 -> 2, model.name a -> b': the settings that differ (at most `limit`, then a count)."""
    a, b = _flat(old), _flat(new)
    keys = [k for k in sorted(a.keys() | b.keys()) if a.get(k, "(unset)") != b.get(k, "(unset)")]
    shown = [f"{k} {_show(a.get(k, '(unset)'))} -> {_show(b.get(k, '(unset)'))}" for k in keys[:limit]]
    if len(keys) > limit:
        shown.append(f"{len(keys) - limit} more")
    return ", ".join(shown)


def _flat(settings: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in settings.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _show(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False) if not isinstance(value, str) else value
    if isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value):
        return value[:8]  # a content hash
    return text if len(text) <= 40 else text[:37] + "..."
