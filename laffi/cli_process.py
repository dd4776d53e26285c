"""How a `laffi` command runs as a process: one line on stderr and exit code 2 for a `LaffiError` (or an OS error no
check foresaw), exit 130 on Ctrl-C or SIGTERM (every stage resumes), other packages' warnings held until the command
has succeeded. The commands themselves are in laffi/cli.py."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import sys
import threading
import warnings
from pathlib import Path
from typing import Any

import typer

from laffi.errors import LaffiError
from laffi.outputs import show


def _err(msg: str) -> None:
    typer.echo(f"laffi: error: {msg}", err=True)



def passive_openmp() -> None:
    """OpenMP threads that sleep while they wait, unless the user set a policy: with as many threads as cores, the
    default spinning makes two torch processes on one machine steal each other's cores (a training step beside a
    2-thread torch process took 4.1x its time alone; 1.5x with PASSIVE, which cost nothing measurable alone:
    bench/contention.py, docs/performance.md). Read by torch's OpenMP when it starts, so set before torch loads."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def run_command(app: Any, argv: list[str] | None = None) -> None:
    """Run the typer `app` as the process: OpenMP threads that sleep, signals that end in exit 130 (resumable), other
    packages' warnings held until success, a `LaffiError` or an OS error as one line and exit 2."""
    passive_openmp()
    previous = _catch_signals()
    held: list[str] = []  # other packages' warnings, shown once the command has succeeded
    shown_before, warnings.showwarning = warnings.showwarning, _show_warning(held)
    code = None
    try:
        code = app(args=argv, standalone_mode=False)
    except LaffiError as e:
        if _SIGNALLED:  # an error raised while unwinding from the signal: the signal is what happened
            _interrupted()
        _err(_one_line(str(e)))
        sys.exit(2)
    except KeyboardInterrupt:
        _interrupted()
    except OSError as e:
        # A file-system failure no check foresaw (disk full, a file removed mid-run): still one line, not a traceback.
        where = f"{show(e.filename)}: " if e.filename else ""
        _err(_one_line(f"{where}{_os_reason(e)}"))
        sys.exit(2)
    except Exception as e:
        if _SIGNALLED:  # click before typer 0.26 turns KeyboardInterrupt into Abort
            _interrupted()
        code = _click_exit(e)
        if code is None:
            raise
        sys.exit(code)
    finally:
        _restore_signals(previous)
        warnings.showwarning = shown_before
    # typer >= 0.26 turns KeyboardInterrupt into Exit(130) and, with standalone_mode=False, returns the code.
    if _SIGNALLED or code == 130:
        _interrupted()
    if isinstance(code, int) and code:
        sys.exit(code)
    for line in dict.fromkeys(held):
        typer.echo(line, err=True)


LAFFI_DIR = str(Path(__file__).resolve().parent)


def _show_warning(held: list[str]) -> Any:
    """`warnings.showwarning` while a command runs: every warning is one line (not Python's two, with a source
    line). laffi's own (a slow dtype) are shown at once; other packages' are held and shown when the command
    succeeds, so that a failing command's stderr is its one error line, not a library's deprecation notice first."""

    def show_warning(message: Any, category: type, filename: str, lineno: int, file: Any = None,
                     line: Any = None) -> None:  # fmt: skip
        text = f"laffi: warning: {_one_line(str(message))}"
        if str(filename).startswith(LAFFI_DIR):
            typer.echo(text, err=True)
        else:
            held.append(f"{text} ({category.__name__}, {Path(str(filename)).name}:{lineno})")

    return show_warning


# OSErrors without an errno (strerror None) by the class names of huggingface_hub's errors, which subclass OSError.
_OS_REASONS = {
    "LocalEntryNotFoundError": "not found on this machine, and downloads are off (HF_HUB_OFFLINE) or failed",
    "RepositoryNotFoundError": "no such model repository on the Hugging Face Hub (or it is private)",
    "GatedRepoError": "a gated repository: accept its terms on the Hub and log in (hf auth login)",
    "RevisionNotFoundError": "no such revision of the repository",
    "EntryNotFoundError": "a file the model needs is not in its repository or directory",
}


def _os_reason(e: OSError) -> str:
    """What went wrong, in words: the system's (`strerror`), else a known error class's, else the message's first
    line; never a bare class name such as `localentrynotfounderror`."""
    if e.strerror:
        return e.strerror.lower()
    for cls in type(e).__mro__:
        if cls.__name__ in _OS_REASONS:
            return _OS_REASONS[cls.__name__]
    lines = str(e).strip().splitlines()
    return lines[0] if lines else type(e).__name__


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM, raised where the program is: the cleanup of Ctrl-C runs for both (temporaries removed,
    finished answers, checkpoints and cells kept), then `main` exits 128 + the signal's number."""


_SIGNALLED: list[int] = []  # the signal that interrupted this `main`, if any
_REPORTED: list[bool] = []  # the interrupt's line is written once, by the main thread or the watchdog
_REPORT_LOCK = threading.Lock()
SIGNAL_GRACE_S = 10.0  # how long the watchdog waits for the main thread to unwind before it ends the process


