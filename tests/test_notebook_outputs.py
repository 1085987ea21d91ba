"""Deterministic notebook outputs: cells marked ``# CHECK_OUTPUT``, executed at the smoke profile, print what
was recorded in tests/notebook_outputs.json (`python -m tdmpc_opt_lib strip-notebooks --record`)."""
from __future__ import annotations

import json

import nbformat
import pytest

from tdmpc_opt_lib.study.report import CHECKED_OUTPUTS, _checked, checked_outputs, execute_smoke, notebooks

RECORDED = json.loads(CHECKED_OUTPUTS.read_text())
CHECKED = [nb for nb in notebooks() if any(_checked(c) for c in nbformat.read(nb, as_version=4).cells)]


def test_every_checked_notebook_has_a_record():
    assert {nb.stem for nb in CHECKED} == set(RECORDED) and sum(map(len, RECORDED.values())) >= 3


@pytest.mark.parametrize("nb", CHECKED, ids=lambda p: p.stem)
def test_checked_outputs_match_the_record(nb, tmp_path, monkeypatch):
    monkeypatch.setenv("TDMPC_OPT_PROFILE", "smoke")
    got = checked_outputs(execute_smoke(nb, tmp_path / nb.name))
    assert got == RECORDED[nb.stem]
