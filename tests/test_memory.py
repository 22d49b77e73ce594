"""Peak memory of one phase, not the process's high-water mark."""

from __future__ import annotations

import math
import os
import subprocess
import sys

import numpy as np
import pytest

from spinebench.benchmark.allocator import has_glibc_malloc
from spinebench.benchmark.memory import PeakMemory


def test_each_phase_reports_its_own_peak():
    with PeakMemory() as big:
        block = np.ones(200 * 2**20 // 8)  # 200 MiB, every page touched
        del block
    with PeakMemory() as small:
        block = np.ones(2**20 // 8)
        del block
    assert math.isfinite(big.mib) and math.isfinite(small.mib)
    assert big.mib > 200  # the whole block was resident during the first phase
    assert big.mib - small.mib > 150  # the second phase does not inherit the first one's peak


# Blocks of 16 MiB freed by one phase and kept by glibc for reuse (benchmark.allocator raises its mmap threshold
# to 32 MiB and stops trimming) would stay resident and count as the next phase's memory.
KEPT_BLOCKS = """
import numpy as np
from spinebench.benchmark.allocator import configure_allocator
from spinebench.benchmark.memory import PeakMemory, _rss_mib
configure_allocator()
blocks = [np.ones(2 * 2**20) for _ in range(16)]  # 16 x 16 MiB, every page touched
del blocks
kept = _rss_mib()
with PeakMemory() as small:
    np.ones(2**20 // 8).sum()
print(kept, small.mib)
"""


@pytest.mark.skipif(not has_glibc_malloc(), reason="glibc's malloc only")
def test_memory_kept_for_reuse_is_not_the_next_phases():
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "GLIBC_TUNABLES"}
    done = subprocess.run([sys.executable, "-c", KEPT_BLOCKS], env=env, capture_output=True, text=True, check=True)
    kept, small = map(float, done.stdout.split())
    assert kept - small > 200, (kept, small)  # the 256 MiB kept after the free are not the small phase's peak
