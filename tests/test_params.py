"""Notebook parameters: profile defaults and validation errors that name the parameter."""
from __future__ import annotations

import pytest

from tdmpc_opt_lib.study.params import resolve


def test_profile_defaults_and_overrides(monkeypatch):
    monkeypatch.delenv("TDMPC_OPT_PROFILE", raising=False)
    p = resolve("01_teacher")
    assert p.profile == "default" and p.episodes == 2 and p.episode_length is None
    assert resolve("01_teacher", profile="smoke").episode_length == 20
    monkeypatch.setenv("TDMPC_OPT_PROFILE", "paper")
    with pytest.raises(ValueError, match="'teacher' must be .*data/checkpoints/mt30-317M.pt"):   # the paper's teacher
        resolve("01_teacher")
    assert resolve("01_teacher", teacher=__file__).episodes == 10
    assert resolve("01_teacher", teacher=__file__, episodes=3).episodes == 3


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


@pytest.mark.parametrize("notebook, name, value, message", [
    ("03_distill", "distill", "latent", "'distill' must be one of"),
    ("03_distill", "dataset", "/nonexistent", "'dataset' must be a dataset folder"),
    ("03_distill", "threads", 0, "'threads' must be None"),
    ("04_ablations", "d_coefs", [0.4, -1], "'d_coefs' must be a list of numbers >= 0"),
    ("04_ablations", "variants", ["latent-svd"], "'variants' must be a list of"),
    ("04_ablations", "teachers", ["/nonexistent.pt"], "'teachers' must be a list of existing checkpoint files"),
    ("04_ablations", "seeds", [1, 1], "'seeds' must be a non-empty list of distinct integers >= 0"),
    ("04_ablations", "seeds", [], "'seeds' must be a non-empty list"),
    ("05_quantization", "schemes", ["int4"], "'schemes' must be 'all' or a list of"),
    ("06_task_analysis", "frame_steps", [600], "'frame_steps' must be a non-empty list"),
])
def test_invalid_notebook_parameters_are_named(notebook, name, value, message):
    with pytest.raises(ValueError, match=message):
        resolve(notebook, profile="smoke", **{name: value})


def test_distillation_without_a_teacher_is_refused(tmp_path, monkeypatch):
    from dataclasses import replace

    import tdmpc_opt_lib.study.params as params
    from tdmpc_opt_lib import data
    ds = data.make_synthetic(tmp_path / "ds", transitions=100, tasks=["cartpole-balance"], episode_length=20)
    profiles = params.NOTEBOOK_PROFILES["03_distill"]
    monkeypatch.setitem(profiles, "smoke", replace(profiles["smoke"], teacher=params.Found(tmp_path / "missing.pt")))
    with pytest.raises(ValueError, match="d_coef 0.4 > 0 needs a teacher"):
        resolve("03_distill", profile="smoke", dataset=str(ds))
    assert resolve("03_distill", profile="smoke", dataset=str(ds), d_coef=0.0).teacher is None


def test_paper_profile_names_the_files_it_needs():
    with pytest.raises(ValueError, match="'teacher' must be .* got '.*data/checkpoints/mt30-317M.pt'"):
        resolve("03_distill", profile="paper")
    with pytest.raises(ValueError, match="'dataset' must be a dataset folder .* convert-data"):
        resolve("03_distill", profile="paper", teacher=__file__)


def test_paths_are_shown_relative_to_the_repository():
    from tdmpc_opt_lib.study import params
    assert params.rel(params.REPO / "reports" / "results" / "x.csv") == "reports/results/x.csv"
    assert params.rel(params.RELEASED_FP16) == "../shared/checkpoints/mt30_1M_steps_045dist_fp16.pt"
    assert params.rel("/somewhere/else.pt") == "/somewhere/else.pt"
    shown = params.table({"teacher": str(params.MT_MINI_TEACHER), "tasks": "cup-catch", "steps": 10, "x": None})
    assert shown["value"].tolist() == ["data/mt-mini/teacher.pt", "cup-catch", 10, None]


