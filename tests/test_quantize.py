"""Quantization: the paper's recipes against the released files, and our post-training schemes."""
from __future__ import annotations

import copy

import numpy as np
import pandas as pd
import pytest
import torch

from tdmpc_opt_lib import fast
from tdmpc_opt_lib import quantize as Q
from tdmpc_opt_lib.checkpoints import CheckpointError, dequantize, load_checkpoint, read_file, save_checkpoint, to_public
from tdmpc_opt_lib.cli import main
from tdmpc_opt_lib.config import model_config
from tdmpc_opt_lib.planner import Planner, PlannerConfig
from tdmpc_opt_lib.world_model import WorldModel

RELEASE = "checkpoints/mt30_1M_steps_045dist_{}.pt"
TASKS = ["cartpole-balance", "reacher-easy", "cup-catch"]
# Max relative RMS error of reward / Q / next_z / pi_mean (mean over the four) after a save → load round trip
# of the small random model below: fp32 is exact, fp16 keeps ~11 bits, bf16 ~8 bits, int8 ~7 bits per weight.
ROUND_TRIP_TOL = {"fp32": 1e-7, "fp16": 2e-3, "bf16": 2e-2, "int8": 2e-2, "int8-dynamic": 4e-2, "mixed": 2e-2,
                  "paper-fp16": 2e-3}


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def small_model() -> WorldModel:
    """A small custom-size model with non-trivial weights in every layer (no zero last layers)."""
    torch.manual_seed(0)
    m = WorldModel(model_config(None, TASKS, enc_dim=64, mlp_dim=96, latent_dim=32, task_dim=16))
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return m.eval()


@pytest.fixture(scope="module")
def released(shared_dir) -> WorldModel:
    path = shared_dir / RELEASE.format("fp16")
    if not path.is_file():
        pytest.skip(f"{path} not found")
    return load_checkpoint(path)


def _rel(ref: WorldModel, model: WorldModel) -> float:
    inputs = Q.calibration_inputs(ref)
    return Q.relative_rms(Q.predictions(copy.deepcopy(ref), *inputs), Q.predictions(model, *inputs))


# ------------------------------------------------------------------------------ per-channel int8
def test_per_channel_error_bound():
    g = torch.Generator().manual_seed(0)
    for shape in ((16, 40), (3, 7, 33)):  # Linear [out, in] and stacked ensemble [heads, out, in]
        w = torch.randn(shape, generator=g) * torch.rand(shape[:-1] + (1,), generator=g) * 3
        w[..., 0, :] = 0  # an all-zero channel
        q, scale = Q.quantize_per_channel(w)
        assert q.dtype == torch.int8 and scale.shape == shape[:-1] and q.abs().max() <= 127
        err = (Q.dequantize_per_channel(q, scale) - w).abs()
        assert (err <= scale.unsqueeze(-1) / 2 * (1 + 1e-5)).all()
        assert (q[..., 0, :] == 0).all()
        assert torch.equal(q.abs().amax(-1)[..., 1:], torch.full_like(q[..., 1:, 0], 127))


def test_int8_state_layout(small_model):
    sd = Q.quantize_state(small_model, "int8")  # no Hessians: every int8 layer rounded to nearest
    float_sd = small_model.state_dict()
    layers = Q.matmul_layers(small_model)
    assert len(layers) == 14 and Q.observation_layers(small_model) == ["_encoder.state.0"]
    assert sd["_encoder.state.0.weight"].dtype == torch.float16 and "_encoder.state.0.weight_scale" not in sd
    for name in layers[1:] + [n.replace("_Qs.", "_target_Qs.") for n in layers if n.startswith("_Qs.")]:
        q, scale = sd[f"{name}.weight"], sd[f"{name}.weight_scale"]
        assert q.dtype == torch.int8 and scale.shape == q.shape[:-1] and scale.dtype == torch.float32
        err = (Q.dequantize_per_channel(q, scale) - float_sd[f"{name}.weight"]).abs()
        assert (err <= scale.unsqueeze(-1) / 2 * (1 + 1e-5)).all(), name
    others = [k for k in sd if k.endswith((".bias", "ln.weight", "ln.bias")) or k == "_task_emb.weight"]
    assert others and all(torch.equal(sd[k], float_sd[k].half()) for k in others)
    assert not any(k.startswith("_target_Qs.") for k in Q.quantize_state(small_model, "int8", deployable=True))


