"""Command line: ``python -m tdmpc_opt_lib <command> ...``."""
from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import sys
import textwrap
import typing
from pathlib import Path

from .checkpoints import CheckpointError, load_checkpoint
from .device import AUTO, resolve_device


def _evaluate(args: argparse.Namespace) -> None:
    from .evaluation import evaluate, normalized_score, task_table
    from .planner import PlannerConfig

    model = load_checkpoint(args.checkpoint, task_set=args.task_set, model_size=args.model_size,
                            device=resolve_device(args.device))
    # finished batches, for a restart (a cluster retries its batches itself)
    progress = Path(f"{args.out}.part.json") if args.out and not args.cluster else None
    df = evaluate(model, args.tasks, args.episodes, args.seed, mpc=not args.no_mpc,
                  planner_cfg=PlannerConfig(num_samples=args.samples, iterations=args.iterations),
                  batch_envs=args.batch_envs, compile=not args.no_compile, resume=progress, cluster=args.cluster,
                  workers=args.workers)
    print(task_table(df).to_string())
    mode = "policy prior (no MPC)" if args.no_mpc else "MPPI"
    print(f"\nnormalized score: {normalized_score(df):.2f}  ({len(df)} episodes, {df.task.nunique()} tasks, "
          f"seed {args.seed}, {mode}, {df.attrs['wall_s']:.0f} s)")
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        df.to_csv(out, index=False)
        if progress is not None:
            progress.unlink(missing_ok=True)
        print(f"wrote {out}")


# ------------------------------------------------------------------------------------------ train
def _parse_override(s: str) -> tuple[str, int | float]:
    k, _, v = s.partition("=")
    if not v:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {s!r}")
    return k.replace("-", "_"), float(v) if "." in v or "e" in v else int(v)


def _train(args: argparse.Namespace) -> None:
    from .training import TrainConfig, train
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    kwargs = {k: v for k, v in vars(args).items() if k in fields and v is not None}
    kwargs["model_overrides"] = dict(args.override or [])
    if args.tasks:
        kwargs["tasks"] = [t.strip() for t in args.tasks.split(",")]
    if args.model_size == 0:
        kwargs["model_size"] = None
    train(TrainConfig(**kwargs), progress=not args.no_progress)
    print(f"done: {Path(args.out) / 'model.pt'}, metrics in {Path(args.out) / 'metrics.csv'}")


def _add_train(sub: argparse._SubParsersAction) -> None:
    from .training import TrainConfig
    p = sub.add_parser("train", help="offline multi-task training / TD-MPC-Opt distillation on a dataset folder")
    dataclass_arguments(p, TrainConfig, special={"model_overrides", "tasks", "model_size"})
    p.add_argument("--model-size", type=int, default=1, help=field_docs(TrainConfig)["model_size"])
    p.add_argument("--override", action="append", type=_parse_override, metavar="KEY=VALUE",
                   help=field_docs(TrainConfig)["model_overrides"])
    p.add_argument("--tasks", default=None, help=field_docs(TrainConfig)["tasks"])
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=_train)


