"""Measuring quantized models: prediction errors, layer sensitivity and the mixed plan, latency, the
quantization table, and the statistics of recorded runs (pooled seeds, paired differences to fp16)."""
from __future__ import annotations

import copy
import os
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from .. import fast, math
from ..checkpoints import load_checkpoint
from ..evaluation import evaluate, normalized_score
from ..planner import Planner
from ..world_model import WorldModel
from .calibration import Inputs, calibration_hessians, calibration_inputs, calibration_rollouts
from .files import write_variant
from .int8 import dequantize_per_channel, matmul_layers, observation_layers, quantize_per_channel
from .recipes import MiB, SCHEMES, calibrated, quantize_state, tensor_bytes

MIXED_BUDGET_RATIO = 2.8 / 3.9  # default mixed budget: the paper's mixed/fp16 file-size ratio (Table 4)


# ------------------------------------------------------------------------------ prediction errors, mixed plan
@torch.no_grad()
def predictions(model: WorldModel, obs: torch.Tensor, action: torch.Tensor, task: torch.Tensor) -> dict[str, torch.Tensor]:
    """reward, Q of every head, next latent and policy mean for ``(obs, action, task)`` rows (z from obs)."""
    c = model.cfg
    z = model.encode(obs, task)
    return {"reward": math.two_hot_inv(model.reward(z, action, task), c.vmin, c.vmax),
            "q": math.two_hot_inv(model.Q(z, action, task, "all"), c.vmin, c.vmax),
            "next_z": model.next(z, action, task),
            "pi_mean": model.pi(z, task, torch.Generator().manual_seed(0))[1]["mean"]}


def prediction_errors(ref: dict[str, torch.Tensor], out: dict[str, torch.Tensor]) -> dict[str, float]:
    """Max absolute error per prediction (``err_reward``, ``err_q``, ``err_next_z``, ``err_pi_mean``)."""
    return {f"err_{k}": (out[k] - ref[k]).abs().max().item() for k in ref}


def relative_errors(ref: dict[str, torch.Tensor], out: dict[str, torch.Tensor]) -> dict[str, float]:
    """RMS(error) / RMS(reference) per prediction, in percent (``rel_reward``, ``rel_q``, ...)."""
    return {f"rel_{k}": 100 * ((out[k] - ref[k]).pow(2).mean() / ref[k].pow(2).mean().clamp(min=1e-12)).sqrt().item()
            for k in ref}


def relative_rms(ref: dict[str, torch.Tensor], out: dict[str, torch.Tensor]) -> float:
    """Mean over predictions of RMS(error) / RMS(reference): one unitless sensitivity score."""
    return float(np.mean(list(relative_errors(ref, out).values()))) / 100


@torch.no_grad()
def layer_sensitivity(model: WorldModel, inputs: Inputs | None = None) -> pd.DataFrame:
    """Quantize one layer at a time to int8 (per channel) and measure the prediction errors on ``inputs``
    (default :func:`calibration_inputs`). Sorted by ``score`` (mean relative RMS error), most sensitive first."""
    m = copy.deepcopy(model).eval()
    inputs = inputs or calibration_inputs(m)
    ref = predictions(m, *inputs)
    rows = []
    for name in matmul_layers(m):
        layer = m.get_submodule(name)
        w = layer.weight.data.clone()
        layer.weight.data = dequantize_per_channel(*quantize_per_channel(w))
        out = predictions(m, *inputs)
        layer.weight.data = w
        rows.append({"layer": name, "params": w.numel(), "score": relative_rms(ref, out), **prediction_errors(ref, out)})
    return pd.DataFrame(rows).sort_values("score", ascending=False, ignore_index=True)


def mixed_plan(model: WorldModel, budget_mib: float | None = None,
               inputs: Inputs | None = None) -> tuple[list[str], pd.DataFrame]:
    """Layers to keep in fp16 besides :func:`observation_layers` (fp16 in every int8 scheme): the most
    sensitive first, each kept if the full checkpoint's tensor bytes stay within ``budget_mib`` (default
    ``MIXED_BUDGET_RATIO`` × the fp16 size). Returns (layers, sensitivity with an ``fp16`` column)."""
    sens = layer_sensitivity(model, inputs)
    budget = budget_mib * MiB if budget_mib is not None else MIXED_BUDGET_RATIO * tensor_bytes(quantize_state(model, "fp16"))
    base = observation_layers(model)
    keep: list[str] = []
    for name in sens["layer"]:
        if name not in base and tensor_bytes(quantize_state(model, "mixed", keep + [name])) <= budget:
            keep.append(name)
    sens["fp16"] = sens["layer"].isin(keep + base)
    return keep, sens


