"""Process-wide malloc settings for answering: `laffi answer` and bench/generation.py apply them at start.

PyTorch's CPU tensors are malloc'd. By default glibc hands out big blocks (above an adaptive 128 KiB-32 MiB threshold)
as fresh memory maps, and returns freed memory at the top of its heaps to the system, so the next tensor of that size
is faulted in again, page by page. Answering makes many MB-sized temporaries (the attention scores of a batch of
questions): answering 200 pool questions took 40,000-270,000 minor page faults per run. With the settings below, ~0,
answering was ~6 % faster (7.0-7.4 s against 7.5-7.9 s, two processes each, alternated) and the peak RSS the same
(1.9-2.0 GB). A few lines of ctypes rather than jemalloc/tcmalloc through LD_PRELOAD, which would need a system
package and a wrapper around every command.

Not for training (so not for `laffi run` or `laffi train`): with these settings, `bench/training.py --examples 200
--steps 6 --batch 4 --micro 4 --max-length 512` ran laffi's loop in 34.8 s at 1.99 GiB peak RSS against 32.3 s at
1.83 GiB without, and TRL's trainer at 5.34 GiB against 3.65 GiB: training frees and allocates tensors of many sizes,
and memory kept for reuse there is mostly memory kept.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

# mallopt parameters (glibc's malloc.h)
M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3
SETTINGS = (
    (M_MMAP_THRESHOLD, 256 << 20),  # blocks below 256 MiB come from the heap (reused), not from fresh maps
    (M_TRIM_THRESHOLD, 1 << 30),  # keep up to 1 GiB of freed memory at the top of a heap
    (M_TOP_PAD, 64 << 20),  # grow a heap 64 MiB at a time
)
ENV = "LAFFI_MALLOC_TUNING"  # "0" leaves malloc as it is


def keep_freed_memory() -> bool:
    """Apply `SETTINGS` with glibc's mallopt; True when all were applied. False (nothing changed) off Linux, on a C
    library without mallopt (or whose mallopt refuses them, e.g. musl's), or when the environment sets
    LAFFI_MALLOC_TUNING=0."""
    if os.environ.get(ENV, "1") == "0" or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return all(mallopt(param, value) == 1 for param, value in SETTINGS)