def _output_error(w: torch.Tensor, back: torch.Tensor, H: torch.Tensor) -> float:
    """‖X (ŵ − w)ᵀ‖² from H = XᵀX."""
    d = (back - w).double()
    return torch.einsum("oi,ij,oj->", d, H, d).item()


def test_gptq_beats_rounding_on_its_inputs():
    g = torch.Generator().manual_seed(0)
    n, d_in, d_out = 2000, 48, 32
    # correlated inputs of very different scales, one input always 0, and a never-used weight column
    x = torch.randn(n, d_in, generator=g) @ torch.randn(d_in, d_in, generator=g) * torch.logspace(-1, 1, d_in)
    x[:, 5] = 0
    w = torch.randn(d_out, d_in, generator=g) * 0.2
    H = x.double().T @ x.double()
    q, scale = Q.gptq_per_channel(w, H)
    q_rtn, scale_rtn = Q.quantize_per_channel(w)
    assert q.dtype == torch.int8 and q.abs().max() <= 127 and torch.equal(scale, scale_rtn)
    gptq, rtn = (_output_error(w, Q.dequantize_per_channel(a, scale), H) for a in (q, q_rtn))
    print(f"\nlayer output error: GPTQ {gptq:.4g} vs round-to-nearest {rtn:.4g}")
    assert gptq < 0.5 * rtn
    assert (q != q_rtn).float().mean() > 0.05      # it does move integers off the nearest grid point
    # a stacked ensemble quantizes head by head with its own Hessian
    qs, ss = Q.gptq_per_channel(torch.stack([w, -w]), torch.stack([H, H]))
    assert torch.equal(qs[0], q) and torch.equal(qs[1], -q) and torch.equal(ss[1], scale)


def test_layer_hessians_and_rollouts(small_model):
    obs, action, task = Q.calibration_rollouts(small_model, steps=5, seed=3)
    assert obs.shape == (15, small_model.cfg.obs_dim) and action.shape == (15, small_model.cfg.action_dim)
    assert task.tolist() == [0, 1, 2] * 5 and action.abs().max() <= 1
    assert (action * (1 - small_model.action_mask(task)) == 0).all()      # padded action entries stay 0
    H = Q.layer_hessians(small_model, (obs, action, task))
    assert sorted(H) == sorted(Q.matmul_layers(small_model))
    for name, h in H.items():
        w = small_model.get_submodule(name).weight
        assert h.shape == (*w.shape[:-2], w.shape[-1], w.shape[-1]) and h.dtype == torch.float64, name
        assert torch.allclose(h, h.transpose(-1, -2)) and (torch.linalg.eigvalsh(h) > -1e-6 * h.abs().max()).all()
    small_model.train()    # measured without Q dropout, and the model's mode is given back
    try:
        assert all(torch.equal(H[n], h) for n, h in Q.layer_hessians(small_model, (obs, action, task)).items())
        assert small_model.training
    finally:
        small_model.eval()
    # the encoder's first layer saw exactly [obs, task embedding] of the 15 rows
    x = small_model.task_emb(obs, task).double()
    assert torch.allclose(H["_encoder.state.0"], x.T @ x)


def test_int8_gptq_on_rollouts_beats_rounding(small_model, tmp_path):
    """The default int8 file (GPTQ on calibration rollouts) predicts closer to the float model on held-out
    rollouts than the same file rounded to nearest."""
    held = Q.calibration_rollouts(small_model, steps=20, seed=1)
    ref = Q.predictions(small_model, *held)
    Q.save_quantized(small_model, "int8", tmp_path / "g.pt")
    Q.save_quantized(small_model, "int8", tmp_path / "r.pt", hessians={})
    assert read_file(tmp_path / "g.pt")["rounding"] == "gptq" and read_file(tmp_path / "r.pt")["rounding"] == "nearest"
    gptq, rtn = (Q.relative_rms(ref, Q.predictions(load_checkpoint(tmp_path / f), *held)) for f in ("g.pt", "r.pt"))
    print(f"\nsmall model, held-out rollouts: relative RMS error GPTQ {gptq:.4g} vs nearest {rtn:.4g}")
    assert gptq < rtn


