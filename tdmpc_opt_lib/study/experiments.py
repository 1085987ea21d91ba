"""Distillation runs as cached experiments: what ``03_distill`` runs and ``04_ablations`` sweeps.

A run is identified by the parameters that determine its result (:data:`RUN_KEYS`; the teacher and
dataset by content, not path): ``run_dir(P)`` = ``<out_dir>/runs/<readable name>-<hash>``. It holds
the training folder of :func:`tdmpc_opt_lib.training.train` (``metrics.csv``, ``model.pt``, resumable
``train.pt``), ``episodes.csv`` (per-episode evaluation) and ``result.json``, written last, so a run
with a ``result.json`` is complete and a re-run returns it without training again.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .. import training
from ..checkpoints import atomic_write_text, content_digest
from ..evaluation import evaluate, normalized_score, task_table
from . import stats
from .params import NOTEBOOK_PROFILES, DistillParams, planner_config, profile_name, resolve

RUN_KEYS = ("d_coef", "distill", "steps", "batch_size", "model_size", "seed", "teacher", "dataset",
            "eval_episodes", "eval_mpc", "num_samples", "iterations", "episode_length")


def eval_seed(P: DistillParams) -> int:
    """The evaluation's seed (environment seeds ``1000 · seed + episode``): the training seed, so the students of
    one training seed are all evaluated on the same episodes (paired), and each training seed draws other ones (the
    interval over seeds then covers which episodes were drawn)."""
    return P.seed


def run_key(P: DistillParams) -> dict[str, Any]:
    """The parameters that define a run, with teacher/dataset replaced by content hashes."""
    key = {k: getattr(P, k) for k in RUN_KEYS}
    key["teacher"] = content_digest(P.teacher) if P.d_coef > 0 else None
    key["dataset"] = content_digest(P.dataset)
    if not P.eval_mpc:
        key["num_samples"] = key["iterations"] = None      # no planner in the evaluation
    return key


def run_name(P: DistillParams) -> str:
    """Readable, unique folder name, e.g. ``reward-d0.4-size1-bs256-2000steps-seed1-3f2a9c1e``."""
    key = run_key(P)
    h = hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:8]
    kind = P.distill if P.d_coef > 0 else "scratch"
    return f"{kind}-d{P.d_coef:g}-size{P.model_size}-bs{P.batch_size}-{P.steps}steps-seed{P.seed}-{h}"


def run_dir(P: DistillParams) -> Path:
    return Path(P.out_dir) / "runs" / run_name(P)


def load_result(path: str | os.PathLike) -> dict | None:
    """A finished run's result (``result.json`` in a run folder), or None."""
    file = Path(path) / "result.json"
    return json.loads(file.read_text()) if file.is_file() else None


