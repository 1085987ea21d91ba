"""Planner speed: ms per MPPI call for 1 and 16 environments, against the plain reference.

Prints, in one run: the machine's fp32 matmul GFLOP/s, the reference planner's ms/call, ours
(eager and compiled) for 1 and 16 environments, achieved GFLOP/s on the public FLOP count, and
the ratios. Uses the released size-1 MT30 student when ``../shared`` is present, else random weights.

    python benchmarks/bench_planner.py [--checkpoint PATH] [--repeats 10] [--no-compile]
"""
from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from tdmpc_opt_lib import fast
from tdmpc_opt_lib.checkpoints import load_checkpoint
from tdmpc_opt_lib.config import model_config
from tdmpc_opt_lib.planner import Planner, PlannerConfig, plan_reference, public_plan_macs
from tdmpc_opt_lib.world_model import WorldModel

DEFAULT_CKPT = Path(__file__).resolve().parents[2] / "shared" / "checkpoints" / "mt30_1M_steps_045dist_fp16.pt"


def matmul_gflops(n: int = 1024, repeats: int = 20) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    for _ in range(3):
        a @ b
    t = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * n ** 3 * repeats / (time.perf_counter() - t) / 1e9


def timed(fn, repeats: int) -> float:
    """Median seconds of ``fn()`` over ``repeats`` calls, after two warm-up calls."""
    fn(), fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", default=str(DEFAULT_CKPT))
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--no-compile", action="store_true")
    args = ap.parse_args()
    if Path(args.checkpoint).is_file():
        model, source = load_checkpoint(args.checkpoint), args.checkpoint
    else:
        model, source = WorldModel(model_config(1, "mt30")).eval(), "random size-1 MT30 weights"
    cfg = PlannerConfig()
    flop = 2 * public_plan_macs(model.cfg, cfg)
    peak = matmul_gflops()
    print(f"model: {source}\nthreads: {torch.get_num_threads()}  fp32 matmul: {peak:.0f} GFLOP/s")
    print(f"public FLOP count per planning call: {flop / 1e9:.2f} GFLOP  (floor at this matmul speed: "
          f"{flop / peak / 1e6:.0f} ms)")
    obs = torch.randn(16, model.cfg.obs_dim) * 0.5
    gen = torch.Generator().manual_seed(0)
    ref = timed(lambda: plan_reference(model, obs[0], 0, None, cfg, generator=gen), args.repeats)
    print(f"\n{'planner':<28}{'envs':>5}{'ms/call':>10}{'ms/env':>9}{'GFLOP/s':>9}{'vs ref':>8}")
    print(f"{'reference (plain)':<28}{1:>5}{ref * 1e3:>10.1f}{ref * 1e3:>9.1f}{flop / ref / 1e9:>9.0f}{1:>8.2f}")
    modes = [("ours, eager", False)] + ([] if args.no_compile else [("ours, torch.compile", True)])
    for name, compile_ in modes:
        for n in (1, 16):
            planner = Planner(fast.accelerate(model), cfg, seed=0, compile=compile_)
            task = torch.arange(n) % model.cfg.num_tasks
            with fast.cpu_runtime():
                sec = timed(lambda: planner.plan(obs[:n], task), max(3, args.repeats // (4 if n > 1 else 1)))
            per_env = sec / n
            print(f"{name:<28}{n:>5}{sec * 1e3:>10.1f}{per_env * 1e3:>9.1f}{flop / per_env / 1e9:>9.0f}"
                  f"{ref / per_env:>8.2f}")


if __name__ == "__main__":
    main()