# ------------------------------------------------------------------------------ round trips
@pytest.mark.parametrize("scheme", list(ROUND_TRIP_TOL))
def test_round_trip(small_model, scheme, tmp_path):
    row = Q.write_variant(small_model, scheme, tmp_path / "m.pt", hessians={})  # int8 rounded to nearest
    full = load_checkpoint(row["full_path"], task_set=TASKS)
    assert _rel(small_model, full) <= ROUND_TRIP_TOL[scheme]
    if scheme in Q.OUR_SCHEMES:  # the deployable file rebuilds the same acting model (target Qs = online Qs)
        deploy = load_checkpoint(row["deployable_path"])
        inputs = Q.calibration_inputs(small_model)
        a, b = Q.predictions(full, *inputs), Q.predictions(deploy, *inputs)
        assert all(torch.equal(a[k], b[k]) for k in a)
        assert torch.equal(deploy._target_Qs[0].bias, deploy._Qs[0].bias)
    if scheme in ("int8", "mixed"):  # weights: int8 layers within scale/2, fp16 layers within fp16 rounding
        stored = read_file(row["full_path"])["model"]
        for name in Q.matmul_layers(small_model):
            w, back = small_model.get_submodule(name).weight, full.get_submodule(name).weight
            bound = stored[f"{name}.weight_scale"].unsqueeze(-1) / 2 if f"{name}.weight_scale" in stored \
                else w.abs() * 2 ** -11 + 2 ** -25  # fp16: half an ulp (relative 2^-11; 2^-25 in the subnormals)
            assert ((back - w).abs() <= bound * (1 + 1e-5)).all(), name


def test_int8_dynamic_runs_int8_matmuls(small_model, monkeypatch, tmp_path):
    Q.save_quantized(small_model, "int8-dynamic", tmp_path / "d.pt")
    model = load_checkpoint(tmp_path / "d.pt")
    assert [n for n in Q.matmul_layers(small_model) if not isinstance(model.get_submodule(n), tuple(Q.INT8.values()))] \
        == Q.observation_layers(small_model)
    calls = []
    real = torch._int_mm
    monkeypatch.setattr(torch, "_int_mm", lambda a, b: calls.append(a.dtype) or real(a, b))
    Q.predictions(model, *Q.calibration_inputs(model))
    # encoder 1 (its observation layer is fp16) + reward 3 + next 3 + pi 3 + Q 3 layers x 2 heads
    assert len(calls) == 16 and set(calls) == {torch.int8}
    # the planner computes through the model's methods: with int8 matmuls, also on the accelerated model
    for m in (model, fast.accelerate(model)):
        calls.clear()
        planner = Planner(m, PlannerConfig(num_samples=32, num_elites=4, num_pi_trajs=4, iterations=2), seed=0)
        action = planner.plan(torch.zeros(2, m.cfg.obs_dim), torch.tensor([0, 1]), t0=True)
        assert action.shape == (2, m.cfg.action_dim) and torch.isfinite(action).all()
        assert len(calls) > 16 and set(calls) == {torch.int8}


def test_safetensors_export(small_model, tmp_path):
    fp16_layers = ["_encoder.state.0", "_reward.2"]
    out = Q.export_safetensors(small_model, "mixed", tmp_path / "st", fp16_layers=fp16_layers)
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]
    from safetensors.torch import load_file
    tensors = load_file(out / "model.safetensors")
    assert tensors["_Qs.1.weight"].dtype == torch.int8 and tensors["_reward.2.weight"].dtype == torch.float16
    assert not any(k.startswith("_target_Qs.") for k in tensors)
    Q.save_quantized(small_model, "mixed", tmp_path / "d.pt", deployable=True, fp16_layers=fp16_layers)
    a, b = load_checkpoint(out), load_checkpoint(tmp_path / "d.pt")
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    with pytest.raises(ValueError, match="safetensors"):
        Q.export_safetensors(small_model, "paper-int8", tmp_path / "p")
    with pytest.raises(CheckpointError, match="not a safetensors export"):
        load_checkpoint(tmp_path)


