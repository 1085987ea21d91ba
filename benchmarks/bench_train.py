"""Training speed and memory: updates/s of the size-1 MT30 student at batch 256, without and with a
size-5 teacher (reward distillation), and peak RSS while training from a memory-mapped synthetic
dataset much larger than a batch (generated in a temporary folder, deleted afterwards).

    python benchmarks/bench_train.py [--transitions 20000000] [--updates 50] [--threads N]

Models have random weights (speed does not depend on them). Batches come from the sampler, so
the figures include data loading; sampling alone is timed separately.
"""
from __future__ import annotations

import argparse
import dataclasses
import resource
import shutil
import tempfile
import time
from pathlib import Path

import torch

from tdmpc_opt_lib import data, training
from tdmpc_opt_lib.config import model_config
from tdmpc_opt_lib.world_model import WorldModel


def rss_mib() -> dict[str, float]:
    """Peak RSS of this process (VmHWM) and the current anonymous / file-backed (memory-mapped) parts."""
    status = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
    out = {k: int(status[k].split()[0]) / 1024 for k in ("VmHWM", "RssAnon", "RssFile") if k in status}
    out.setdefault("VmHWM", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    return out


def updates_per_s(learner: training.Learner, sampler: data.WindowSampler, n: int, warmup: int = 5) -> float:
    for _ in range(warmup):
        learner.update(**sampler.sample())
    t = time.perf_counter()
    for _ in range(n):
        learner.update(**sampler.sample())
    return n / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--transitions", type=int, default=20_000_000)
    ap.add_argument("--updates", type=int, default=50)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--tmp", default=None, help="folder for the synthetic dataset (default: system temp)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"threads: {torch.get_num_threads()}  batch: {args.batch_size}  timed updates: {args.updates}")
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
        print(f"{'':<42}{'eager':>8}{'fused':>8}  (updates/s; fused = WorldModel.fuse_kernels, the default)")
        rows = {}
        for name, size, teacher_size in (("size-1 student, from scratch", 1, None),
                                         ("size-1 student + size-5 teacher (d 0.4)", 1, 5),
                                         ("size-5 model, from scratch (the teacher)", 5, None)):
            rates = []
            for fused in (False, True):
                teacher = WorldModel(model_config(teacher_size, "mt30")) if teacher_size else None
                c = dataclasses.replace(cfg, d_coef=0.4) if teacher else cfg
                learner = training.Learner(WorldModel(model_config(size, "mt30")), c, teacher=teacher, compile=fused)
                rates.append(updates_per_s(learner, sampler, args.updates))
            rows[name] = rates
            print(f"{name:<42}{rates[0]:8.2f}{rates[1]:8.2f}", flush=True)
        ups, ups_t = rows["size-1 student, from scratch"][1], rows["size-1 student + size-5 teacher (d 0.4)"][1]
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
