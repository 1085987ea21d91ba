"""Shared pytest fixtures."""
from __future__ import annotations

from pathlib import Path

import pytest

SHARED_DIR = Path(__file__).resolve().parents[1].parent / "shared"


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """The ``../shared`` folder next to the repository (spec + golden data), or skip."""
    if not SHARED_DIR.is_dir():
        pytest.skip("../shared not found: golden reference data is not available in this clone")
    return SHARED_DIR