# ------------------------------------------------------------------------------ loaders, sizes, mixed
@pytest.mark.parametrize("kind", ["public-old", "public-new", "ours", *Q.SCHEMES, "safetensors"])
def test_load_checkpoint_reads_every_format(small_model, kind, tmp_path):
    """One loader: public TD-MPC2 files (old/new API), ours, every scheme's file and the safetensors export
    (the paper's released files: tests/test_checkpoints.py)."""
    path = tmp_path / "m.pt"
    if kind.startswith("public-"):
        torch.save({"model": to_public(small_model, kind.removeprefix("public-"))}, path)
    elif kind == "ours":
        save_checkpoint(small_model, path)
    elif kind == "safetensors":
        path = Q.export_safetensors(small_model, "int8", tmp_path / "st", hessians={})
        Q.save_quantized(small_model, "int8", tmp_path / "d.pt", deployable=True, hessians={})
    else:
        Q.save_quantized(small_model, kind, path, hessians={})
    model = load_checkpoint(path, task_set=TASKS if kind.startswith(("public-", "paper-")) else None)
    assert model.cfg.tasks.tasks == tuple(TASKS) and not model.training
    exact = kind in ("public-old", "public-new", "ours", "fp32")
    same = load_checkpoint(tmp_path / "d.pt") if kind == "safetensors" else small_model if exact else None
    if same is not None:
        assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), same.state_dict().values()))
    elif kind in ROUND_TRIP_TOL:
        assert _rel(small_model, model) <= ROUND_TRIP_TOL[kind]
    else:  # the paper's int8 and mixed recipes: collapsed, but they load and run
        assert torch.isfinite(Q.predictions(model, *Q.calibration_inputs(model))["next_z"]).all()


def test_load_checkpoint_checks_quantized_files(small_model, tmp_path, capsys):
    Q.save_quantized(small_model, "int8", tmp_path / "q.pt", hessians={})
    Q.export_safetensors(small_model, "int8", tmp_path / "st", hessians={})
    with pytest.raises(CheckpointError, match="model_size=1 requested but the file is a custom size"):
        load_checkpoint(tmp_path / "q.pt", model_size=1)
    with pytest.raises(CheckpointError, match="requested task set 'mt30'"):
        load_checkpoint(tmp_path / "st", task_set="mt30")
    with pytest.raises(CheckpointError, match="not a safetensors export"):
        load_checkpoint(tmp_path)
    obj = read_file(tmp_path / "q.pt")
    torch.save({**obj, "quantized": "int4"}, tmp_path / "int4.pt")
    with pytest.raises(CheckpointError, match="unknown quantization scheme 'int4'"):
        load_checkpoint(tmp_path / "int4.pt")
    with pytest.raises(ValueError, match="unknown scheme"):
        Q.quantize_state(small_model, "int4")
    assert main(["evaluate", "--checkpoint", str(tmp_path / "q.pt"), "--no-mpc", "--episodes", "1",
                 "--tasks", "cup-catch"]) == 0
    assert "normalized score" in capsys.readouterr().out


def test_size_ordering(small_model, tmp_path):
    rows = {s: Q.write_variant(small_model, s, tmp_path / f"{s}.pt") for s in Q.SCHEMES}
    for kind in ("full_mib", "full_tensor_mib", "deployable_mib", "deployable_tensor_mib"):
        assert rows["int8"][kind] < rows["mixed"][kind] < rows["fp16"][kind] < rows["fp32"][kind]
        assert rows["paper-int8"][kind] < rows["paper-mixed"][kind] < rows["paper-fp16"][kind]
    for row in rows.values():
        assert row["deployable_mib"] < row["full_mib"] and row["deployable_tensor_mib"] < row["full_tensor_mib"]
    assert rows["fp32"]["full_tensor_mib"] == pytest.approx(2 * rows["fp16"]["full_tensor_mib"])