def test_every_notebook_and_profile_has_its_dataclass():
    from tdmpc_opt_lib.study import params
    for notebook, profiles in params.NOTEBOOK_PROFILES.items():
        assert set(profiles) == set(params.PROFILES)
        kinds = {type(p) for p in profiles.values()}
        assert len(kinds) == 1 and kinds.pop().notebook == notebook
        assert profiles["default"] == type(profiles["default"])()        # the default profile: the class defaults


def test_every_parameter_has_a_docstring_and_a_check():
    import ast
    import inspect

    from tdmpc_opt_lib.study import params
    classes = {type(p) for profiles in params.NOTEBOOK_PROFILES.values() for p in profiles.values()}
    for cls in (params.Params, *classes):
        body = ast.parse(inspect.getsource(cls)).body[0].body
        for i, node in enumerate(body):
            if isinstance(node, ast.AnnAssign) and "ClassVar" not in ast.unparse(node.annotation):
                doc = body[i + 1] if i + 1 < len(body) else None
                assert isinstance(doc, ast.Expr) and isinstance(doc.value, ast.Constant), \
                    f"{cls.__name__}.{node.target.id} has no docstring"
                assert node.target.id in params.CHECKS


def test_resolving_writes_nothing(monkeypatch):
    import os
    from pathlib import Path

    from tdmpc_opt_lib.study import mtmini, params

    def refuse(*a, **k):
        raise AssertionError("resolve wrote something")

    monkeypatch.setattr(Path, "mkdir", refuse)
    monkeypatch.setattr(Path, "write_text", refuse)
    monkeypatch.setattr(os, "makedirs", refuse)
    monkeypatch.setattr(mtmini, "merged_dataset", refuse)
    env = dict(os.environ)
    for notebook in params.NOTEBOOK_PROFILES:
        for profile in params.PROFILES:
            try:
                P = resolve(notebook, profile)
            except ValueError:            # the paper profile's files are not part of the repository
                assert profile == "paper"
                continue
            assert P.profile == profile and resolve(notebook, profile) == P     # same answer every time
    assert dict(os.environ) == env


def test_found_profile_values_are_looked_up_when_resolving(tmp_path, monkeypatch):
    from dataclasses import replace

    from tdmpc_opt_lib.study import params
    first, second = tmp_path / "a.pt", tmp_path / "b.pt"
    found = params.Found(first, second)
    assert found.first() is None
    second.write_bytes(b"x")
    assert found.first() == str(second)
    first.write_bytes(b"x")
    assert found.first() == str(first)
    profiles = params.NOTEBOOK_PROFILES["01_teacher"]
    monkeypatch.setitem(profiles, "smoke", replace(profiles["smoke"], teacher=found))
    assert resolve("01_teacher", profile="smoke").teacher == str(first)
    assert resolve("01_teacher", profile="smoke", teacher=str(second)).teacher == str(second)
    with pytest.raises(ValueError, match="'teacher' must be None or an existing checkpoint file, got Found"):
        profiles["smoke"].validate()                                            # a profile itself is unresolved


def test_ablation_base_point_follows_the_distill_profile():
    from tdmpc_opt_lib.study import params
    for profile in ("smoke", "default"):
        a, d = resolve("04_ablations", profile), resolve("03_distill", profile)
        assert (a.steps, a.batch_size) == (d.steps, d.batch_size)


def test_the_mt_mini_dataset_is_merged_only_when_prepared(monkeypatch):
    from tdmpc_opt_lib.study import mtmini, params
    calls = []
    monkeypatch.setattr(mtmini, "merged_dataset", lambda *a: calls.append(a))
    P = resolve("03_distill", profile="smoke")
    assert P.dataset == params.MT_MINI_DATASET and calls == []
    assert params.prepare_dataset(P.dataset) == P.dataset and len(calls) == 1
    assert params.prepare_dataset(__file__) == __file__ and len(calls) == 1    # any other dataset is left alone
