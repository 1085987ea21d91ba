"""The quantization study of ``05_quantization``: which models are quantized, the tables of every scheme, and the
released student's recorded MPPI runs (``benchmarks/quantized_mpc.py``)."""
from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from .. import quantize
from ..checkpoints import load_checkpoint
from ..device import resolve_device
from . import paper
from .experiments import pick_student
from .params import MT_MINI_TEACHER, QuantizationParams

COLUMNS = ["full_mib", "deployable_mib", "score", "plan_ms", "forward_ms", "rel_reward", "rel_q", "rel_next_z",
           "rel_pi_mean"]
RELEASED = "released student (MT30)"


def schemes(P: QuantizationParams) -> list[str]:
    return list(quantize.SCHEMES) if P.schemes == "all" else list(P.schemes)


def models(P: QuantizationParams) -> dict[str, Path]:
    """Name -> checkpoint of every model to quantize: the student (``checkpoint``, else the newest 03 run with
    d_coef 0.4), the MT-mini teacher and the released student, those that exist."""
    found = {}
    student = P.checkpoint or pick_student(P.out_dir)
    if student:
        found["student"] = Path(student)
    if MT_MINI_TEACHER.is_file():
        found["MT-mini teacher"] = MT_MINI_TEACHER
    if P.released:
        found[RELEASED] = Path(P.released)
    if not found:
        raise FileNotFoundError("nothing to quantize: pass checkpoint=PATH (no 03 run, MT-mini teacher or release found)")
    return found


def quantize_models(paths: dict[str, Path], P: QuantizationParams) -> tuple[dict[str, pd.DataFrame], pd.DataFrame]:
    """Every scheme of every model written under ``out_dir/quantized``, reloaded, measured and evaluated (the
    released student on ``released_tasks``): (name -> table indexed by scheme, every episode with a model column)."""
    tables, episodes = {}, []
    for name, path in paths.items():
        model = load_checkpoint(path)
        kw = dict(tasks=P.released_tasks if name == RELEASED else None, episodes=P.episodes, seed=0, mpc=P.mpc,
                  episode_length=P.episode_length, progress=False, cluster=P.cluster)
        table, eps = quantize.quantization_table(model, schemes(P), Path(P.out_dir) / "quantized" / name.replace(" ", "_"),
                                                 kw, latency_steps=P.latency_steps, return_episodes=True,
                                                 device=resolve_device(P.device))
        tables[name] = table.set_index("scheme")
        episodes.append(eps.assign(model=name))
        print(f"{name}: {path.name}, {model.param_counts()['total (without target Qs)']:,} parameters")
    return tables, pd.concat(episodes, ignore_index=True)


def overview(tables: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """Sizes, score, latencies and relative errors of every model and scheme (rows: model, scheme)."""
    return pd.concat({k: t[COLUMNS] for k, t in tables.items()}, names=["model"])


def summary(table: pd.DataFrame) -> pd.DataFrame:
    """Rows ``<model> <scheme>`` of :func:`overview` with score, sizes and planning latency, for the report index."""
    out = table[["score", "full_mib", "deployable_mib", "plan_ms"]].copy()
    out.index = [f"{m} {s}" for m, s in out.index]
    return out.round(3)


def paper_table4() -> pd.DataFrame:
    return paper.table(4)[["setting", "precision", "score", "size_mib"]].rename(
        columns={"score": "paper score (MT30, 10 episodes, MPPI)"})


run_file = quantize.recorded_run


def recorded_schemes(runs: str | os.PathLike) -> list[str]:
    """The schemes other than fp16 with recorded per-episode files in ``runs``, sorted."""
    found = (run_file(f) for f in Path(runs).glob("released_*.csv"))
    return sorted({f[0] for f in found if f} - {"fp16"})


def recorded_comparisons(runs: str | os.PathLike) -> pd.DataFrame | None:
    """Each recorded scheme against fp16 on the seeds both were run with (:func:`quantize.pooled_runs`), or None."""
    found = recorded_schemes(runs)
    if not found:
        return None
    return pd.concat({s: quantize.pooled_runs(runs, [s]).set_index("scheme") for s in found}, names=["comparison"])