def test_mixed_plan_budget(small_model):
    fp16 = Q.tensor_bytes(Q.quantize_state(small_model, "fp16"))
    keep, sens = Q.mixed_plan(small_model)
    assert sens["score"].is_monotonic_decreasing and set(sens["layer"]) == set(Q.matmul_layers(small_model))
    base = Q.observation_layers(small_model)  # fp16 in every int8 scheme: never part of the plan
    assert 0 < len(keep) < 13 and not set(keep) & set(base)
    assert set(sens.loc[sens["fp16"], "layer"]) == set(keep + base)
    assert Q.tensor_bytes(Q.quantize_state(small_model, "mixed", keep)) <= Q.MIXED_BUDGET_RATIO * fp16
    assert len(Q.mixed_plan(small_model, budget_mib=100)[0]) == 13
    assert Q.mixed_plan(small_model, budget_mib=Q.tensor_bytes(Q.quantize_state(small_model, "int8")) / Q.MiB)[0] == []


# ------------------------------------------------------------------------------ the released model
@pytest.fixture(scope="module")
def release_sds(shared_dir) -> dict[str, dict]:
    paths = {n: shared_dir / RELEASE.format(n) for n in ("fp16", "int8", "mixed")}
    if not all(p.is_file() for p in paths.values()):
        pytest.skip("released TD-MPC-Opt checkpoints not found in shared/checkpoints")
    return {n: read_file(p)["model"] for n, p in paths.items()}


def test_paper_recipes_reproduce_release(release_sds, released):
    fp32 = dequantize(release_sds["fp16"])                 # the released fp16 weights, upcast
    assert list(to_public(released, "old")) == list(release_sds["fp16"])  # our model → the release's layout
    assert all(torch.equal(a, b) for a, b in zip(Q.paper_fp16(fp32).values(), release_sds["fp16"].values()))
    for name, recipe in (("int8", Q.paper_int8), ("mixed", Q.paper_mixed)):
        ours, theirs = recipe(fp32), release_sds[name]
        assert list(ours) == list(theirs)
        same = total = 0
        for k, v in theirs.items():
            assert ours[k].dtype == v.dtype and ours[k].shape == v.shape, k
            if v.is_quantized:
                assert (ours[k].qscheme(), ours[k].q_scale(), ours[k].q_zero_point()) == \
                       (v.qscheme(), v.q_scale(), v.q_zero_point())
                same += (ours[k].int_repr() == v.int_repr().cpu()).sum().item()
                total += v.numel()
            else:
                assert torch.equal(ours[k], v.cpu()), k
        # the release was quantized from fp32 weights: values just above ±0.5 became exactly ±0.5 in fp16
        # and now round to 0 instead of ±1 (≈ 0.012 % of the elements)
        print(f"\npaper-{name}: {same}/{total} = {same / total:.6f} of the integers match the release")
        assert same / total >= 0.999


def test_paper_int8_collapse(released, tmp_path):
    sd = Q.paper_int8(to_public(released, "old"))
    weights = [v.int_repr() for k, v in sd.items() if k.endswith(".weight") and "ln" not in k and "_task_emb" not in k]
    weights += [sd[f"_Qs.params.{k}"].int_repr() for k in (0, 4, 8)]
    zero = sum((w == 0).sum().item() for w in weights) / sum(w.numel() for w in weights)
    print(f"\npaper-int8: {zero:.4f} of the matmul weights are 0")
    assert zero > 0.9  # most weights (|w| < 0.5) round to 0 under scale 1.0 (measured 0.924)
    Q.save_paper(sd, tmp_path / "int8.pt")  # the collapsed file loads like the release and runs
    model = load_checkpoint(tmp_path / "int8.pt")
    assert torch.isfinite(Q.predictions(model, *Q.calibration_inputs(model, per_task=1))["next_z"]).all()


