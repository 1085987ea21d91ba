"""The value rules every entry point applies: library configs (``TrainConfig``, ``evaluate``), the command
line (through them) and the notebook parameters (:mod:`tdmpc_opt_lib.study.params`).

A rule is ``(check, what it must be)``; :data:`RULES` names the rule of each setting, so that a value refused
in one place is refused in all, with the message of :func:`problem`.
"""
from __future__ import annotations

import numbers
from typing import Any, Callable

from .config import MODEL_SIZES
from .device import is_device_spec

Rule = tuple[Callable[[Any], bool], str]
DISTILL_KINDS = ("reward", "latent-linear", "latent-pca")


def integer(v: Any) -> bool:
    """A Python or numpy integer, not a bool."""
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def positive_int(v: Any) -> bool:
    return integer(v) and v >= 1


def non_negative_int(v: Any) -> bool:
    return integer(v) and v >= 0


def number(v: Any) -> bool:
    """A finite real number, not a bool (no NaN or infinity)."""
    return isinstance(v, numbers.Real) and not isinstance(v, bool) and v == v and abs(v) != float("inf")


def boolean(v: Any) -> bool:
    return isinstance(v, bool)


def list_of(v: Any, check: Callable[[Any], bool]) -> bool:
    return isinstance(v, (list, tuple)) and all(check(x) for x in v)


def optional(rule: Rule) -> Rule:
    """``rule``, or None."""
    return (lambda v: v is None or rule[0](v)), f"None or {rule[1]}"


POSITIVE: Rule = (positive_int, "an integer >= 1")
NON_NEGATIVE: Rule = (non_negative_int, "an integer >= 0")
BOOL: Rule = (boolean, "True or False")
POSITIVE_NUMBER: Rule = (lambda v: number(v) and v > 0, "a number > 0")
NON_NEGATIVE_NUMBER: Rule = (lambda v: number(v) and v >= 0, "a number >= 0")
FRACTION: Rule = (lambda v: number(v) and 0 <= v <= 1, "a number in [0, 1]")

# setting name -> rule; a name means the same wherever it appears
RULES: dict[str, Rule] = {
    "steps": POSITIVE,
    "episodes": POSITIVE,
    "eval_episodes": POSITIVE,
    "batch_size": POSITIVE,
    "batch_envs": POSITIVE,
    "workers": NON_NEGATIVE,
    "device": (is_device_spec, "'auto' (CUDA when available, else the CPU), 'cpu', 'cuda' or 'cuda:N'"),
    "horizon": POSITIVE,
    "seed": NON_NEGATIVE,
    "log_every": POSITIVE,
    "checkpoint_every": POSITIVE,
    "eval_every": NON_NEGATIVE,
    "pca_samples": POSITIVE,
    "episode_length": (lambda v: v is None or (positive_int(v) and v <= 500), "None or an integer in 1..500"),
    "eval_episode_length": (lambda v: v is None or (positive_int(v) and v <= 500), "None or an integer in 1..500"),
    "model_size": (lambda v: v in MODEL_SIZES, f"one of {sorted(MODEL_SIZES)}"),
    "d_coef": NON_NEGATIVE_NUMBER,
    "distill": (lambda v: v in DISTILL_KINDS, f"one of {DISTILL_KINDS}"),
    "lr": POSITIVE_NUMBER,
    "enc_lr_scale": NON_NEGATIVE_NUMBER,
    "grad_clip": POSITIVE_NUMBER,
    "consistency_coef": NON_NEGATIVE_NUMBER,
    "reward_coef": NON_NEGATIVE_NUMBER,
    "value_coef": NON_NEGATIVE_NUMBER,
    "entropy_coef": NON_NEGATIVE_NUMBER,
    "rho": (lambda v: number(v) and 0 < v <= 1, "a number in (0, 1]"),
    "tau": FRACTION,
    "threads": optional(POSITIVE),
    "mpc": BOOL,
    "eval_mpc": BOOL,
}


def problem(name: str, value: Any, rule: Rule) -> str:
    """The message for ``value`` breaking ``rule`` of setting ``name``."""
    return f"{name!r} must be {rule[1]}, got {value!r}"


def check(name: str, value: Any, rule: Rule | None = None) -> None:
    """Raise ValueError when ``value`` breaks ``rule`` (default: ``RULES[name]``)."""
    rule = rule or RULES[name]
    if not rule[0](value):
        raise ValueError(problem(name, value, rule))


def check_values(values: dict[str, Any], rules: dict[str, Rule] | None = None) -> None:
    """:func:`check` each value that has a rule (``rules``, then :data:`RULES`); others are not checked."""
    rules = {**RULES, **(rules or {})}
    for name, value in values.items():
        if name in rules:
            check(name, value, rules[name])
