"""Device handling on the CPU: the device setting, tensors created on the model's device, environment workers,
batches prepared for the device, RNG states of a resume, cached digests, the teacher's lowered precision."""
from __future__ import annotations

import ast
import inspect
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from tdmpc_opt_lib import checkpoints, data, evaluation, losses, planner, runstate, training
from tdmpc_opt_lib.config import model_config
from tdmpc_opt_lib.data.device_batches import DeviceBatches
from tdmpc_opt_lib.device import resolve_device
from tdmpc_opt_lib.fast import fused, precision
from tdmpc_opt_lib.planner import PlannerConfig
from tdmpc_opt_lib.world_model import WorldModel

TASKS = ["cartpole-balance", "reacher-easy"]
TINY = dict(enc_dim=16, mlp_dim=16, latent_dim=16, task_dim=8, num_q=2)
FACTORIES = {"randn", "rand", "randint", "randperm", "zeros", "ones", "empty", "full", "tensor", "arange",
             "linspace", "eye"}


def test_resolve_device():
    assert resolve_device("auto") == torch.device("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(ValueError, match="device must be"):
        resolve_device("gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            resolve_device("cuda")


def factories_without_device(source: str, allowed: set[str] = frozenset()) -> list[str]:
    """Calls ``torch.<factory>(...)`` in ``source`` without a ``device=`` keyword (those in ``allowed``, written
    as source text, excepted)."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in FACTORIES \
                and isinstance(node.func.value, ast.Name) and node.func.value.id == "torch":
            if not any(k.arg == "device" for k in node.keywords) and ast.unparse(node) not in allowed:
                found.append(f"line {node.lineno}: {ast.unparse(node)}")
    return found


def test_the_device_check_finds_a_tensor_created_without_device():
    assert factories_without_device("x = torch.randn(3, generator=g)") == ["line 1: torch.randn(3, generator=g)"]
    assert factories_without_device("x = torch.randn(3, generator=g, device=d)") == []


@pytest.mark.parametrize("module, allowed", [
    (planner, set()), (evaluation, set()), (losses, set()),
    # the norm of no gradients at all (no tensor to take a device from); a module's buffers (moved by .to(device))
    (training, {"torch.zeros(())", "torch.zeros(teacher_dim)", "torch.zeros(student_dim, teacher_dim)"}),
    (fused, set())])
def test_every_tensor_of_planning_evaluation_and_updates_is_created_on_a_device(module, allowed):
    assert factories_without_device(inspect.getsource(module), allowed) == []


def test_planner_generator_and_outputs_follow_the_model():
    m = WorldModel(model_config(None, TASKS, **TINY)).eval()
    p = planner.Planner(m, PlannerConfig(num_samples=16, num_elites=4, num_pi_trajs=2, iterations=1), seed=0)
    assert p.generator.device == m.discount.device
    act = p.plan(torch.zeros(3, m.cfg.obs_dim), torch.tensor([0, 1, 1]), t0=True)
    assert act.device == m.discount.device and act.shape == (3, m.cfg.action_dim)
    a, mean = planner.plan_reference(m, torch.zeros(m.cfg.obs_dim), 1, None, PlannerConfig(num_samples=16, num_elites=4,
                                     num_pi_trajs=2, iterations=1), generator=torch.Generator().manual_seed(0))
    assert a.device == mean.device == m.discount.device


def test_dropout_on_other_devices_draws_per_element_without_host_syncs():
    s = fused.dropout_scale((64, 32), 0.25, device="meta")
    assert s.device.type == "meta" and s.shape == (64, 32)


def test_q_scale_matches_torch_quantile():
    q = torch.randn(4, 32, 1)
    want = torch.lerp(torch.ones(()), torch.clamp(torch.quantile(q[0].reshape(-1), torch.tensor([0.05, 0.95])).diff()[0],
                                                  min=1.0), 0.01)
    assert torch.equal(losses.q_scale(torch.ones(()), q[0], 0.01), want)


# ------------------------------------------------------------------------------------ evaluation workers
@pytest.mark.parametrize("mpc", [True, False])
def test_worker_processes_give_the_same_returns(mpc):
    torch.manual_seed(0)
    m = WorldModel(model_config(1, TASKS)).eval()
    kw = dict(episodes=2, seed=3, mpc=mpc, episode_length=12, compile=False, progress=False, batch_envs=3,
              planner_cfg=PlannerConfig(num_samples=32, num_elites=4, num_pi_trajs=2, iterations=2))
    one, two = evaluation.evaluate(m, **kw), evaluation.evaluate(m, workers=2, **kw)
    pd.testing.assert_frame_equal(one, two)
    assert len(one) == 4 and one["return"].abs().sum() > 0
    with pytest.raises(ValueError, match="'workers' must be an integer >= 0, got -1"):
        evaluation.evaluate(m, workers=-1, **kw)


# ------------------------------------------------------------------------------------ batches on the device
@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return data.Dataset.open(data.make_synthetic(tmp_path_factory.mktemp("d") / "ds", transitions=800, tasks=TASKS,
                                                 episode_length=20))


@pytest.mark.parametrize("mode", ["direct", "resident", "prefetch"])
def test_prepared_batches_equal_the_samplers_and_resume_exactly(dataset, mode):
    ref = data.WindowSampler(dataset, 3, 8, seed=5)
    want = [ref.sample() for _ in range(6)]
    b = DeviceBatches(data.WindowSampler(dataset, 3, 8, seed=5), "cpu", mode)
    got = [b.next() for _ in range(3)]
    state = b.state_dict()                      # after 3 batches, whatever the thread has drawn ahead
    got += [b.next() for _ in range(3)]
    b.close()
    for g, w in zip(got, want):
        assert g.keys() == w.keys() and all(torch.equal(g[k], w[k]) and g[k].dtype == w[k].dtype for k in w)
    again = DeviceBatches(data.WindowSampler(dataset, 3, 8, seed=99), "cpu", mode)
    again.load_state_dict(state)
    resumed = again.next()
    assert all(torch.equal(resumed[k], want[3][k]) for k in want[3])
    again.close()


def test_batch_mode_is_checked(dataset):
    with pytest.raises(ValueError, match="batch mode"):
        DeviceBatches(data.WindowSampler(dataset), "cpu", "pinned")
    assert DeviceBatches(data.WindowSampler(dataset), "cpu").mode == "direct"


def test_cuda_only_training_options_are_refused_on_the_cpu(tmp_path, dataset):
    for kw in ({"cuda_graph": True}, {"teacher_precision": "bf16"}):
        with pytest.raises(ValueError, match="CUDA runs only"):
            training.train(training.TrainConfig(data=str(dataset.path), out=str(tmp_path / "r"), steps=1, device="cpu",
                                                **kw), progress=False)
    with pytest.raises(ValueError, match="teacher_precision must be"):
        training.train(training.TrainConfig(data=str(dataset.path), out=str(tmp_path / "r"), steps=1,
                                            teacher_precision="fp8"), progress=False)


# ------------------------------------------------------------------------------------ resume, digests, precision
def test_rng_states_are_restored_from_the_cpu_and_cuda_states_need_cuda():
    torch.manual_seed(3)
    states = runstate.rng_states()
    want = torch.rand(4)
    torch.rand(10)
    runstate.restore_rng(states)
    assert torch.equal(torch.rand(4), want)
    if not torch.cuda.is_available():
        assert "cuda_rng" not in states
        with pytest.raises(ValueError, match="CUDA random states"):
            runstate.restore_rng({**states, "cuda_rng": [torch.zeros(16, dtype=torch.uint8)]})


def test_resume_state_is_read_onto_the_cpu(tmp_path, monkeypatch):
    seen = {}
    real = torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **k: seen.update(k) or real(*a, **k))
    rs = runstate.RunState(tmp_path / "s.pt", "fmt/1", {"a": 1})
    checkpoints.atomic_save({"format": "fmt/1", "run": {"a": 1}}, rs.path)
    assert rs.load()["run"] == {"a": 1} and seen["map_location"] == "cpu"


def test_content_digest_is_read_once_per_file_version(tmp_path, monkeypatch):
    f = tmp_path / "teacher.pt"
    f.write_bytes(b"a" * 100)
    reads = []
    real = checkpoints._hash_file
    monkeypatch.setattr(checkpoints, "_hash_file", lambda p, algorithm: reads.append(p) or real(p, algorithm))
    first = checkpoints.content_digest(f)
    assert checkpoints.content_digest(f) == first and len(reads) == 1
    f.write_bytes(b"b" * 101)                    # another size (and time): read again
    assert checkpoints.content_digest(f) != first and len(reads) == 2


def test_teacher_precision_is_measured_and_refused_beyond_tolerance():
    torch.manual_seed(0)
    t = WorldModel(model_config(None, TASKS, **TINY)).eval()
    for p in t._reward[-1].parameters():
        torch.nn.init.normal_(p, std=0.3)
    batch = {"obs": torch.randn(2, 32, t.cfg.obs_dim), "action": torch.rand(1, 32, t.cfg.action_dim) * 2 - 1,
             "task": torch.randint(0, 2, (32,))}
    err = precision.teacher_precision_error(t, batch["obs"][0], batch["action"][0], batch["task"], "bf16")
    assert 0 < err["reward"] < 1 and 0 < err["latent"] < 1            # bfloat16 moves the outputs a little
    assert precision.precision_within_tolerance(t, batch, "fp32") == (True, {"reward": 0.0, "latent": 0.0})
    ok, _ = precision.precision_within_tolerance(t, batch, "bf16", tolerance=0.0)
    assert not ok
    with pytest.raises(ValueError, match="precision must be"):
        with precision.lowered_precision("fp8", "cpu"):
            pass


# ------------------------------------------------------------------------------------ profiles
def test_every_notebook_has_a_device_parameter_defaulting_to_auto():
    from tdmpc_opt_lib.study.params import NOTEBOOK_PROFILES, resolve
    for notebook, profiles in NOTEBOOK_PROFILES.items():
        assert all(p.device == "auto" for p in profiles.values()), notebook
    with pytest.raises(ValueError, match="'device' must be"):
        resolve("03_distill", "smoke", device="gpu0")
    assert resolve("02_data", "smoke", device="cuda:1").device == "cuda:1"      # named, checked when used


def test_paper_profile_points_at_the_paper_inputs():
    from tdmpc_opt_lib.study import params
    paper = {nb: p["paper"] for nb, p in params.NOTEBOOK_PROFILES.items()}
    assert paper["01_teacher"].teacher == paper["03_distill"].teacher == str(params.PAPER_TEACHER)
    assert paper["02_data"].dataset == paper["03_distill"].dataset == paper["04_ablations"].dataset == str(params.PAPER_DATA)


def test_report_check_lists_every_missing_input_with_its_command(tmp_path, monkeypatch, capsys):
    from tdmpc_opt_lib.cli import main
    from tdmpc_opt_lib.study import inputs, params
    assert main(["report", "--profile", "paper", "--check"]) == 2
    out = capsys.readouterr().out
    assert "data/checkpoints/mt30-317M.pt" in out and "mt30-317M.pt" in out.split("data/mt30 (")[0]
    assert "convert-data chunk_0.pt" in out and "data/checkpoints/mt30-48M.pt" in out
    missing = inputs.missing_inputs("paper")
    assert {"01_teacher", "02_data", "03_distill", "04_ablations"} <= set(missing.notebook)
    # every input present: nothing listed
    teacher, teacher48, ds = tmp_path / "317.pt", tmp_path / "48.pt", tmp_path / "mt30"
    for f in (teacher, teacher48):
        f.write_bytes(b"x")
    (ds).mkdir()
    (ds / "index.json").write_text("{}")
    profiles = {nb: dict(p) for nb, p in params.NOTEBOOK_PROFILES.items()}
    from dataclasses import replace
    for nb, p in profiles.items():
        P = p["paper"]
        changes = {k: v for k, v in (("teacher", str(teacher)), ("dataset", str(ds)), ("teachers", (str(teacher48),)))
                   if hasattr(P, k)}
        p["paper"] = replace(P, **changes)
    monkeypatch.setattr(inputs, "NOTEBOOK_PROFILES", profiles)
    assert inputs.missing_inputs("paper").empty
    assert "every input is present" in inputs.check_report("paper")
