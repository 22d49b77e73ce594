"""Peak memory of one phase, not the process's high-water mark."""

from __future__ import annotations

import math

import numpy as np

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