# ------------------------------------------------------------------------------ latency and the table
def planning_latency_ms(model: WorldModel, planner_cfg=None, steps: int = 10, compile: bool = False) -> float:
    """Median wall time (ms) of one :class:`~tdmpc_opt_lib.planner.Planner` action for one environment, with the
    speed layer (:mod:`tdmpc_opt_lib.fast`; int8 layers run as they are), eager unless ``compile`` (compiling
    happens in the warm-up calls)."""
    planner = Planner(fast.accelerate(model), planner_cfg, seed=0, compile=compile)
    obs, task = torch.zeros(1, model.cfg.obs_dim), torch.zeros(1, dtype=torch.long)
    times = []
    with fast.cpu_runtime():
        for t in range(3 if compile else 1):  # warm-up
            planner.plan(obs, task, t0=t == 0)
        for _ in range(steps):
            start = time.perf_counter()
            planner.plan(obs, task)
            times.append(time.perf_counter() - start)
    return float(np.median(times)) * 1e3


def forward_latency_ms(model: WorldModel, inputs: Inputs, steps: int = 10) -> float:
    """Mean wall time (ms) of :func:`predictions` (all WorldModel heads, where int8-dynamic runs int8 matmuls)."""
    predictions(model, *inputs)
    start = time.perf_counter()
    for _ in range(steps):
        predictions(model, *inputs)
    return (time.perf_counter() - start) / steps * 1e3


def quantization_table(model: WorldModel, schemes: list[str] | tuple[str, ...] = SCHEMES,
                       out_dir: str | os.PathLike = "quantized", eval_kwargs: dict | None = None,
                       inputs: Inputs | None = None, latency_steps: int = 10, held_out: Inputs | None = None,
                       return_episodes: bool = False,
                       device: str | torch.device = "cpu") -> pd.DataFrame | tuple[pd.DataFrame, pd.DataFrame | None]:
    """Write, reload and measure each scheme; one row per scheme.

    Columns: sizes (:func:`write_variant`), max prediction errors (``err_*``) of the reloaded model vs
    ``model`` on ``inputs`` (default :func:`calibration_inputs`), relative RMS errors in % (``rel_*``) on
    real observations ``held_out`` (default: :func:`calibration_rollouts` of seed 1, apart from the seed-0
    rollouts GPTQ calibrates on), and, when ``eval_kwargs`` is given (keyword arguments
    of :func:`~tdmpc_opt_lib.evaluation.evaluate`), ``score`` (normalized score), ``plan_ms`` (Planner
    latency per action, with ``eval_kwargs["planner_cfg"]``) and ``forward_ms`` (:func:`forward_latency_ms`);
    with ``return_episodes`` it returns ``(table, per-episode results of all schemes with a scheme column)``.
    ``device``: where the calibration rollouts and Hessians run (a copy of the model); the quantized models run on
    the CPU (torch's quantized kernels are CPU-only).
    """
    unknown = [s for s in schemes if s not in SCHEMES]
    if unknown:
        raise ValueError(f"unknown schemes {unknown}; known: {', '.join(SCHEMES)}")
    inputs = inputs or calibration_inputs(model)
    ref = predictions(copy.deepcopy(model).eval(), *inputs)
    held_out = held_out or calibration_rollouts(model, steps=40, seed=1)
    ref_held = predictions(copy.deepcopy(model).eval(), *held_out)
    hessians = None
    if any(map(calibrated, schemes)):
        hessians = calibration_hessians(copy.deepcopy(model).to(device) if torch.device(device).type != "cpu" else model)
    out_dir = Path(out_dir)
    rows, episodes = [], []
    for scheme in schemes:
        row = write_variant(model, scheme, out_dir / f"{scheme}.pt", inputs=inputs, hessians=hessians)
        loaded = load_checkpoint(row["full_path"], task_set=list(model.cfg.tasks.tasks))
        row.update(prediction_errors(ref, predictions(loaded, *inputs)))
        row.update(relative_errors(ref_held, predictions(loaded, *held_out)))
        if eval_kwargs is not None:
            episodes.append(evaluate(loaded, **eval_kwargs).assign(scheme=scheme))
            row["score"] = normalized_score(episodes[-1])
            row["plan_ms"] = planning_latency_ms(loaded, eval_kwargs.get("planner_cfg"), latency_steps)
            row["forward_ms"] = forward_latency_ms(loaded, inputs, latency_steps)
        rows.append(row)
    table = pd.DataFrame(rows)
    if return_episodes:
        return table, pd.concat(episodes, ignore_index=True) if episodes else None
    return table


# ------------------------------------------------------------------------------ recorded runs
RECORDED_COLUMNS = ("scheme", "protocol", "full_mib", "deployable_mib", "score", "plan_ms")


