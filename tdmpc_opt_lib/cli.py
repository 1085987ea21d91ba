"""Command line: ``python -m tdmpc_opt_lib <command> ...``."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .checkpoints import CheckpointError


def _evaluate(args: argparse.Namespace) -> None:
    from .evaluation import evaluate, normalized_score, task_table
    from .planner import PlannerConfig
    from .quantize import load_model

    model = load_model(args.checkpoint, task_set=args.task_set, model_size=args.model_size)
    df = evaluate(model, args.tasks, args.episodes, args.seed, mpc=not args.no_mpc,
                  planner_cfg=PlannerConfig(num_samples=args.samples, iterations=args.iterations),
                  batch_envs=args.batch_envs, compile=not args.no_compile)
    print(task_table(df).to_string())
    mode = "policy prior (no MPC)" if args.no_mpc else "MPPI"
    print(f"\nnormalized score: {normalized_score(df):.2f}  ({len(df)} episodes, {df.task.nunique()} tasks, "
          f"seed {args.seed}, {mode}, {df.attrs['wall_s']:.0f} s)")
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        df.to_csv(out, index=False)
        print(f"wrote {out}")


def _add_mt_mini(sub: argparse._SubParsersAction) -> None:
    from .study.mtmini import STAGES

    p = sub.add_parser("mt-mini", help="regenerate the MT-mini dataset and teacher from scratch (resumable)")
    p.add_argument("--stage", choices=STAGES, default="all")
    p.add_argument("--out", default="data/mt-mini", help="published artifacts (committed)")
    p.add_argument("--work", default="build/mt-mini", help="resumable work folder (not committed)")
    p.add_argument("--jobs", type=int, default=1, help="tasks generated in parallel, one torch thread each")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=_mt_mini)


def _mt_mini(args: argparse.Namespace) -> None:
    import time

    from .study.mtmini import build

    t0 = time.perf_counter()
    summary = build(args.out, args.work, args.stage, jobs=args.jobs, progress=not args.no_progress)
    print(f"mt-mini {args.stage}: {time.perf_counter() - t0:.0f} s in this call; "
          f"{summary['bytes']['total'] / 2**20:.1f} MiB in {args.out}; see {Path(args.out) / 'README.md'}")


def _add_report(sub: argparse._SubParsersAction) -> None:
    from .study.params import PROFILES, REPO

    p = sub.add_parser("report", help="execute the notebooks with papermill and write the HTML report")
    p.add_argument("--profile", choices=PROFILES, default=None, help="default: $TDMPC_OPT_PROFILE or 'default'")
    p.add_argument("--only", default=None, help="comma list of notebook names (e.g. 01_teacher)")
    p.add_argument("--out", default=str(REPO / "reports"))
    p.set_defaults(func=_report)


def _report(args: argparse.Namespace) -> None:
    from .study.report import build

    build(args.profile, args.only.split(",") if args.only else None, args.out)


def _add_strip_notebooks(sub: argparse._SubParsersAction) -> None:
    from .study.params import REPO
    from .study.report import CHECK_MARK, CHECKED_OUTPUTS

    p = sub.add_parser("strip-notebooks", help="strip notebook outputs before committing")
    p.add_argument("--record", action="store_true", help="also execute them at the smoke profile and record the "
                   f"outputs of their '{CHECK_MARK}' cells in {CHECKED_OUTPUTS.relative_to(REPO)}")
    p.set_defaults(func=_strip_notebooks)


def _strip_notebooks(args: argparse.Namespace) -> None:
    from .study.report import strip_notebooks

    strip_notebooks(record=args.record)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m tdmpc_opt_lib", description=__doc__)
    sub = ap.add_subparsers(dest="command", required=True)
    ev = sub.add_parser("evaluate", help="evaluate a checkpoint on MT30 tasks (TD-MPC2 protocol)")
    ev.add_argument("--checkpoint", required=True, help="public TD-MPC2 / TD-MPC-Opt checkpoint, one of ours, "
                    "a quantized file of ours or a safetensors export folder")
    ev.add_argument("--tasks", default=None, help="'mt30' (all tasks of the model) or a comma list of task names")
    ev.add_argument("--task-set", default=None, help="task set of a public checkpoint (default mt30)")
    ev.add_argument("--model-size", type=int, default=None, help="expected model size (checked)")
    ev.add_argument("--episodes", type=int, default=2)
    ev.add_argument("--seed", type=int, default=0)
    ev.add_argument("--no-mpc", action="store_true", help="act with the policy prior's mean, no planning")
    ev.add_argument("--samples", type=int, default=512, help="MPPI samples")
    ev.add_argument("--iterations", type=int, default=6, help="MPPI iterations")
    ev.add_argument("--batch-envs", type=int, default=64, help="episodes planned together in lock-step")
    ev.add_argument("--no-compile", action="store_true", help="plan without torch.compile")
    ev.add_argument("--out", default=None, help="CSV of per-episode results")
    ev.set_defaults(func=_evaluate)
    from . import quantize; quantize.register_cli(sub)
    from . import training; training.register_cli(sub)
    _add_mt_mini(sub)
    _add_report(sub)
    _add_strip_notebooks(sub)
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except (CheckpointError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0
