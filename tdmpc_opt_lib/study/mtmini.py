"""MT-mini from scratch: per-task online data generation, then an offline size-5 teacher.

``build(stage="data")`` trains one online single-task TD-MPC2 agent per MT-mini task
(:mod:`tdmpc_opt_lib.online`, resumable in ``work/<task>``), evaluates it, and publishes its
replay buffer as ``out/tasks/<task>/dataset`` plus ``scores.json`` and ``metrics.csv``. A task
with a ``scores.json`` is complete and skipped, so a killed build loses at most one task's
progress since its last checkpoint. ``build(stage="teacher")`` merges the task datasets into
``work/dataset``, trains the teacher offline (resumable in ``work/teacher``), evaluates it and
writes ``out/teacher.pt`` (fp16 tensors, read by :func:`~tdmpc_opt_lib.checkpoints.load_checkpoint`)
with ``teacher_scores.csv``/``.json``. ``build(stage="students")`` trains the paper's comparison at this
scale, a size-1 student distilled from the teacher (d_coef 0.4) and one from scratch with the same batch,
steps and seed, published the same way (``student-distilled.pt``, ``student-scratch.pt`` + scores).
``out/README.md`` is regenerated after every step.

Settings were chosen by timing on the project's 2-core CPU with ``OMP_NUM_THREADS=1`` while two
other single-thread jobs kept both cores busy (so an idle core is roughly 1.5x faster). Milliseconds
per call, TD-MPC2 defaults (size 1, 512 samples x 6 iterations, batch 256, one update per step) vs.
the chosen online agent (custom model: encoder 128, MLP 256, latent 64, 2 Q heads; 64 samples x 3
iterations, 8 elites, 4 policy trajectories; batch 64, half an update per step)::

    plan one action      316  ->  15
    one update           222  ->  38   (x 0.5 per step)
    environment step     0.1-0.3
    online step         ~540  ->  30-37 measured (incl. the seed phase's pretraining updates)

Learning checks with these settings (training-episode returns, exploration noise on):
cartpole-balance 230-400 (random) -> 590-675 after 6-7.5k steps; cartpole-swingup 170-420 by 12k;
pendulum-spin 60-140 (random) -> 630-900 by 4.5-7.5k; pendulum-swingup stayed at 0 in every episode
up to 14.5k steps (it starts hanging down and its reward is sparse), which is why MT-mini uses
pendulum-spin for the pendulum embodiment. ``STEPS`` sum to 115k environment steps: at the ~20 steps/s
an online agent runs on an idle core (50 ms per step, measured over cartpole-balance's run), about
1.6 CPU-hours; ``--jobs 2`` halves the wall time (tasks run longest first). cartpole-swingup (50k steps to
learn) was left out to fit that budget: the cartpole embodiment is covered by cartpole-balance.
Datasets: ~4 MB (float32, each task's own dims).

Teacher: size 5 (8.3M tensors with the target Qs: 16.6 MB in fp16), batch 128: 324 ms per update
(batch 256: 617 ms), so 10k updates take 35-55 min on one core (less with two threads). Its MPPI
evaluation uses 256 samples x 4 iterations: 1.7 s per lock-step call for 12 episodes (compiled;
512 x 6 costs ~3x more), i.e. ~15 min for 2 episodes per task; the policy prior costs ~1 ms a step.
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path

import pandas as pd
import torch

from .. import data, online, training
from ..checkpoints import FORMAT, atomic_save, atomic_write_text, load_checkpoint
from ..config import MT_MINI
from ..evaluation import evaluate, normalized_score, task_table
from ..planner import PlannerConfig

STAGES = ("all", "data", "teacher", "students")
# Online agent per task: a small custom model, a cheap planner and half an update per environment step.
ONLINE = dict(model_size=None, model_overrides=dict(enc_dim=128, mlp_dim=256, latent_dim=64), batch_size=64,
              update_ratio=0.5, planner=dict(num_samples=64, iterations=3, num_elites=8, num_pi_trajs=4),
              checkpoint_every=5000)
STEPS = {"cartpole-balance": 15_000, "pendulum-spin": 20_000, "reacher-easy": 30_000, "cup-catch": 25_000,
         "finger-spin": 25_000}
TEACHER = dict(model_size=5, steps=10_000, batch_size=128, log_every=100, checkpoint_every=1000)
# The teacher's second phase: from the first phase's fp16 file (fresh optimizer), at batch 256. A 13k-update
# continuation measured 29.7 -> 53.5 (policy prior) and 46.3 -> 69.7 (MPPI) over the first phase.
TEACHER_CONTINUED = dict(steps=15_000, batch_size=256, seed=2)
STUDENTS = ("student-distilled", "student-scratch")
STUDENT = dict(model_size=1, steps=6_000, batch_size=256, seed=1, log_every=100, checkpoint_every=1000)
EVAL_PLANNER = dict(num_samples=256, iterations=4, num_elites=32, num_pi_trajs=16)


@dataclass
class Settings:
    """Everything that determines the artifacts (the defaults are the committed ones)."""

    tasks: tuple[str, ...] = MT_MINI
    steps: dict[str, int] = field(default_factory=lambda: dict(STEPS))
    online: dict = field(default_factory=lambda: dict(ONLINE))          # OnlineConfig fields
    teacher: dict = field(default_factory=lambda: dict(TEACHER))        # TrainConfig fields
    teacher_continued: dict | None = field(default_factory=lambda: dict(TEACHER_CONTINUED))  # phase 2 (None: none)
    student: dict = field(default_factory=lambda: dict(STUDENT))        # TrainConfig fields (both students)
    eval_episodes: int = 10               # per task: data-generating agents, with their own planner
    prior_episodes: int = 10              # per task: teacher/students acting with the policy prior
    mppi_episodes: int = 2                # per task: teacher/students planning with ``eval_planner``
    eval_planner: dict = field(default_factory=lambda: dict(EVAL_PLANNER))   # PlannerConfig fields
    eval_episode_length: int | None = None                              # None = the protocol's 500 (tests shorten)


def build(out: str | os.PathLike = "data/mt-mini", work: str | os.PathLike = "build/mt-mini", stage: str = "all",
          settings: Settings | None = None, jobs: int = 1, progress: bool = True) -> dict:
    """Run (or resume) ``stage`` ("data", "teacher", "students" or "all"); returns the summary written to ``out/build.json``."""
    if stage not in STAGES:
        raise ValueError(f"stage must be one of {STAGES}, got {stage!r}")
    s = settings or Settings()
    if missing := [t for t in s.tasks if t not in s.steps]:
        raise ValueError(f"no online step count for {missing}: add them to Settings.steps (mtmini.STEPS)")
    out, work = Path(out), Path(work)
    started, t0 = time.strftime("%Y-%m-%d %H:%M:%S %Z"), time.perf_counter()
    if stage in ("all", "data"):
        build_data(out, work, s, jobs, progress)
    if stage in ("all", "teacher"):
        build_teacher(out, work, s, progress)
    if stage in ("all", "students"):
        build_students(out, work, s, jobs, progress)
    call = {"stage": stage, "jobs": jobs, "started": started, "wall_s": round(time.perf_counter() - t0, 1)}
    return write_summary(out, s, call)


# ------------------------------------------------------------------------------------------ data
def task_complete(out: Path, task: str) -> bool:
    return (out / "tasks" / task / "scores.json").is_file()


def build_data(out: Path, work: Path, s: Settings, jobs: int = 1, progress: bool = True) -> None:
    """Generate every incomplete task, ``jobs`` at a time (in worker processes with one torch thread each)."""
    todo = sorted((t for t in s.tasks if not task_complete(out, t)), key=lambda t: -s.steps[t])  # longest first
    if jobs <= 1 or len(todo) <= 1:
        for t in todo:
            build_task(out, work, s, t, progress)
            write_summary(out, s)
        return
    with ProcessPoolExecutor(min(jobs, len(todo)), mp_context=get_context("spawn"),
                             initializer=torch.set_num_threads, initargs=(1,)) as pool:
        futures = [pool.submit(build_task, out, work, s, t, False) for t in todo]
        for t, f in zip(todo, futures):
            f.result()
            write_summary(out, s)
            print(f"mt-mini: {t} done", flush=True)


def build_task(out: Path, work: Path, s: Settings, task: str, progress: bool = True) -> dict:
    """Train/resume the online agent of ``task``, evaluate it, publish its dataset and ``scores.json``."""
    cfg = online.OnlineConfig(task=task, out=str(work / task), steps=s.steps[task], **s.online)
    model = online.train_online(cfg, progress=progress)
    t0 = time.perf_counter()
    planner = PlannerConfig(**cfg.planner)
    df = evaluate(model, [task], s.eval_episodes, seed=0, planner_cfg=planner, compile=False,
                  episode_length=s.eval_episode_length, progress=False)
    eval_s = time.perf_counter() - t0
    dest = out / "tasks" / task
    data.save(data.Dataset.open(work / task / "dataset"), dest / "dataset", overwrite=True)   # temp dir + rename
    shutil.copyfile(work / task / "metrics.csv", dest / "metrics.csv")
    ds, log = data.Dataset.open(dest / "dataset"), pd.read_csv(dest / "metrics.csv")
    scores = {"task": task, "score": round(normalized_score(df), 2), "score_std": round(float(df.score.std(ddof=0)), 2),
              "episode_scores": [round(x, 2) for x in df.score], "eval_episodes": s.eval_episodes, "eval_seed": 0,
              "eval_planner": dataclasses.asdict(planner), "eval_episode_length": s.eval_episode_length or 500,
              "last_train_episodes_score": round(float(log.episode_return.tail(5).mean()) / 10, 2),
              "steps": cfg.steps, "episodes": ds.num_episodes, "transitions": ds.num_steps - ds.num_episodes,
              "train_wall_s": round(_seconds(log, "steps_per_s"), 1), "eval_wall_s": round(eval_s, 1),
              "settings": {k: v for k, v in dataclasses.asdict(cfg).items() if k != "out"},
              "torch": torch.__version__, "threads": torch.get_num_threads()}
    _write_json(dest / "scores.json", scores)
    return scores


def _seconds(log: pd.DataFrame, rate: str) -> float:
    """Training seconds of the run a metrics CSV describes: Σ steps per row / their rate (resumes included)."""
    return float((log.step.diff().fillna(log.step.iloc[0]) / log[rate]).sum())


def merged_dataset(out: str | os.PathLike = "data/mt-mini", dest: str | os.PathLike = "build/mt-mini/dataset",
                   tasks: tuple[str, ...] = MT_MINI) -> Path:
    """The multi-task dataset of the published task datasets in ``out/tasks`` (merged into ``dest`` on first use)."""
    out, dest = Path(out), Path(dest)
    missing = [t for t in tasks if not task_complete(out, t)]
    if missing:
        raise FileNotFoundError(f"MT-mini datasets missing in {out / 'tasks'}: {missing} "
                                "(regenerate them with `python -m tdmpc_opt_lib mt-mini --stage data`)")
    sources = [out / "tasks" / t / "dataset" for t in tasks]
    want = sum(data.Dataset.open(p).num_steps for p in sources)
    if not dest.exists() or data.Dataset.open(dest).num_steps != want:
        shutil.rmtree(dest, ignore_errors=True)
        data.merge(sources, dest, list(tasks))
    return dest


# --------------------------------------------------------------------------------------- teacher
def build_teacher(out: Path, work: Path, s: Settings, progress: bool = True) -> dict:
    """Merge the task datasets, train/resume the teacher, evaluate it and write the fp16 ``teacher.pt``. With
    ``s.teacher_continued``, in two phases: ``s.teacher`` (run ``work/teacher``, exported as fp16 to
    ``work/teacher-phase1.pt`` with its record in ``teacher-phase1.json``), then those settings updated by
    ``s.teacher_continued``, starting from that file with a fresh optimizer (run ``work/teacher-continued``)."""
    if not s.teacher_continued:
        return train_and_publish("teacher", dict(s.teacher), out, work, s, progress)
    first = work / "teacher-phase1.pt"
    _require_tasks(out, s, "teacher")
    if not (first.is_file() and first.with_suffix(".json").is_file()):
        cfg = training.TrainConfig(data=str(merged_dataset(out, work / "dataset", s.tasks)), out=str(work / "teacher"),
                                   **s.teacher)
        model = training.train(cfg, progress=progress)
        export_fp16(model, first, step=cfg.steps)
        _write_json(first.with_suffix(".json"), {
            "settings": {k: v for k, v in dataclasses.asdict(cfg).items() if k not in ("data", "out")},
            "train_wall_s": round(_seconds(pd.read_csv(work / "teacher" / "metrics.csv"), "updates_per_s"), 1)})
    phase1 = json.loads(first.with_suffix(".json").read_text())
    cfg = {**s.teacher, **s.teacher_continued, "init_from": str(first.resolve())}
    return train_and_publish("teacher", cfg, out, work, s, progress, run="teacher-continued", phase1=phase1)


def build_students(out: Path, work: Path, s: Settings, jobs: int = 1, progress: bool = True) -> dict:
    """The size-1 students of the paper's comparison: distilled from ``teacher.pt`` (d_coef 0.4) and from
    scratch, same batch size, steps and seed; trained side by side when ``jobs`` > 1 (one thread each)."""
    if not (out / "teacher.pt").is_file():
        raise ValueError(f"the distilled student needs {out / 'teacher.pt'} (run --stage teacher)")
    runs = {name: {**s.student, **extra} for name, extra in
            (("student-distilled", dict(d_coef=0.4, teacher=str((out / "teacher.pt").resolve()))),
             ("student-scratch", dict(d_coef=0.0)))}
    if jobs <= 1:
        return {name: train_and_publish(name, cfg, out, work, s, progress) for name, cfg in runs.items()}
    with ProcessPoolExecutor(min(jobs, len(runs)), mp_context=get_context("spawn"),
                             initializer=torch.set_num_threads, initargs=(1,)) as pool:
        futures = {name: pool.submit(train_and_publish, name, cfg, out, work, s, False) for name, cfg in runs.items()}
        return {name: f.result() for name, f in futures.items()}


def train_and_publish(name: str, train_cfg: dict, out: Path, work: Path, s: Settings, progress: bool = True,
                      run: str | None = None, phase1: dict | None = None) -> dict:
    """Train/resume ``name`` offline on the merged dataset (run folder ``work/<run or name>``), write
    ``out/<name>.pt`` (fp16) and evaluate it with the MT-mini protocol (policy prior and MPPI episodes per task)
    into ``out/<name>_scores.csv``/``.json``; ``phase1``: the record of an earlier phase it continues."""
    if (out / f"{name}.pt").is_file() and (out / f"{name}_scores.json").is_file():
        return json.loads((out / f"{name}_scores.json").read_text())
    _require_tasks(out, s, name)
    merged = merged_dataset(out, work / "dataset", s.tasks)
    cfg = training.TrainConfig(data=str(merged), out=str(work / (run or name)), **train_cfg)
    model = training.train(cfg, progress=progress)
    train_s = _seconds(pd.read_csv(work / (run or name) / "metrics.csv"), "updates_per_s")

    export_fp16(model, out / f"{name}.pt", step=cfg.steps)
    loaded = load_checkpoint(out / f"{name}.pt")
    t0 = time.perf_counter()
    planner, kw = PlannerConfig(**s.eval_planner), dict(seed=0, episode_length=s.eval_episode_length, progress=False)
    prior = evaluate(loaded, list(s.tasks), s.prior_episodes, mpc=False, **kw)
    mppi = evaluate(loaded, list(s.tasks), s.mppi_episodes, planner_cfg=planner, **kw)
    df = pd.concat([prior.assign(mode="policy prior"), mppi.assign(mode="mppi")], ignore_index=True)
    df.to_csv(out / f"{name}_scores.csv", index=False)
    result = {"score_policy_prior": round(normalized_score(prior), 2), "score_mppi": round(normalized_score(mppi), 2),
              "tasks": {m: task_table(g).score.to_dict() for m, g in df.groupby("mode", sort=False)},
              "eval_episodes": {"policy prior": s.prior_episodes, "mppi": s.mppi_episodes},
              "eval_seed": 0,
              "eval_planner": dataclasses.asdict(planner),
              "eval_episode_length": s.eval_episode_length or 500, "train_wall_s": round(train_s, 1),
              "eval_wall_s": round(time.perf_counter() - t0, 1), "max_abs_fp16_error": fp16_error(model, loaded),
              "settings": {k: v for k, v in dataclasses.asdict(cfg).items() if k not in ("data", "out", "init_from")},
              **({"phase1": phase1} if phase1 else {}),
              "params": model.param_counts(), "torch": torch.__version__, "threads": torch.get_num_threads()}
    _write_json(out / f"{name}_scores.json", result)
    return result


def _require_tasks(out: Path, s: Settings, name: str) -> None:
    missing = [t for t in s.tasks if not task_complete(out, t)]
    if missing:
        raise ValueError(f"{name} needs every task's dataset; incomplete: {missing} (run --stage data)")


def export_fp16(model: torch.nn.Module, path: Path, **extra) -> None:
    """Our checkpoint format (:func:`~tdmpc_opt_lib.checkpoints.save_checkpoint`) with fp16 tensors."""
    state = {k: v.detach().cpu().half() for k, v in model.state_dict().items()}
    atomic_save({"model": state, "config": model.cfg.to_dict(), "format": FORMAT, "dtype": "float16", **extra}, path)


@torch.no_grad()
def fp16_error(model: torch.nn.Module, loaded: torch.nn.Module, n: int = 256) -> float:
    """Largest |difference| of the next latents and reward logits of the two models on random inputs."""
    mc = model.cfg
    g = torch.Generator().manual_seed(0)
    obs, a = torch.randn(n, mc.obs_dim, generator=g), torch.rand(n, mc.action_dim, generator=g) * 2 - 1
    task = torch.randint(0, mc.num_tasks, (n,), generator=g)

    def outputs(m: torch.nn.Module) -> list[torch.Tensor]:
        z = m.encode(obs, task)
        return [z, m.next(z, a, task), m.reward(z, a, task)]

    return round(max(float((x - y).abs().max()) for x, y in zip(outputs(model.eval()), outputs(loaded))), 5)


# --------------------------------------------------------------------------------------- records
def _write_json(path: Path, obj: dict) -> None:
    atomic_write_text(path, json.dumps(obj, indent=1))


def _size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else \
        path.stat().st_size if path.exists() else 0


def write_summary(out: Path, s: Settings, call: dict | None = None) -> dict:
    """Collect the recorded scores, times and sizes into ``out/build.json`` and ``out/README.md``;
    ``call`` (stage, start, wall time of a finished ``build``) is appended to the recorded calls."""
    old = json.loads((out / "build.json").read_text()) if (out / "build.json").is_file() else {}
    tasks = {t: json.loads((out / "tasks" / t / "scores.json").read_text()) for t in s.tasks if task_complete(out, t)}
    tf = out / "teacher_scores.json"
    teacher = json.loads(tf.read_text()) if tf.is_file() else None
    students = {n: json.loads((out / f"{n}_scores.json").read_text()) for n in STUDENTS
                if (out / f"{n}_scores.json").is_file()}
    summary = {"tasks": {t: {k: v for k, v in r.items() if k != "settings"} for t, r in tasks.items()},
               "teacher": teacher and {k: v for k, v in teacher.items() if k not in ("settings", "params")},
               "students": {n: {k: v for k, v in r.items() if k not in ("settings", "params")}
                            for n, r in students.items()},
               "data_wall_s": round(sum(r["train_wall_s"] + r["eval_wall_s"] for r in tasks.values()), 1),
               "teacher_wall_s": teacher and round(teacher["train_wall_s"] + teacher["eval_wall_s"]
                                                   + teacher.get("phase1", {}).get("train_wall_s", 0), 1),
               "bytes": {"tasks": _size(out / "tasks"), **{f"{n}.pt": _size(out / f"{n}.pt") for n in ("teacher", *STUDENTS)}},
               "settings": {"online": s.online, "steps": s.steps, "teacher": s.teacher,
                            "teacher_continued": s.teacher_continued, "student": s.student},
               "calls": old.get("calls", []) + ([call] if call else [])}
    summary["bytes"]["total"] = sum(p.stat().st_size for p in out.rglob("*")
                                    if p.is_file() and p.name not in ("build.json", "README.md"))
    _write_json(out / "build.json", summary)
    (out / "README.md").write_text(_readme(summary, teacher, students))
    return summary


def _readme(summary: dict, teacher: dict | None, students: dict[str, dict]) -> str:
    mb = lambda b: f"{b / 2**20:.1f} MiB"  # noqa: E731
    lines = ["# MT-mini dataset and teacher", "",
             "Generated by `python -m tdmpc_opt_lib mt-mini` (tdmpc_opt_lib/study/mtmini.py, which documents the settings);",
             "do not edit: this file is rewritten by every build step. Scores are TD-MPC2 task scores (return / 10).",
             "", "## Data-generating agents (online single-task TD-MPC2)", "",
             "| task | env steps | episodes | eval score (mean ± std) | last 5 training episodes | train h | eval s |",
             "|---|---|---|---|---|---|---|"]
    for t, r in summary["tasks"].items():
        lines.append(f"| {t} | {r['steps']} | {r['episodes']} | {r['score']:.1f} ± {r['score_std']:.1f} "
                     f"({r['eval_episodes']} ep.) | {r['last_train_episodes_score']:.1f} | "
                     f"{r['train_wall_s'] / 3600:.2f} | {r['eval_wall_s']:.0f} |")
    lines += ["", f"Data stage: {summary['data_wall_s'] / 3600:.2f} h of compute in total (sum over tasks of "
                  "training and evaluation; checkpoint I/O and time lost to interruptions not counted)."]
    if teacher:
        ep, pl = teacher["eval_episodes"], teacher["eval_planner"]
        st, p1 = teacher["settings"], teacher.get("phase1")
        phases = (f"{p1['settings']['steps']} updates of batch {p1['settings']['batch_size']} (seed "
                  f"{p1['settings']['seed']}, {p1['train_wall_s'] / 3600:.2f} h), then from those weights in fp16 with a "
                  f"fresh optimizer " if p1 else "")
        lines += ["", "## Teacher (offline, all tasks)", "",
                  f"Model size {st['model_size']}, {phases}{st['steps']} updates of batch {st['batch_size']} (seed "
                  f"{st['seed']}, {teacher['train_wall_s'] / 3600:.2f} h); "
                  f"{teacher['eval_wall_s'] / 60:.0f} min evaluation ({ep['policy prior']} policy-prior and "
                  f"{ep['mppi']} MPPI episodes per task; MPPI with {pl['num_samples']} samples x {pl['iterations']} "
                  f"iterations). Stored as fp16 (largest deviation from fp32 on random inputs "
                  f"{teacher['max_abs_fp16_error']}).", "",
                  "| task | policy prior | MPPI |", "|---|---|---|"]
        prior, mppi = teacher["tasks"]["policy prior"], teacher["tasks"]["mppi"]
        lines += [f"| {t} | {prior[t]:.1f} | {mppi[t]:.1f} |" for t in prior]
        lines.append(f"| **normalized** | **{teacher['score_policy_prior']:.1f}** | **{teacher['score_mppi']:.1f}** |")
    if students:
        models = {"teacher": teacher, **students} if teacher else students
        st = next(iter(students.values()))["settings"]
        lines += ["", "## Students (size 1, offline): distilled (d_coef 0.4) vs from scratch", "",
                  f"Same data, batch {st['batch_size']}, {st['steps']} updates and seed {st['seed']}; same evaluation "
                  "as the teacher (task scores; policy prior / MPPI).", "",
                  "| task | " + " | ".join(models) + " |", "|---|" + "---|" * len(models)]
        for t in next(iter(students.values()))["tasks"]["policy prior"]:
            lines.append(f"| {t} | " + " | ".join(f"{r['tasks']['policy prior'][t]:.1f} / {r['tasks']['mppi'][t]:.1f}"
                                                   for r in models.values()) + " |")
        lines.append("| **normalized** | " + " | ".join(f"**{r['score_policy_prior']:.1f} / {r['score_mppi']:.1f}**"
                                                       for r in models.values()) + " |")
        lines += ["", "Training time: " + ", ".join(f"{n} {r['train_wall_s'] / 3600:.2f} h" for n, r in students.items())
                  + " (one thread each when trained side by side)."]
    b = summary["bytes"]
    lines += ["", f"Sizes: task datasets {mb(b['tasks'])}, teacher.pt {mb(b['teacher.pt'])}, "
                  f"everything here but this README and build.json {mb(b['total'])}.", "",
              "Finished build calls (wall clock; `jobs` tasks generated in parallel):", ""]
    lines += [f"- `--stage {c['stage']} --jobs {c['jobs']}` started {c['started']}: {c['wall_s'] / 3600:.2f} h"
              for c in summary["calls"]]
    lines.append("")
    return "\n".join(lines)
