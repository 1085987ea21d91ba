"""Quantized students with MPPI on all MT30 tasks: size, score and latency per scheme, resumable.

For each scheme: write the variant (``quantize.write_variant``; ``--variant NAME=PATH`` evaluates a given
file instead, e.g. the paper's released int8/mixed files), evaluate it with the CLI in ``--procs``
single-thread processes over contiguous task groups (a group whose CSV exists is skipped, so a killed run
resumes), then merge per-episode CSVs and print/write the summary: sizes (full / deployable), normalized
score, gap to fp16 (with its standard error over tasks; fp16's episodes of the same seed may come from an
earlier run in ``--out``), planning latency per action (compiled planner, one environment). Rows of schemes
not re-run stay in the seed's summary.

    python benchmarks/quantized_mpc.py [--checkpoint PATH] [--schemes fp16,int8,paper-mixed,paper-int8]
        [--episodes 2] [--seed 0] [--procs 2] [--variant paper-int8=PATH ...] [--work DIR] [--out DIR]
    python benchmarks/quantized_mpc.py --schemes int8 --pool 0,1     # episodes of several seeds, pooled

Wall time on the project's 2-core machine: ~45 min per scheme (30 tasks x 2 episodes x 500 MPPI steps).
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from tdmpc_opt_lib import quantize
from tdmpc_opt_lib.checkpoints import load_checkpoint
from tdmpc_opt_lib.evaluation import normalized_score

ROOT = Path(__file__).resolve().parents[1]
RELEASED = ROOT.parent / "shared" / "checkpoints" / "mt30_1M_steps_045dist_fp16.pt"


def evaluate_groups(scheme: str, file: Path, tasks: list[str], args: argparse.Namespace) -> pd.DataFrame:
    """Run (or resume) the CLI evaluation of ``file`` in ``args.procs`` processes; merged per-episode rows."""
    groups = [list(g) for g in np.array_split(np.array(tasks), args.procs)]
    parts = [args.work / f"{scheme}_mpc_seed{args.seed}_{chr(97 + i)}.csv" for i in range(len(groups))]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, "-m", "tdmpc_opt_lib", "evaluate", "--checkpoint", str(file),
                               "--tasks", ",".join(g), "--task-set", ",".join(tasks), "--episodes", str(args.episodes), "--seed", str(args.seed),
                               "--out", str(p)], env=env, stdout=subprocess.DEVNULL,
                              stderr=open(p.with_suffix(".log"), "w"))
             for g, p in zip(groups, parts) if not p.is_file()]
    if any(p.wait() for p in procs):
        raise RuntimeError(f"{scheme}: an evaluation process failed; see {args.work}/*.log")
    return pd.concat([pd.read_csv(p) for p in parts], ignore_index=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", type=Path, default=RELEASED, help="float/fp16 student to quantize")
    ap.add_argument("--schemes", default="fp16,int8,paper-mixed,paper-int8")
    ap.add_argument("--episodes", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--procs", type=int, default=2)
    ap.add_argument("--variant", action="append", default=[], help="NAME=PATH: evaluate this file for scheme NAME")
    ap.add_argument("--work", type=Path, default=ROOT / "reports" / "results" / "quantized" / "mpc")
    ap.add_argument("--out", type=Path, default=ROOT / "reports" / "runs")
    ap.add_argument("--pool", default=None, help="SEEDS (e.g. 0,1): only print the pooled table of runs already in --out")
    args = ap.parse_args()
    schemes = args.schemes.split(",")
    if args.pool:
        table = quantize.pooled_runs(args.out, [s for s in schemes if s != "fp16"], [int(x) for x in args.pool.split(",")])
        print(table.round(2).to_string(index=False))
        return
    if unknown := [s for s in schemes if s not in quantize.SCHEMES]:
        ap.error(f"unknown schemes {unknown}; known: {', '.join(quantize.SCHEMES)}")
    given = dict(v.split("=", 1) for v in args.variant)
    args.work.mkdir(parents=True, exist_ok=True)
    model = load_checkpoint(args.checkpoint)
    tasks = list(model.cfg.tasks.tasks)
    rows = []
    for scheme in schemes:
        row = quantize.write_variant(model, scheme, args.work / f"{scheme}.pt")
        file = Path(given.get(scheme, row["full_path"]))
        df = evaluate_groups(scheme, file, tasks, args)
        df.to_csv(args.out / f"released_{scheme}_mpc_seed{args.seed}.csv", index=False)
        loaded = load_checkpoint(file, task_set=",".join(tasks))
        rows.append({"scheme": scheme, "file": file.name, "full_mib": row["full_mib"],
                     "deployable_mib": row["deployable_mib"], "score": normalized_score(df),
                     "plan_ms": quantize.planning_latency_ms(loaded, steps=10, compile=True)})
        print(f"{scheme:<12} {rows[-1]['score']:6.2f}  ({file.name})", flush=True)
    table = pd.DataFrame(rows)
    table.insert(1, "protocol", f"MPPI, {len(tasks)} tasks x {args.episodes} episodes, seed {args.seed}")
    out = args.out / f"quantization_released_mpc_seed{args.seed}.csv"   # read by quantize.recorded_table
    if out.is_file():  # schemes evaluated earlier at this seed keep their rows; re-run ones are replaced
        earlier = pd.read_csv(out)
        table = pd.concat([earlier[~earlier.scheme.isin(table.scheme)], table], ignore_index=True)
    episodes = [args.out / f"released_{s}_mpc_seed{args.seed}.csv" for s in table.scheme]
    fp16_file = args.out / f"released_fp16_mpc_seed{args.seed}.csv"
    if fp16_file.is_file():
        fp16 = pd.read_csv(fp16_file)
        paired = [quantize.paired_difference(pd.read_csv(f), fp16) if f.is_file() else (np.nan, np.nan) for f in episodes]
        table["vs_fp16"], table["vs_fp16_se"] = zip(*paired)
    table.round(4).to_csv(out, index=False)
    print(table.round(2).to_string(index=False), f"\nwrote {out}", sep="\n")


if __name__ == "__main__":
    main()
