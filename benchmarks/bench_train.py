"""Training speed and memory: updates/s of the size-1 MT30 student at batch 256, without and with a
size-5 teacher (reward distillation), and peak RSS while training from a memory-mapped synthetic
dataset much larger than a batch (generated in a temporary folder, deleted afterwards).

    python benchmarks/bench_train.py [--transitions 20000000] [--rounds 5] [--block 10] [--threads N]

Models have random weights (speed does not depend on them). Batches come from the sampler, so
the figures include data loading; sampling alone is timed separately. Each configuration's matmul
FLOPs per update (torch's flop counter) and the floor they set at the machine's measured fp32 matmul
rate are printed next to the measured time: this VM's speed drifts by ±15 %, the ratio much less.
"""
from __future__ import annotations

import argparse
import dataclasses
import resource
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch

from bench_planner import matmul_gflops
from tdmpc_opt_lib import data, fast, training
from tdmpc_opt_lib.config import model_config
from tdmpc_opt_lib.world_model import WorldModel


def rss_mib() -> dict[str, float]:
    """Peak RSS of this process (VmHWM) and the current anonymous / file-backed (memory-mapped) parts."""
    status = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
    out = {k: int(status[k].split()[0]) / 1024 for k in ("VmHWM", "RssAnon", "RssFile") if k in status}
    out.setdefault("VmHWM", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    return out


def block_rates(learners: dict, sampler: data.WindowSampler, rounds: int, block: int, warmup: int = 5) -> dict:
    """Updates/s of each learner over ``rounds`` blocks of ``block`` updates, the learners taking turns
    block by block, so that all of them see the same state of a machine whose speed drifts."""
    with fast.cpu_runtime():
        for learner in learners.values():
            for _ in range(warmup):
                learner.update(**sampler.sample())
        rates: dict = {name: [] for name in learners}
        for _ in range(rounds):
            for name, learner in learners.items():
                t = time.perf_counter()
                for _ in range(block):
                    learner.update(**sampler.sample())
                rates[name].append(block / (time.perf_counter() - t))
    return rates


def update_gflop(learner: training.Learner, batch: dict) -> float:
    """Floating-point operations (matmuls, as torch's flop counter counts them) of one update."""
    from torch.utils.flop_counter import FlopCounterMode
    with FlopCounterMode(display=False) as counter, fast.cpu_runtime():
        learner.update(**batch)
    return counter.get_total_flops() / 1e9


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--transitions", type=int, default=20_000_000)
    ap.add_argument("--rounds", type=int, default=5, help="timed blocks per configuration")
    ap.add_argument("--block", type=int, default=10, help="updates per timed block")
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--tmp", default=None, help="folder for the synthetic dataset (default: system temp)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    peak = matmul_gflops()
    print(f"threads: {torch.get_num_threads()}  batch: {args.batch_size}  fp32 matmul: {peak:.0f} GFLOP/s")
    tmp = Path(tempfile.mkdtemp(prefix="bench_train_", dir=args.tmp))
    try:
        t = time.perf_counter()
        ds = data.Dataset.open(data.make_synthetic(tmp / "ds", args.transitions, "mt30", episode_length=500))
        disk = sum(f.stat().st_size for f in (tmp / "ds").iterdir()) / 2**20
        print(f"dataset: {ds.num_steps:,} steps, {disk:,.0f} MiB on disk, written in {time.perf_counter() - t:.0f} s")
        rss0 = rss_mib()
        sampler = data.WindowSampler(ds, horizon=3, batch_size=args.batch_size, seed=0)
        t = time.perf_counter()
        for _ in range(20):
            sampler.sample()
        print(f"sampling: {(time.perf_counter() - t) / 20 * 1e3:.2f} ms/batch")

        torch.manual_seed(0)
        cfg = training.UpdateConfig(batch_size=args.batch_size)
        configs = {"size-1 student, from scratch": (1, None),
                   "size-1 student + size-5 teacher (d 0.4)": (1, 5),
                   "size-5 model, from scratch (the teacher)": (5, None)}
        learners = {}
        for name, (size, teacher_size) in configs.items():
            for fused in (False, True):
                teacher = WorldModel(model_config(teacher_size, "mt30")) if teacher_size else None
                c = dataclasses.replace(cfg, d_coef=0.4) if teacher else cfg
                model = WorldModel(model_config(size, "mt30"))
                if fused:
                    model, teacher = fast.accelerate(model), teacher and fast.accelerate(teacher)
                learners[name, fused] = training.Learner(model, c, teacher=teacher)
        gflop = {name: update_gflop(learners[name, True], sampler.sample()) for name in configs}
        rates = block_rates(learners, sampler, args.rounds, args.block)
        end = matmul_gflops()
        print(f"fp32 matmul: {peak:.0f} GFLOP/s before the timed blocks, {end:.0f} after (the VM's drift); "
              f"floors below at their mean")
        peak = (peak + end) / 2
        print(f"updates/s over {args.rounds} blocks of {args.block} updates, configurations taking turns; "
              "median (best block); fused = fast.accelerate, the default")
        print(f"{'':<42}{'eager':>16}{'fused':>16}")
        for name in configs:
            cells = [f"{statistics.median(rates[name, f]):6.2f} ({max(rates[name, f]):5.2f})" for f in (False, True)]
            print(f"{name:<42}{cells[0]:>16}{cells[1]:>16}", flush=True)
        print(f"matmul work per update (GFLOP) and its floor at this machine's {peak:.0f} GFLOP/s; the fused median's rate:")
        for name in configs:
            ups = statistics.median(rates[name, True])
            print(f"  {name:<40}{gflop[name]:6.1f} GFLOP  floor {gflop[name] / peak * 1e3:5.1f} ms  "
                  f"measured {1e3 / ups:5.1f} ms  ({gflop[name] * ups:.0f} GFLOP/s)")
        ups = statistics.median(rates["size-1 student, from scratch", True])
        ups_t = statistics.median(rates["size-1 student + size-5 teacher (d 0.4)", True])
        print(f"the teacher's forward pass makes a size-1 update {ups / ups_t:.2f}x slower; public implementation "
              "on this machine: 6.4 (size 1) and 2.0 (size 5) updates/s")
        rss = rss_mib()
        print(f"RSS before training: anon {rss0['RssAnon']:.0f} MiB, file {rss0['RssFile']:.0f} MiB")
        print(f"RSS after training:  anon {rss['RssAnon']:.0f} MiB, file {rss['RssFile']:.0f} MiB; "
              f"peak {rss['VmHWM']:.0f} MiB (dataset {disk:,.0f} MiB)")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