def test_released_table_golden(released, shared_dir, tmp_path):
    with np.load(shared_dir / "golden" / "model_io_seed0.npz") as g:
        obs, action = g["obs"].reshape(-1, 24), g["action"].reshape(-1, 6)
    inputs = Q.calibration_inputs(released)
    assert np.array_equal(inputs[0].numpy(), obs) and np.array_equal(inputs[1].numpy(), action)
    df = Q.quantization_table(released, Q.SCHEMES, tmp_path, inputs=inputs).set_index("scheme")
    print("\n" + df.drop(columns=["full_path", "deployable_path"]).round(4).to_string())
    # max |error| on the 240 golden rows; for scale: |Q| averages 118 (max 218), |reward| 0.25 (max 2.8)
    assert (df.loc[["fp32", "fp16", "paper-fp16"], ["err_reward", "err_q", "err_next_z"]] == 0).all().all()
    tol = {"bf16": (0.25, 8, 0.02), "int8": (0.3, 30, 0.05), "int8-dynamic": (1.0, 60, 0.1), "mixed": (0.3, 30, 0.05)}
    for scheme, (r, q, z) in tol.items():
        assert df.loc[scheme, "err_reward"] <= r and df.loc[scheme, "err_q"] <= q and df.loc[scheme, "err_next_z"] <= z
    assert df.loc["paper-int8", "err_reward"] > 100 and df.loc["paper-mixed", "err_q"] > 100  # the collapse
    # on real observations (held-out rollouts) GPTQ int8 is as close to the float model as bf16 storage
    # (measured 0.93 / 0.17 / 0.59 / 2.6 % vs bf16 0.29 / 0.22 / 0.40 / 2.7 %; per-channel rounding to
    # nearest with an int8 observation layer: 5.2 / 0.75 / 2.6 / 16.6 %)
    rel = df.loc["int8", ["rel_reward", "rel_q", "rel_next_z", "rel_pi_mean"]]
    assert (rel <= [2.0, 0.5, 1.5, 5.0]).all(), rel
    assert df.loc["paper-int8", "rel_pi_mean"] > 50
    assert 3.7 < df.loc["paper-fp16", "full_mib"] < 3.9 and df.loc["int8", "full_mib"] <= 2.0


# ------------------------------------------------------------------------------ CLI and table
def test_cli(small_model, tmp_path, capsys):
    save_checkpoint(small_model, tmp_path / "f.pt")
    argv = ["quantize", "--checkpoint", str(tmp_path / "f.pt"), "--out", str(tmp_path / "q.pt")]
    assert main(argv + ["--scheme", "mixed", "--export-safetensors", str(tmp_path / "st")]) == 0
    out = capsys.readouterr().out
    assert "mixed full" in out and "mixed deployable" in out and "safetensors export" in out
    assert (tmp_path / "q-deploy.pt").is_file() and (tmp_path / "st" / "model.safetensors").is_file()
    assert load_checkpoint(tmp_path / "q.pt").cfg.tasks.tasks == tuple(TASKS)
    assert main(argv + ["--scheme", "paper-int8", "--export-safetensors", str(tmp_path / "p")]) == 2


def test_quantization_table_smoke(small_model, tmp_path):
    cfg = PlannerConfig(num_samples=32, num_elites=4, num_pi_trajs=4, iterations=2)
    eval_kwargs = dict(tasks=["cartpole-balance"], episodes=1, episode_length=20, mpc=False, progress=False,
                       planner_cfg=cfg)
    df = Q.quantization_table(small_model, ["fp16", "int8-dynamic", "paper-int8"], tmp_path, eval_kwargs,
                              latency_steps=1)
    assert list(df["scheme"]) == ["fp16", "int8-dynamic", "paper-int8"]
    assert df["score"].between(0, 100).all() and (df["plan_ms"] > 0).all() and (df["forward_ms"] > 0).all()
    rel = df.set_index("scheme")[["rel_reward", "rel_q", "rel_next_z", "rel_pi_mean"]]
    print("\n" + rel.to_string())
    assert (rel.loc["fp16"] < 0.5).all() and (rel.loc["int8-dynamic"] > 2 * rel.loc["fp16"]).all()  # percent
    assert (df["deployable_mib"] < df["full_mib"]).all()


