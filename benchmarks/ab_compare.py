"""This checkout against another revision, in one process, taking turns: training updates and planning calls.

    rev=HEAD~1; dir=$(mktemp -d); git archive $rev tdmpc_opt_lib | tar -x -C $dir && mv $dir/tdmpc_opt_lib $dir/base
    python benchmarks/ab_compare.py --base $dir [--rounds 8]

The other revision's package is imported as ``base`` (a renamed copy). Timed blocks alternate between the two
so that both see the same state of a machine whose speed drifts; the ratio of the medians is the result.
Covered: the size-1 student's update at batch 256 (alone and with a size-5 teacher, reward distillation), the
accelerated planner (compiled) for 1 and 16 environments, and this checkout's planner on an int8-dynamic model.
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import importlib
import statistics
import sys
import time
from pathlib import Path

import torch

from tdmpc_opt_lib import fast, training
from tdmpc_opt_lib.checkpoints import load_checkpoint
from tdmpc_opt_lib.config import model_config
from tdmpc_opt_lib.planner import Planner, PlannerConfig
from tdmpc_opt_lib.quantize import to_int8_dynamic
from tdmpc_opt_lib.world_model import WorldModel

CKPT = Path(__file__).resolve().parents[2] / "shared" / "checkpoints" / "mt30_1M_steps_045dist_fp16.pt"


def base_learner(base, size: int, teacher_size: int | None, batch: int):
    """A learner of the other revision (its own API: ``Learner(..., compile=True)`` or ``fast.accelerate``)."""
    tr, wm, cfgm = base.training, base.world_model, base.config
    cfg = tr.UpdateConfig(batch_size=batch, d_coef=0.4 if teacher_size else 0.0)
    model = wm.WorldModel(cfgm.model_config(size, "mt30"))
    teacher = wm.WorldModel(cfgm.model_config(teacher_size, "mt30")) if teacher_size else None
    if hasattr(base, "fast"):
        model, teacher = base.fast.accelerate(model), teacher and base.fast.accelerate(teacher)
        return tr.Learner(model, cfg, teacher=teacher), base.fast.cpu_runtime
    return tr.Learner(model, cfg, teacher=teacher, compile=True), None


def new_learner(size: int, teacher_size: int | None, batch: int):
    cfg = training.UpdateConfig(batch_size=batch, d_coef=0.4 if teacher_size else 0.0)
    teacher = fast.accelerate(WorldModel(model_config(teacher_size, "mt30"))) if teacher_size else None
    return training.Learner(fast.accelerate(WorldModel(model_config(size, "mt30"))), cfg, teacher=teacher), fast.cpu_runtime


def batch_for(cfg, B: int, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    return dict(obs=torch.randn(4, B, cfg.obs_dim, generator=g), action=torch.rand(3, B, cfg.action_dim, generator=g) * 2 - 1,
                reward=torch.rand(3, B, 1, generator=g), task=torch.randint(0, cfg.num_tasks, (B,), generator=g))


def alternate(fns: dict, rounds: int, block: int) -> dict[str, list[float]]:
    """Seconds per call of each fn, median of ``block`` calls per turn, the fns taking turns ``rounds`` times."""
    for fn in fns.values():
        fn(), fn(), fn()
    out: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(rounds):
        for k, fn in fns.items():
            t = time.perf_counter()
            for _ in range(block):
                fn()
            out[k].append((time.perf_counter() - t) / block)
    return out


def runner(obj, call, context):
    def fn():
        if context is None:
            return call(obj)
        with context():
            return call(obj)
    return fn


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", required=True, help="folder holding the other revision's package renamed to `base`")
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--block", type=int, default=5)
    ap.add_argument("--batch-size", type=int, default=256)
    args = ap.parse_args()
    sys.path.insert(0, args.base)
    base = importlib.import_module("base")
    for mod in ("training", "world_model", "config", "planner", "checkpoints"):
        setattr(base, mod, importlib.import_module(f"base.{mod}"))
    try:
        setattr(base, "fast", importlib.import_module("base.fast"))
    except ImportError:
        pass
    print(f"threads: {torch.get_num_threads()}; base: {args.base}; rounds {args.rounds} x block {args.block}")

    rows = []
    for label, teacher in (("update, size-1 student", None), ("update, size-1 + size-5 teacher", 5)):
        (lb, cb), (ln, cn) = base_learner(base, 1, teacher, args.batch_size), new_learner(1, teacher, args.batch_size)
        b = batch_for(ln.model.cfg, args.batch_size)
        t = alternate({"base": runner(lb, lambda l: l.update(**b), cb), "new": runner(ln, lambda l: l.update(**b), cn)},
                      args.rounds, args.block)
        rows.append((label, t))

    model = load_checkpoint(CKPT) if CKPT.is_file() else WorldModel(model_config(1, "mt30")).eval()
    bmodel = base.checkpoints.load_checkpoint(CKPT) if CKPT.is_file() else None
    if bmodel is None:
        bmodel = base.world_model.WorldModel(base.config.model_config(1, "mt30")).eval()
        bmodel.load_state_dict(model.state_dict())
    cfg = PlannerConfig()
    obs = torch.randn(16, model.cfg.obs_dim) * 0.5
    int8 = to_int8_dynamic(copy.deepcopy(model))
    for n in (1, 16):
        task = torch.arange(n) % model.cfg.num_tasks
        bcfg = base.planner.PlannerConfig(**dataclasses.asdict(cfg))
        bm = base.fast.accelerate(bmodel) if hasattr(base, "fast") else bmodel
        bp = base.planner.Planner(bm, bcfg, seed=0, compile=True)
        npl = Planner(fast.accelerate(model), cfg, seed=0, compile=True)
        fns = {"base": runner(bp, lambda p: p.plan(obs[:n], task), base.fast.cpu_runtime if hasattr(base, "fast") else None),
               "new": runner(npl, lambda p: p.plan(obs[:n], task), fast.cpu_runtime)}
        rounds = args.rounds if n == 1 else max(3, args.rounds // 2)
        rows.append((f"planning call, {n} env(s)", alternate(fns, rounds, max(1, args.block // (4 if n > 1 else 1)))))
    for n in (1,):
        task = torch.arange(n) % model.cfg.num_tasks
        fns = {"fp32": runner(Planner(fast.accelerate(model), cfg, seed=0, compile=True), lambda p: p.plan(obs[:n], task),
                              fast.cpu_runtime),
               "int8-dynamic": runner(Planner(int8, cfg, seed=0), lambda p: p.plan(obs[:n], task), fast.cpu_runtime)}
        rows.append((f"planning call, {n} env, this checkout", alternate(fns, max(3, args.rounds // 2), 1)))

    print(f"\n{'':<40}{'A ms':>10}{'B ms':>10}{'B/A speed':>11}   (median over turns; A, B as named)")
    for label, t in rows:
        (ka, va), (kb, vb) = t.items()
        a, b = statistics.median(va) * 1e3, statistics.median(vb) * 1e3
        paired = statistics.median(x / y for x, y in zip(va, vb))
        print(f"{label:<40}{a:>10.1f}{b:>10.1f}{paired:>11.3f}   A={ka}, B={kb}")


if __name__ == "__main__":
    main()
