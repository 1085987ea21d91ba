"""Notebook parameters: profile defaults and validation errors that name the parameter."""
from __future__ import annotations

import pytest

from tdmpc_opt_lib.params import resolve


def test_profile_defaults_and_overrides(monkeypatch):
    monkeypatch.delenv("TDMPC_OPT_PROFILE", raising=False)
    p = resolve("01_teacher")
    assert p["profile"] == "default" and p["episodes"] == 2 and p["episode_length"] is None
    assert resolve("01_teacher", profile="smoke")["episode_length"] == 20
    monkeypatch.setenv("TDMPC_OPT_PROFILE", "paper")
    assert resolve("01_teacher")["episodes"] == 10
    assert resolve("01_teacher", episodes=3)["episodes"] == 3


@pytest.mark.parametrize("name, value, message", [
    ("episodes", 0, "'episodes' must be an integer >= 1"),
    ("episode_length", 501, "'episode_length' must be None or an integer in 1..500"),
    ("tasks", "cartpole-balance,walker-wlak", "'tasks' must be"),
    ("mpc", "yes", "'mpc' must be True or False"),
    ("teacher", "/nonexistent.pt", "'teacher' must be None or an existing checkpoint file"),
])
def test_invalid_values_are_named(name, value, message):
    with pytest.raises(ValueError, match=message):
        resolve("01_teacher", profile="smoke", **{name: value})


def test_unknown_parameter_profile_and_notebook():
    with pytest.raises(ValueError, match=r"unknown parameter\(s\) \['dcoef'\]"):
        resolve("01_teacher", dcoef=0.4)
    with pytest.raises(ValueError, match="unknown profile 'fast'"):
        resolve("01_teacher", profile="fast")
    with pytest.raises(ValueError, match="no parameters defined"):
        resolve("99_nothing")