def recorded_table(path: str | os.PathLike) -> pd.DataFrame | None:
    """A summary written by ``benchmarks/quantized_mpc.py`` (None when the file does not exist)."""
    path = Path(path)
    if not path.is_file():
        return None
    table = pd.read_csv(path)
    if missing := [c for c in RECORDED_COLUMNS if c not in table.columns]:
        raise ValueError(f"{path}: not a quantization summary, missing columns {missing}")
    if unknown := sorted(set(table["scheme"]) - set(SCHEMES)):
        raise ValueError(f"{path}: unknown schemes {unknown}")
    return table


def paired_difference(df: pd.DataFrame, ref: pd.DataFrame) -> tuple[float, float]:
    """Normalized-score difference of per-episode results ``df`` to ``ref`` (same tasks, episodes, seeds) and
    its standard error over tasks: the per-task mean differences are the paired samples."""
    per_task = (df.groupby("task")["score"].mean() - ref.groupby("task")["score"].mean()).dropna()
    return float(per_task.mean()), float(per_task.std(ddof=1) / np.sqrt(len(per_task)))


def recorded_run(path: str | os.PathLike) -> tuple[str, int] | None:
    """(scheme, seed) of a per-episode file ``released_<scheme>_mpc_seed<S>.csv`` written by
    ``benchmarks/quantized_mpc.py``, else None."""
    stem = Path(path).name.removesuffix(".csv")
    if not stem.startswith("released_") or "_mpc_seed" not in stem:
        return None
    scheme, seed = stem[len("released_"):].rsplit("_mpc_seed", 1)
    return (scheme, int(seed)) if seed.isdigit() else None


def _recorded(runs: Path, scheme: str, seed: int) -> Path:
    return runs / f"released_{scheme}_mpc_seed{seed}.csv"


def pooled_runs(runs: str | os.PathLike, schemes: list[str] | tuple[str, ...] = ("int8",),
                seeds: list[int] | None = None) -> pd.DataFrame:
    """fp16 and ``schemes`` with the per-episode results of several seeds pooled (``released_<scheme>_mpc_seed<S>.csv``
    in ``runs``, written by ``benchmarks/quantized_mpc.py``): score and paired gap to fp16 (± s.e.). Only the
    seeds of ``seeds`` (None: any) that every scheme and fp16 have are used, so the comparison stays paired."""
    runs = Path(runs)
    names = ["fp16", *[s for s in schemes if s != "fp16"]]
    found = sorted({r[1] for r in map(recorded_run, runs.glob("released_*.csv")) if r and r[0] == "fp16"})
    have = [s for s in (found if seeds is None else seeds) if all(_recorded(runs, k, s).is_file() for k in names)]
    if not have:
        raise FileNotFoundError(f"no seed of {seeds if seeds is not None else found} has per-episode CSVs "
                                f"for {names} in {runs}")
    frames = {k: pd.concat([pd.read_csv(_recorded(runs, k, s)) for s in have], ignore_index=True)
              for k in names}
    rows = []
    for k, df in frames.items():
        gap, se = paired_difference(df, frames["fp16"]) if k != "fp16" else (float("nan"), float("nan"))
        rows.append({"scheme": k, "seeds": ",".join(map(str, have)), "episodes": len(df),
                     "score": normalized_score(df), "vs_fp16": gap, "vs_fp16_se": se})
    return pd.DataFrame(rows)


def recorded_pooled(runs: str | os.PathLike) -> pd.DataFrame | None:
    """One row per scheme of this library or the paper recorded in ``runs`` by ``benchmarks/quantized_mpc.py``:
    all its seeds pooled and compared with fp16 on those seeds (:func:`pooled_runs`; ``fp16_same_seeds``: fp16's
    score there), with the sizes and
    planning latency of the highest seed's summary (``quantization_released_mpc_seed<S>.csv``) that has it.
    None when nothing is recorded."""
    runs = Path(runs)
    summaries = sorted(((int(f.stem.rsplit("seed", 1)[1]), recorded_table(f))
                        for f in runs.glob("quantization_released_mpc_seed*.csv")), key=lambda st: st[0])
    latest = {row.scheme: row for _, table in summaries for row in table.itertuples()}
    rows = []
    for scheme in SCHEMES:
        recorded = any(r and r[0] == scheme for r in map(recorded_run, runs.glob("released_*.csv")))
        if scheme not in latest or not recorded:
            continue
        fp16, pooled = pooled_runs(runs, [scheme]).iloc[[0, -1]].itertuples()
        rows.append({"scheme": scheme, "protocol": f"MPPI, seeds {pooled.seeds}, {pooled.episodes} episodes",
                     "full_mib": latest[scheme].full_mib, "deployable_mib": latest[scheme].deployable_mib,
                     "score": pooled.score, "plan_ms": latest[scheme].plan_ms, "fp16_same_seeds": fp16.score,
                     "vs_fp16": pooled.vs_fp16, "vs_fp16_se": pooled.vs_fp16_se})
    return pd.DataFrame(rows) if rows else None