def _on_signal(signum: int, frame: Any) -> None:
    if _SIGNALLED:  # a second signal while unwinding from the first: stop at once
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
        return
    _SIGNALLED.append(signum)
    raise Interrupted(signal.Signals(signum).name)


def _catch_signals() -> dict[str, Any]:
    """Route SIGINT and SIGTERM to `_on_signal`, and start the watchdog; returns what `_restore_signals` puts back
    (`main` runs inside tests' processes too).

    Python runs a signal handler only between bytecodes of the main thread: native code that retries on EINTR (a
    torch rendezvous waiting 30 minutes for processes that never come) would never see it, and SIGTERM, which would
    have ended the process, would do nothing. The interpreter also writes each caught signal's number to a wakeup
    fd; the watchdog thread reads it and, if the main thread has not unwound SIGNAL_GRACE_S later, writes the line
    and ends the process with the same code (what is left is what SIGKILL would leave: resumable)."""
    _SIGNALLED.clear()
    _REPORTED.clear()
    try:
        handlers = {signum: signal.signal(signum, _on_signal) for signum in (signal.SIGINT, signal.SIGTERM)}
    except ValueError:  # not the main thread: signals stay as they are
        return {}
    read_fd, write_fd = os.pipe()
    os.set_blocking(write_fd, False)
    wakeup = signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
    finished = threading.Event()
    threading.Thread(target=_watchdog, args=(read_fd, finished), daemon=True, name="laffi-signals").start()
    return {"handlers": handlers, "wakeup": wakeup, "write_fd": write_fd, "finished": finished}


def _watchdog(read_fd: int, finished: threading.Event) -> None:
    signum = None
    with contextlib.suppress(OSError):
        while signum is None:
            data = os.read(read_fd, 64)
            if not data:  # `_restore_signals` closed the pipe: `main` is over
                break
            signum = next((b for b in data if b in (signal.SIGINT, signal.SIGTERM)), None)
    os.close(read_fd)
    if signum is None or finished.wait(SIGNAL_GRACE_S):
        return
    _report(signum, lambda line: os.write(2, line.encode() + b"\n"))
    os._exit(128 + signum)


def _restore_signals(saved: dict[str, Any]) -> None:
    if not saved:
        return
    saved["finished"].set()
    for signum, handler in saved["handlers"].items():
        signal.signal(signum, handler)
    signal.set_wakeup_fd(saved["wakeup"])
    os.close(saved["write_fd"])


def _report(signum: int, write: Any) -> None:
    with _REPORT_LOCK:
        if not _REPORTED:
            _REPORTED.append(True)
            write(f"laffi: interrupted by {signal.Signals(signum).name}: finished work is kept; re-run the same "
                  "command to resume")


def _interrupted() -> None:
    """One line and exit 130 (SIGINT) or 143 (SIGTERM). Every stage keeps what it finished (answers appended as they
    finish, training checkpoints, cached stages and cells) and resumes from it when the same command runs again."""
    signum = _SIGNALLED[0] if _SIGNALLED else signal.SIGINT
    _report(signum, lambda line: typer.echo(line, err=True))
    sys.exit(128 + signum)


def _click_exceptions(e: BaseException) -> set[str]:
    """Names of the click exception classes `e` is an instance of, from ANY copy of click.

    typer >= 0.26 ships its own click (`typer._click`), whose classes are not `click.exceptions.*`: matching by class
    name and module keeps usage errors one line whichever copy raised them (tests/test_cli_usage.py runs each)."""
    return {c.__name__ for c in type(e).__mro__ if c.__module__.endswith("click.exceptions")}


def _click_exit(e: Exception) -> int | None:
    """Print a click/typer exception the laffi way and return the exit code; None when `e` is not one."""
    kinds = _click_exceptions(e)
    if "Exit" in kinds:
        return e.exit_code
    if "Abort" in kinds:
        _err("aborted")
        return 1
    if "NoArgsIsHelpError" in kinds:  # `laffi` or `laffi annotators` alone: typer has printed the help already
        return 2
    if "ClickException" not in kinds:
        return None
    command = getattr(getattr(e, "ctx", None), "command_path", "") or "laffi"
    _err(_one_line(f"{command}: {e.format_message()}"))
    return 2  # every usage error is bad input (click's own FileError would say 1)


MAX_VALUE_CHARS = 200  # a longer unbroken value in a message (an id, a token) is cut to its first 80 characters
MAX_LINE_CHARS = 2000


def _one_line(text: str) -> str:
    """A message as one line of bounded length: a 100,000-character id in a file is named by its start."""
    line = " ".join(text.split("\n")).strip()
    line = re.sub(rf"\S{{{MAX_VALUE_CHARS + 1},}}", lambda m: m[0][:80] + "...", line)
    return line if len(line) <= MAX_LINE_CHARS else f"{line[:1000]} ... {line[-500:]}"

