"""Shared fixtures. Tests that read the real files beside the project skip with a reason when absent."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_REAL = REPO_ROOT.parent / "shared" / "data" / "real"


@pytest.fixture(scope="session")
def shared_real() -> Path:
    """``../shared/data/real``: small real CTs, masks and centroid tables (present in CI, not in a user's clone)."""
    if not SHARED_REAL.is_dir():
        pytest.skip(f"real test data not found at {SHARED_REAL} (only present beside the project checkout, e.g. in CI)")
    return SHARED_REAL