def train_config(P: DistillParams) -> training.TrainConfig:
    """The offline training run for resolved ``03_distill`` parameters: 20 log rows at least (one per 100 updates
    at most) and a resume checkpoint every quarter of the run (every 1000 updates at most)."""
    log_every = max(1, min(100, P.steps // 20))
    return training.TrainConfig(
        data=str(P.dataset), out=str(run_dir(P)), steps=P.steps, batch_size=P.batch_size, seed=P.seed,
        model_size=P.model_size, d_coef=P.d_coef, distill=P.distill,
        teacher=str(P.teacher) if P.d_coef > 0 else None, log_every=log_every, device=P.device,
        checkpoint_every=log_every * max(1, min(1000, P.steps // 4) // log_every))


def evaluate_run(model, P: DistillParams) -> pd.DataFrame:
    """Per-episode scores with the run's evaluation protocol (policy prior, or MPPI with ``num_samples`` x
    ``iterations``; the episodes of :func:`eval_seed`)."""
    return evaluate(model, None, P.eval_episodes, eval_seed(P), mpc=P.eval_mpc,
                    planner_cfg=planner_config(P.num_samples, P.iterations),
                    episode_length=P.episode_length, progress=False)


def finish_run(model, P: DistillParams, episodes: pd.DataFrame) -> dict:
    """Write ``episodes.csv`` and the one-row ``result.json`` (last: it marks the run complete)."""
    d = run_dir(P)
    episodes.to_csv(d / "episodes.csv", index=False)
    metrics = training.read_metrics(d)
    result = {"run": d.name, **run_key(P), "teacher_path": str(P.teacher) if P.d_coef > 0 else None,
              "score": round(normalized_score(episodes), 3),
              "tasks": {t: round(v, 3) for t, v in task_table(episodes)["score"].items()},
              "params": model.param_counts()["total (without target Qs)"], "train_s": round(float(metrics.wall_s.iloc[-1]), 1),
              "updates_per_s": round(float(metrics.updates_per_s.median()), 2),
              "eval_s": round(episodes.attrs.get("wall_s", float("nan")), 1),
              "finished": time.strftime("%Y-%m-%d %H:%M:%S")}
    atomic_write_text(d / "result.json", json.dumps(result, indent=1))
    return result


def evaluate_or_load(model, P: DistillParams) -> tuple[dict, pd.DataFrame]:
    """The run's (result, per-episode scores): read back if the run is finished, else evaluated and recorded."""
    d = run_dir(P)
    result = load_result(d)
    if result is not None:
        return result, pd.read_csv(d / "episodes.csv")
    episodes = evaluate_run(model, P)
    return finish_run(model, P, episodes), episodes


def label(P: DistillParams) -> str:
    """The student as the report index names it, e.g. ``student d_coef 0.4 (reward, 1000 steps)``."""
    if P.d_coef:
        return f"student d_coef {P.d_coef:g} ({P.distill}, {P.steps} steps)"
    return f"student from scratch ({P.steps} steps)"


def pick_student(out_dir: str | os.PathLike, d_coef: float = 0.4, distill: str = "reward") -> Path | None:
    """``model.pt`` of the longest finished run with this ``d_coef`` and variant (ties: the newest), or None."""
    runs = collect(out_dir)
    if runs.empty:
        return None
    runs = runs[(runs.d_coef == d_coef) & (runs.distill == distill)]
    if runs.empty:
        return None
    best = runs.sort_values(["steps", "finished"]).iloc[-1]
    return Path(out_dir) / "runs" / best["run"] / "model.pt"


def collect(out_dir: str | os.PathLike) -> pd.DataFrame:
    """One row per finished run under ``out_dir/runs`` (per-task scores as ``task:<name>`` columns)."""
    rows = []
    for file in sorted(Path(out_dir).glob("runs/*/result.json")):
        r = json.loads(file.read_text())
        rows.append({**{k: v for k, v in r.items() if k != "tasks"}, **{f"task:{t}": s for t, s in r["tasks"].items()}})
    return pd.DataFrame(rows)


# columns that differ between the runs of one configuration (or only name a file)
PER_RUN = ("seed", "run", "cached", "finished", "teacher_path", "score", "train_s", "updates_per_s", "eval_s")


def over_seeds(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per configuration of ``runs`` (rows of :func:`collect` or :func:`run_grid`: every column not in
    :data:`PER_RUN` and not a ``task:`` score identifies it), averaged over its seeds: ``score`` (mean normalized
    score), ``score_se`` (standard error of that mean over the seeds; NaN for a single seed), ``score_ci95`` (the
    half-width of its 95 % t-interval, :mod:`.stats`), ``seeds`` (how many), the ``task:`` means and the mean
    ``train_s``. Configurations keep the order of their first run."""
    if runs.empty:
        return runs
    tasks = [c for c in runs.columns if c.startswith("task:")]
    keys = [c for c in runs.columns if c not in PER_RUN and c not in tasks]
    groups = runs.groupby(keys, sort=False, dropna=False)
    out = groups[["score", *tasks, *(["train_s"] if "train_s" in runs else [])]].mean()
    n = groups.size()
    out.insert(1, "score_se", groups["score"].std(ddof=1) / np.sqrt(n))
    out.insert(2, "score_ci95", [stats.half_width(g.to_numpy()) for _, g in groups["score"]])
    out.insert(3, "seeds", n)
    return out.reset_index()


def distilled_minus_scratch(configs: pd.DataFrame) -> pd.DataFrame:
    """Per task, each distilled configuration's score minus the from-scratch one's with the same steps and batch
    size (rows of :func:`over_seeds`); columns ``run`` (a label), ``task``, ``distilled - scratch``."""
    rows = []
    tasks = [c for c in configs.columns if c.startswith("task:")]
    if not configs.empty:
        for (steps, bs), g in configs.groupby(["steps", "batch_size"]):
            scratch = g[g.d_coef == 0]
            if scratch.empty:
                continue
            for _, r in g[g.d_coef > 0].iterrows():
                rows += [{"run": f"{r.distill} d_coef {r.d_coef:g} ({steps} steps, bs {bs})", "task": c[5:],
                          "distilled - scratch": r[c] - scratch.iloc[0][c]} for c in tasks if pd.notna(r[c])]
    return pd.DataFrame(rows, columns=["run", "task", "distilled - scratch"])


def grid(base: dict[str, Any], **axes: list) -> list[dict[str, Any]]:
    """Points of a one-axis-at-a-time sweep around ``base``: for each axis, each value with the rest fixed
    (as the paper's tables vary one thing at a time); duplicates removed, order kept."""
    return unique([{**base, name: v} for name, values in axes.items() for v in values])


def unique(points: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``points`` without repeats (equal parameters), order kept."""
    return list({json.dumps(p, sort_keys=True, default=str): p for p in points}.values())


@contextmanager
def _child_stderr_to(path: Path) -> Iterator[None]:
    """Processes started inside (papermill's kernels) write their stderr (jupyter's start-up warnings,
    crashes) to ``path`` instead of this notebook's output; cell errors still reach papermill's exception."""
    path.parent.mkdir(parents=True, exist_ok=True)
    saved = os.dup(2)
    try:
        with open(path, "ab") as f:
            os.dup2(f.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def execute_point(notebook: str, output: str, params: dict[str, Any]) -> None:
    """Execute ``notebook`` (03_distill) into ``output`` with papermill ``params``."""
    import papermill as pm

    pm.execute_notebook(notebook, output, parameters=params, cwd=str(Path(notebook).parent), progress_bar=False)


def run_grid(points: list[dict[str, Any]], notebook: str | os.PathLike, profile: str, jobs: int = 1,
             cluster: str | None = None, dry_run: bool = False) -> pd.DataFrame:
    """Execute ``notebook`` (03_distill) with papermill for every point (03_distill parameters beside the
    ``profile``'s) whose run is not finished yet, and return the points' results.

    ``cluster`` None: ``jobs`` at a time in this machine's kernels (one torch thread each when ``jobs`` > 1);
    else a Ray address ("auto" or "host:port"): every point is one Ray task (:func:`tdmpc_opt_lib.cluster.run_points`;
    run folders on a filesystem all nodes share). Either way a point trains under its claim, so two drivers of the
    same grid train it once. ``dry_run``: only the table of what would be submitted (points, status, resources).
    """
    from .. import cluster as ray_cluster

    if dry_run:
        return ray_cluster.plan([_planned(p, profile) for p in points])
    resolved = [(p, resolve("03_distill", profile, **p)) for p in points]
    todo = [(p, P) for p, P in resolved if load_result(run_dir(P)) is None]
    threads = 1 if jobs > 1 or cluster else None

    def args(item: tuple[dict, DistillParams]) -> tuple[str, str, dict]:
        p, P = item
        params = {**{k: (str(v) if isinstance(v, Path) else v) for k, v in p.items()}, "profile": profile,
                  "threads": threads, "summary": False}
        return str(notebook), str(run_dir(P) / "03_distill.ipynb"), params

    if todo and cluster:
        ray_cluster.run_points([(str(run_dir(P)), args((p, P))) for p, P in todo], execute_point, cluster,
                               device=getattr(todo[0][1], "device", None))
    elif todo:
        owner = ray_cluster.new_owner()

        def execute(item: tuple[dict, DistillParams]) -> None:
            ray_cluster.run_point(run_dir(item[1]), owner, lambda: execute_point(*args(item)))

        with _child_stderr_to(run_dir(todo[0][1]).parent / "kernels.log"), ThreadPoolExecutor(max(1, jobs)) as pool:
            list(pool.map(execute, todo))
    ran, rows = {run_dir(P).name for _, P in todo}, []
    for _, P in resolved:
        r = load_result(run_dir(P))
        rows.append({**{k: getattr(P, k) for k in ("d_coef", "distill", "steps", "batch_size", "model_size", "seed")},
                     "teacher": Path(P.teacher).name if P.d_coef > 0 else "-", "run": run_dir(P).name,
                     "cached": run_dir(P).name not in ran, "score": r["score"],
                     **{f"task:{t}": s for t, s in r["tasks"].items()}, "train_s": r["train_s"]})
    return pd.DataFrame(rows)


def _planned(point: dict[str, Any], profile: str) -> dict[str, Any]:
    """One row of a dry run: the point's run parameters and whether it is finished, to run, or lacks its inputs."""
    base = NOTEBOOK_PROFILES["03_distill"][profile_name(profile)]
    try:
        P = resolve("03_distill", profile, **point)
        status = "finished" if load_result(run_dir(P)) is not None else "to run"
        run = run_name(P)
    except ValueError as e:
        missing = re.findall(r"parameter '(\w+)'", str(e)) or [str(e)]
        P, status, run = replace(base, **{k: v for k, v in point.items() if v is not None}), f"missing {missing[0]}", None
    return {**{k: getattr(P, k) for k in ("d_coef", "distill", "steps", "batch_size", "model_size", "seed")},
            "teacher": Path(P.teacher).name if P.d_coef > 0 and isinstance(P.teacher, (str, Path)) else "-",
            "run": run, "status": status, "device": getattr(P, "device", None) or "cpu"}
