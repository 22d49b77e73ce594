"""The allocator settings of spinebench's processes (benchmark/allocator.py)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from spinebench.benchmark.allocator import (
    MMAP_THRESHOLD_BYTES,
    TRIM_THRESHOLD_BYTES,
    configure_allocator,
    has_glibc_malloc,
)

GLIBC = has_glibc_malloc()


def test_defaults_reach_the_environment_and_the_users_own_values_win():
    env = {"THP_MEM_ALLOC_ENABLE": "0", "MALLOC_TRIM_THRESHOLD_": "5"}
    configure_allocator(env)
    assert env["THP_MEM_ALLOC_ENABLE"] == "0" and env["MALLOC_TRIM_THRESHOLD_"] == "5"
    if GLIBC:
        assert env["MALLOC_MMAP_THRESHOLD_"] == str(MMAP_THRESHOLD_BYTES)
    fresh: dict[str, str] = {}
    configure_allocator(fresh)
    assert fresh["THP_MEM_ALLOC_ENABLE"] == "1"
    if GLIBC:
        assert fresh["MALLOC_TRIM_THRESHOLD_"] == str(TRIM_THRESHOLD_BYTES)


def test_glibc_tunables_leave_malloc_alone():
    env = {"GLIBC_TUNABLES": "glibc.malloc.mmap_threshold=65536"}
    assert configure_allocator(env) == {}
    assert not any(k.startswith("MALLOC_") for k in env) and env["THP_MEM_ALLOC_ENABLE"] == "1"


# Counts the blocks glibc serves by mmap for one 20 MiB block, after an 8 MiB block was freed (which
# raises glibc's dynamic threshold to 8 MiB only): 1 with glibc's defaults, 0 once the threshold is 32 MiB.
MMAPPED_BLOCKS = """
import ctypes, sys
from spinebench.benchmark.allocator import configure_allocator
libc = ctypes.CDLL("libc.so.6")
info = getattr(libc, "mallinfo2", None) or libc.mallinfo  # mallinfo2 (size_t fields) from glibc 2.33 on
class Info(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t if info is getattr(libc, "mallinfo2", None) else ctypes.c_int)
                for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
                          "fordblks", "keepcost")]
libc.malloc.restype, libc.malloc.argtypes, libc.free.argtypes = ctypes.c_void_p, [ctypes.c_size_t], [ctypes.c_void_p]
info.restype = Info
libc.free(libc.malloc(8 << 20))
applied = configure_allocator() if sys.argv[1] == "tuned" else {}
before = info().hblks
block = libc.malloc(20 << 20)
print(info().hblks - before, sorted(applied))
"""


@pytest.mark.skipif(not GLIBC, reason="glibc's malloc only: other C libraries are left as they are")
def test_freed_blocks_below_32_mib_are_kept_for_reuse():
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "GLIBC_TUNABLES"}

    def mmapped(mode: str) -> str:
        return subprocess.run([sys.executable, "-c", MMAPPED_BLOCKS, mode], env=env, capture_output=True, text=True,
                              check=True).stdout.strip()  # fmt: skip

    assert mmapped("default") == "1 []"
    assert mmapped("tuned") == "0 ['MALLOC_MMAP_THRESHOLD_', 'MALLOC_TRIM_THRESHOLD_']"
