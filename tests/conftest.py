"""Shared pytest fixtures."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

SHARED_DIR = Path(__file__).resolve().parents[1].parent / "shared"


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """The ``../shared`` folder next to the repository (spec + golden data), or skip."""
    if not SHARED_DIR.is_dir():
        pytest.skip("../shared not found: golden reference data is not available in this clone")
    return SHARED_DIR


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models: one thread is fastest and does not fight other processes for cores."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