def field_docs(cls: type) -> dict[str, str]:
    """The docstring under each field of the dataclass ``cls`` and its bases, by field name."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__[:-1]):
        try:
            body = ast.parse(textwrap.dedent(inspect.getsource(klass))).body[0].body
        except (OSError, TypeError, IndexError):
            continue
        for stmt, nxt in zip(body, body[1:]):
            if isinstance(stmt, ast.AnnAssign) and isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant):
                docs[stmt.target.id] = " ".join(str(nxt.value.value).split())
    return docs


def dataclass_arguments(parser: argparse.ArgumentParser, cls: type, special: set[str] = frozenset()) -> None:
    """One option per field of ``cls`` (``--field-name``; booleans as switches), its docstring as the help;
    fields without a default are required, those in ``special`` are left to the caller."""
    docs, hints = field_docs(cls), typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name in special:
            continue
        flag, doc = "--" + f.name.replace("_", "-"), docs.get(f.name, "")
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else None)
        kind = hints[f.name]
        base = next((t for t in getattr(kind, "__args__", (kind,)) if t is not type(None)), str)   # int | None: int
        if base is bool:
            parser.add_argument(flag if not default else "--no-" + f.name.replace("_", "-"), dest=f.name,
                                action="store_false" if default else "store_true", help=doc)
        elif default is None and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            parser.add_argument(flag, type=base, required=True, help=doc)
        else:
            parser.add_argument(flag, type=base, default=default, help=f"{doc} (default: {default})")


# ----------------------------------------------------------------------------------- convert-data
def _convert_data(args: argparse.Namespace) -> None:
    from .data import convert_public
    tasks = [t.strip() for t in args.tasks.split(",")] if args.tasks else None
    print(convert_public(args.chunks, args.out, tasks=tasks, trust=args.trust))


def _check_data(args: argparse.Namespace) -> None:
    from .data import Dataset
    ds = Dataset.open(args.dataset, full_check=True)
    print(f"{args.dataset}: valid ({ds.summary()})")


def _add_convert_data(sub: argparse._SubParsersAction) -> None:
    c = sub.add_parser("convert-data", help="convert public TD-MPC2 chunk_*.pt files (pickles!) to the safe format")
    c.add_argument("chunks", nargs="+", help="chunk_*.pt files, in order (needs `pip install tensordict`)")
    c.add_argument("--out", required=True)
    c.add_argument("--tasks", default=None, help="comma list naming the task ids (default: the MT30 list)")
    c.add_argument("--trust", action="store_true",
                   help="confirm the chunks come from a trusted source (they are pickles)")
    c.set_defaults(func=_convert_data)
    d = sub.add_parser("check-data", help="check a dataset folder fully (shapes, episodes, task ids, every value "
                       "finite)")
    d.add_argument("dataset")
    d.set_defaults(func=_check_data)


# --------------------------------------------------------------------------------------- quantize
def _quantize(args: argparse.Namespace) -> None:
    from .quantize import OUR_SCHEMES, MiB, export_safetensors, mixed_plan, resolve_defaults, write_variant

    if args.export_safetensors and args.scheme not in OUR_SCHEMES:
        raise ValueError(f"--export-safetensors needs a scheme of this library ({', '.join(OUR_SCHEMES)}): "
                         "the paper recipes store torch quantized tensors, which safetensors cannot hold")
    model = load_checkpoint(args.checkpoint, task_set=args.task_set)
    device = resolve_device(args.device)
    fp16_layers = None
    if args.scheme == "mixed":
        fp16_layers, sens = mixed_plan(model, args.budget_mib)
        print(sens[["layer", "params", "score", "fp16"]].to_string(index=False))
    # calibration rollouts and Hessians on the device; the files are written from the CPU model
    fp16_layers, hessians = resolve_defaults(model.to(device), args.scheme, fp16_layers, None,
                                             {} if args.rounding == "nearest" else None)
    model.cpu()
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
    add_device_argument(p)
    p.set_defaults(func=_quantize)


# ------------------------------------------------------------------------- report machinery (study/)
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
    p.add_argument("--check", action="store_true", help="only list the profile's missing input files, each with the "
                   "command that provides it (exit status 2 when any is missing)")
    add_device_argument(p)
    p.set_defaults(func=_report)


def _report(args: argparse.Namespace) -> None:
    from .study.inputs import check_report, missing_inputs
    from .study.report import build

    missing = missing_inputs(args.profile)
    if args.check or not missing.empty:
        print(check_report(args.profile))
        if not missing.empty:
            raise ValueError("inputs missing; nothing was run")
        return
    build(args.profile, args.only.split(",") if args.only else None, args.out, device=args.device)


def _add_grid(sub: argparse._SubParsersAction) -> None:
    from .study.params import PROFILES

    p = sub.add_parser("grid", help="train the 04_ablations grid (no report page), here or on a Ray cluster")
    p.add_argument("--profile", choices=PROFILES, default=None, help="default: $TDMPC_OPT_PROFILE or 'default'")
    p.add_argument("--cluster", default=None, help="'auto' or 'host:port' of a Ray cluster (default: this machine)")
    p.add_argument("--jobs", type=int, default=None, help="runs side by side on this machine")
    p.add_argument("--out-dir", default=None, help="results folder (runs are cached in its runs/ folder)")
    p.add_argument("--dry-run", action="store_true", help="only list the runs and the resources each would ask for")
    p.set_defaults(func=_grid)


def _grid(args: argparse.Namespace) -> None:
    from .study import ablations, experiments, params

    given = {"cluster": args.cluster, "jobs": args.jobs, "out_dir": args.out_dir}
    if args.dry_run:   # the profile's grid as it is defined, whether or not its files are on this machine
        base = params.NOTEBOOK_PROFILES["04_ablations"][params.profile_name(args.profile)]
        found = {k: v.first() for k, v in params.values(base).items() if isinstance(v, params.Found)}
        P = dataclasses.replace(base, profile=params.profile_name(args.profile),
                                **{**found, **{k: v for k, v in given.items() if v is not None}})
    else:
        P = params.resolve("04_ablations", args.profile, **given)
        params.prepare_dataset(P.dataset)
    runs = experiments.run_grid(ablations.points(P), params.REPO / "notebooks" / "03_distill.ipynb", P.profile,
                                jobs=P.jobs, cluster=P.cluster, dry_run=args.dry_run)
    print(runs.to_string())
    if args.dry_run:
        print(f"\n{len(runs)} runs of {P.steps} updates at the base point ({P.profile} profile); "
              + ", ".join(f"{n} {s}" for s, n in runs.status.value_counts().items()))


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


def add_device_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default=AUTO, help="torch device: 'auto' (CUDA when available, else the CPU), "
                        "'cpu', 'cuda' or 'cuda:N' (default: auto)")


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
    ev.add_argument("--no-compile", action="store_true", help="without the speed layer (fast.accelerate, torch.compile of the planner)")
    ev.add_argument("--workers", type=int, default=0, help="environment worker processes (0: step them in this process)")
    add_device_argument(ev)
    ev.add_argument("--cluster", default=None, help="'auto' or 'host:port': each batch as a task on that Ray cluster")
    ev.add_argument("--out", default=None, help="CSV of per-episode results; finished batches are kept in "
                    "<out>.part.json until it is written, and a restart skips them")
    ev.set_defaults(func=_evaluate)
    _add_quantize(sub)
    _add_train(sub)
    _add_convert_data(sub)
    _add_mt_mini(sub)
    _add_report(sub)
    _add_grid(sub)
    _add_strip_notebooks(sub)
    return ap


def main(argv: list[str] | None = None) -> int:
    """Run a command; the exit status is 0 (done), 2 (a clear error), 3 (the run folder is in use) or 75
    (stopped by SIGTERM / SIGINT with its state saved: run it again to resume)."""
    from .checkpoints import SaveError
    from .runstate import NonFiniteError, Preempted, RunLockedError

    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except Preempted as e:
        print(f"stopped: {e}", file=sys.stderr)
        return Preempted.exit_code
    except RunLockedError as e:
        print(f"error: {e}", file=sys.stderr)
        return 3
    except (CheckpointError, ValueError, NonFiniteError, SaveError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0