def test_recorded_table(tmp_path):
    assert Q.recorded_table(tmp_path / "none.csv") is None
    row = {"scheme": "int8", "protocol": "MPPI", "full_mib": 2.0, "deployable_mib": 1.4, "score": 30.0, "plan_ms": 90.0}
    pd.DataFrame([row]).to_csv(tmp_path / "ok.csv", index=False)
    assert Q.recorded_table(tmp_path / "ok.csv").score.tolist() == [30.0]
    pd.DataFrame([{k: v for k, v in row.items() if k != "score"}]).to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(ValueError, match=r"missing columns \['score'\]"):
        Q.recorded_table(tmp_path / "bad.csv")
    pd.DataFrame([{**row, "scheme": "int4"}]).to_csv(tmp_path / "bad2.csv", index=False)
    with pytest.raises(ValueError, match="unknown schemes"):
        Q.recorded_table(tmp_path / "bad2.csv")


def test_pooled_runs_pairs_by_task(tmp_path):
    def write(scheme: str, seed: int, scores: dict[str, list[float]]) -> None:
        rows = [{"task": t, "episode": e, "seed": seed * 1000 + e, "return": 10 * s, "score": s, "steps": 500}
                for t, ss in scores.items() for e, s in enumerate(ss)]
        pd.DataFrame(rows).to_csv(tmp_path / f"released_{scheme}_mpc_seed{seed}.csv", index=False)

    write("fp16", 0, {"a": [10, 20], "b": [50, 50], "c": [0, 0]})
    write("int8", 0, {"a": [10, 10], "b": [40, 50], "c": [3, 3]})
    write("fp16", 1, {"a": [30], "b": [50], "c": [0]})
    write("int8", 1, {"a": [30], "b": [50], "c": [0]})
    write("fp16", 2, {"a": [0], "b": [0], "c": [0]})          # no int8 at seed 2: left out of both schemes
    table = Q.pooled_runs(tmp_path, ["int8"]).set_index("scheme")
    assert table.loc["int8", "seeds"] == "0,1" and table.loc["fp16", "episodes"] == 9
    assert table.loc["fp16", "score"] == pytest.approx((20 + 50 + 0) / 3)
    # per-task pooled means: a 20 → 50/3, b 50 → 140/3, c 0 → 2; differences -10/3, -10/3, +2
    d = np.array([-10 / 3, -10 / 3, 2])
    assert table.loc["int8", "vs_fp16"] == pytest.approx(d.mean())
    assert table.loc["int8", "vs_fp16_se"] == pytest.approx(d.std(ddof=1) / np.sqrt(3))
    assert Q.pooled_runs(tmp_path, ["int8"], seeds=[1]).set_index("scheme").loc["int8", "vs_fp16"] == 0
    with pytest.raises(FileNotFoundError, match="no seed of \\[2\\]"):
        Q.pooled_runs(tmp_path, ["int8"], seeds=[2])
    # the report's table: every recorded scheme pooled over its seeds, sizes from the highest seed's summary
    assert Q.recorded_pooled(tmp_path) is None
    summary = {"protocol": "MPPI", "deployable_mib": 1.0, "plan_ms": 90.0}
    pd.DataFrame([{"scheme": "fp16", "full_mib": 3.8, "score": 0, **summary},
                  {"scheme": "int8", "full_mib": 2.1, "score": 0, **summary}]).to_csv(
        tmp_path / "quantization_released_mpc_seed0.csv", index=False)
    pd.DataFrame([{"scheme": "int8", "full_mib": 1.9, "score": 0, **summary}]).to_csv(
        tmp_path / "quantization_released_mpc_seed1.csv", index=False)
    rec = Q.recorded_pooled(tmp_path).set_index("scheme")
    assert list(rec.index) == ["fp16", "int8"] and rec.loc["int8", "full_mib"] == 1.9
    assert rec.loc["fp16", "protocol"] == "MPPI, seeds 0,1,2, 12 episodes"
    assert rec.loc["int8", "score"] == table.loc["int8", "score"] and rec.loc["int8", "vs_fp16"] == pytest.approx(d.mean())
    assert rec.loc["int8", "fp16_same_seeds"] == table.loc["fp16", "score"] != rec.loc["fp16", "score"]
