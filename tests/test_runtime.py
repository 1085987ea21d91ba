"""Process-level malloc settings: applied on Linux/glibc, skipped on request."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

CODE = "from tdmpc_opt_lib.runtime import keep_freed_memory as k; print(k(), k())"


def _run(**env) -> str:
    out = subprocess.run([sys.executable, "-c", CODE], env={**os.environ, **env}, capture_output=True, text=True,
                         check=True)
    return out.stdout.strip()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="mallopt is glibc's")
def test_keep_freed_memory_applies_once_and_can_be_switched_off():
    assert _run(TDMPC_OPT_MALLOC="1") == "True True"        # mallopt accepted every setting; idempotent
    assert _run(TDMPC_OPT_MALLOC="0") == "False False"
