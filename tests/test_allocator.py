"""laffi/engines/allocator.py: glibc keeps freed memory for reuse, so big temporaries stop being faulted in again."""

import os
import subprocess
import sys

import pytest

WORKLOAD = """
import resource, sys
from laffi.engines.allocator import keep_freed_memory
applied = keep_freed_memory() if sys.argv[1] == "tuned" else None
block = b"\\1" * (40 << 20)  # 40 MiB: above glibc's largest adaptive mmap threshold (32 MiB)
del block
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    block = b"\\1" * (40 << 20)  # written through, so every page is touched
    del block
print(applied, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def run(mode, **env):
    out = subprocess.run([sys.executable, "-c", WORKLOAD, mode], capture_output=True, text=True, check=True,
                         env={**os.environ, **env})  # fmt: skip
    applied, faults = out.stdout.split()
    return applied, int(faults)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_freed_blocks_are_reused_instead_of_faulted_in_again():
    applied, default = run("default")
    assert applied == "None" and default >= 10 * 10_000 * 0.9  # ~10,240 pages of 4 KiB per 40 MiB block
    applied, tuned = run("tuned")
    assert applied == "True" and tuned < 1_000


def test_environment_can_turn_it_off():
    applied, _ = run("tuned", LAFFI_MALLOC_TUNING="0")
    assert applied == "False"
