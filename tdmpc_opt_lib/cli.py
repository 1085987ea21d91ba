"""Command line: ``python -m tdmpc_opt_lib <command> ...``."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .checkpoints import CheckpointError, load_checkpoint


def _evaluate(args: argparse.Namespace) -> None:
    from .evaluation import evaluate, normalized_score, task_table
    from .planner import PlannerConfig

    model = load_checkpoint(args.checkpoint, task_set=args.task_set, model_size=args.model_size)
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


def _quantize(args: argparse.Namespace) -> None:
    from .quantize import OUR_SCHEMES, MiB, export_safetensors, mixed_plan, resolve_defaults, write_variant

    if args.export_safetensors and args.scheme not in OUR_SCHEMES:
        raise ValueError(f"--export-safetensors needs a scheme of this library ({', '.join(OUR_SCHEMES)}): "
                         "the paper recipes store torch quantized tensors, which safetensors cannot hold")
    model = load_checkpoint(args.checkpoint, task_set=args.task_set)
    fp16_layers = None
    if args.scheme == "mixed":
        fp16_layers, sens = mixed_plan(model, args.budget_mib)
        print(sens[["layer", "params", "score", "fp16"]].to_string(index=False))
    fp16_layers, hessians = resolve_defaults(model, args.scheme, fp16_layers, None,
                                             {} if args.rounding == "nearest" else None)
    row = write_variant(model, args.scheme, args.out, fp16_layers, hessians=hessians)
    for kind in ("full", "deployable"):
        print(f"{args.scheme} {kind:<10} {row[f'{kind}_mib']:7.3f} MiB on disk, "
              f"{row[f'{kind}_tensor_mib']:7.3f} MiB of tensors -> {row[f'{kind}_path']}")
    if args.export_safetensors:
        out = export_safetensors(model, args.scheme, args.export_safetensors, fp16_layers, hessians=hessians)
        size = sum(f.stat().st_size for f in out.iterdir()) / MiB
        print(f"safetensors export {size:7.3f} MiB on disk -> {out}")


def _add_quantize(sub: argparse._SubParsersAction) -> None:
    from .quantize import MIXED_BUDGET_RATIO, SCHEMES

    p = sub.add_parser("quantize", help="write a quantized checkpoint (paper recipes or post-training quantization)")
    p.add_argument("--checkpoint", required=True, help="float or released checkpoint (anything load_checkpoint reads)")
    p.add_argument("--scheme", required=True, choices=SCHEMES)
    p.add_argument("--out", required=True, help="full file; the deployable one (no target Qs) is written as <stem>-deploy<suffix>")
    p.add_argument("--export-safetensors", default=None, metavar="DIR", help="also write a safetensors inference export")
    p.add_argument("--budget-mib", type=float, default=None, help="mixed: tensor-size budget of the full file "
                   f"(default {MIXED_BUDGET_RATIO:.3f} x the fp16 size)")
    p.add_argument("--rounding", choices=("gptq", "nearest"), default="gptq",
                   help="int8 schemes: GPTQ on calibration rollouts in the model's environments (default), "
                   "or round to nearest (no environments needed)")
    p.add_argument("--task-set", default=None, help="task set of a public checkpoint (default mt30)")
    p.set_defaults(func=_quantize)


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
    _add_quantize(sub)
    from . import training; training.register_cli(sub)
    from . import mtmini; mtmini.register_cli(sub)
    from . import report; report.register_cli(sub)
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except (CheckpointError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0
