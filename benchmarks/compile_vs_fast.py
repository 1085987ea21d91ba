"""The speed layer against ``torch.compile`` of the plain code, in one process, taking turns.

    python benchmarks/compile_vs_fast.py [--rounds 6] [--block 5] [--skip-planner]

Training: one size-1 update at batch 256 (random weights and batch) with
  plain          the plain model, eager;
  plain+compile  the plain model with ``torch.compile`` of the whole update (TD-MPC2's way on GPU);
  fast           ``fast.accelerate``: task embedding folded, C kernels for LayerNorm+activation;
  fast, no C     the same with the C kernels off (their ``torch.compile``'d fallback).
Planning (released size-1 student when ``../shared`` is present): the compiled planner on the plain and on the
accelerated model, 1 environment. Every configuration runs inside ``fast.cpu_runtime()``. Compiling takes
minutes on two cores; the timed blocks start after it.
"""
from __future__ import annotations

import argparse
import copy
import statistics
import time
from pathlib import Path

import torch

from ab_compare import alternate, batch_for
from tdmpc_opt_lib import fast, training
from tdmpc_opt_lib.checkpoints import load_checkpoint
from tdmpc_opt_lib.config import model_config
from tdmpc_opt_lib.fast import kernels
from tdmpc_opt_lib.planner import Planner, PlannerConfig
from tdmpc_opt_lib.world_model import WorldModel

CKPT = Path(__file__).resolve().parents[2] / "shared" / "checkpoints" / "mt30_1M_steps_045dist_fp16.pt"


class NoCKernels:
    """Meanwhile the C kernels are off (the fused tails use their compiled fallback)."""

    def __enter__(self):
        self.lib = kernels._lib
        kernels._lib = False

    def __exit__(self, *exc):
        kernels._lib = self.lib


def report(title: str, times: dict[str, list[float]], ref: str) -> None:
    print(f"\n{title}: ms per call, median over turns (best); speed relative to {ref!r}, paired median")
    for k, v in times.items():
        rel = statistics.median(a / b for a, b in zip(times[ref], v))
        print(f"  {k:<16}{statistics.median(v) * 1e3:9.1f} ({min(v) * 1e3:7.1f}){rel:9.3f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--block", type=int, default=5)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--skip-planner", action="store_true")
    args = ap.parse_args()
    print(f"threads: {torch.get_num_threads()}  torch {torch.__version__}")
    torch.manual_seed(0)
    base = WorldModel(model_config(1, "mt30"))
    cfg = training.UpdateConfig(batch_size=args.batch_size)
    b = batch_for(base.cfg, args.batch_size)
    learners = {"plain": training.Learner(copy.deepcopy(base), cfg),
                "plain+compile": training.Learner(copy.deepcopy(base), cfg),
                "fast": training.Learner(fast.accelerate(copy.deepcopy(base)), cfg),
                "fast, no C": training.Learner(fast.accelerate(copy.deepcopy(base)), cfg)}
    compiled = torch.compile(learners["plain+compile"].update)
    calls = {"plain": lambda: learners["plain"].update(**b), "plain+compile": lambda: compiled(**b),
             "fast": lambda: learners["fast"].update(**b)}

    def no_c():
        with NoCKernels():
            learners["fast, no C"].update(**b)
    calls["fast, no C"] = no_c
    with fast.cpu_runtime():
        for k, fn in calls.items():
            t = time.perf_counter()
            fn()
            print(f"first call {k}: {time.perf_counter() - t:.0f} s", flush=True)
        report("training update, size 1, batch %d" % args.batch_size, alternate(calls, args.rounds, args.block), "plain")

    if args.skip_planner:
        return
    model = load_checkpoint(CKPT) if CKPT.is_file() else base.eval()
    obs, task = torch.randn(1, model.cfg.obs_dim) * 0.5, torch.tensor([0])
    planners = {"plain+compile": Planner(model, PlannerConfig(), seed=0, compile=True),
                "fast+compile": Planner(fast.accelerate(model), PlannerConfig(), seed=0, compile=True)}
    pcalls = {k: (lambda p=p: p.plan(obs, task)) for k, p in planners.items()}
    with fast.cpu_runtime():
        report("planning call, 1 environment", alternate(pcalls, args.rounds, 2), "plain+compile")


if __name__ == "__main__":
    main()
