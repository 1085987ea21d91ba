"""The GPU check: one script that gives every figure of the paper pipeline on a CUDA machine, in under 8 minutes,
written to a JSON file (``reports/gpu_check.json``). On a CPU, ``--quick`` runs every section at a tiny scale.

    python benchmarks/gpu_check.py --out reports/gpu_check.json [--shared ../shared] [--wheels DIR] [--quick]

Sections (each in its own try/except: a failure is recorded under its name and the others still run):
``system`` (device, versions), ``golden`` (the released student's outputs against the public code's, on the
device), ``agreement`` (one MPPI iteration's values and the world-model loss and gradients, device vs CPU),
``updates`` (updates/s of the size-1 student at batch 256, alone and distilling from a random 317M-shaped
teacher, eager / CUDA graph, teacher fp32 / tf32 / bf16 with its measured change), ``planner`` (ms per call for 1
and 300 environments), ``resume`` (a training run killed in a subprocess and resumed, against an uninterrupted
one) and ``mt30`` (the released student on MT30, 30 tasks x 10 episodes, MPPI, environment workers: score and
wall time; skipped with the reason when dm-control cannot be imported; ``--wheels DIR`` installs dm-control and
mujoco from a folder of wheels first).
"""
from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

RELEASED = "checkpoints/mt30_1M_steps_045dist_fp16.pt"
GOLDEN = "golden/model_io_seed0.npz"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, n: int, device: torch.device) -> float:
    """Seconds per call of ``fn`` over ``n`` calls (after the caller's warm-up)."""
    sync(device)
    t = time.perf_counter()
    for _ in range(n):
        fn()
    sync(device)
    return (time.perf_counter() - t) / n


# ---------------------------------------------------------------------------------------------- sections
def system(args, device) -> dict:
    out = {"device": str(device), "torch": torch.__version__, "python": platform.python_version(),
           "cpu_count": os.cpu_count(), "quick": args.quick}
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        out.update(gpu=p.name, gpu_memory_gib=round(p.total_memory / 2 ** 30, 1), cuda=torch.version.cuda,
                   cudnn=torch.backends.cudnn.version())
    for mod in ("numpy", "dm_control", "mujoco", "gymnasium", "tensordict"):
        try:
            out[mod] = getattr(importlib.import_module(mod), "__version__", "present")
        except Exception as e:  # noqa: BLE001 (recorded)
            out[mod] = f"missing ({type(e).__name__}: {e})"
    return out


def golden(args, device) -> dict:
    import numpy as np

    from tdmpc_opt_lib import math
    from tdmpc_opt_lib.checkpoints import load_checkpoint
    g = dict(np.load(Path(args.shared) / GOLDEN))
    m = load_checkpoint(Path(args.shared) / RELEASED, device=device)
    worst: dict[str, float] = {}
    excess = 0.0       # largest |ours - golden| / (1e-4 + 1e-4 |golden|): the tests' tolerance met where <= 1
    with torch.no_grad():
        for k in range(len(g["tasks"])):
            obs, act = torch.tensor(g["obs"][k], device=device), torch.tensor(g["action"][k], device=device)
            task = torch.tensor([k], device=device)
            z = m.encode(obs, task)
            logits = m.reward(z, act, task)
            _, info = m.pi(z, task)
            got = {"z": z, "next_z": m.next(z, act, task), "reward_logits": logits, "reward": math.two_hot_inv(logits),
                   "pi_mean": info["mean"], "pi_log_std": info["log_std"],
                   "q_logits": m.Q(z, act, task, return_type="all"),
                   "q_avg": m.Q(z, act, task, return_type="avg").squeeze(-1)}
            for name, v in got.items():
                want = torch.tensor(g[name][k]).double()
                diff = (v.double().cpu() - want).abs()
                worst[name] = max(worst.get(name, 0.0), float(diff.max()))
                excess = max(excess, float((diff / (1e-4 + 1e-4 * want.abs())).max()))
    return {"max_abs_error": worst, "tolerance": "1e-4 + 1e-4 |golden| (as tests/test_world_model.py)",
            "worst_error_over_tolerance": excess, "within_tolerance": excess <= 1.0}


def _student(device, seed=0, **overrides):
    from tdmpc_opt_lib.config import model_config
    from tdmpc_opt_lib.world_model import WorldModel
    torch.manual_seed(seed)
    return WorldModel(model_config(1, "mt30", **overrides)).to(device)


def agreement(args, device) -> dict:
    """Deterministic pieces on the device against the CPU on the same inputs (random streams differ by device)."""
    import copy

    from tdmpc_opt_lib import fast, planner, training
    cpu = torch.device("cpu")
    ref = _student(cpu, dropout=0.0)
    dev = copy.deepcopy(ref).to(device)
    out = {}
    # one MPPI iteration's trajectory values
    N, S, P, H, A = 8, 64, 8, 3, ref.cfg.action_dim
    g = torch.Generator().manual_seed(0)
    task = torch.arange(N) % 30
    z0 = torch.softmax(torch.randn(N, ref.cfg.latent_dim, generator=g), -1)
    actions = torch.rand(H, N, S - P, A, generator=g) * 2 - 1
    z_pi, G_pi = z0.unsqueeze(1).expand(N, P, -1).contiguous(), torch.randn(N, P, generator=g)
    eps, heads = torch.randn(N, S, A, generator=g), torch.tensor([0, 1])
    gamma = ref.discount[task].unsqueeze(1)
    args_cpu = (z0, actions, z_pi, G_pi, task.unsqueeze(1), gamma, eps, heads)
    with torch.no_grad():
        want = planner._iteration_value(fast.accelerate(ref), *args_cpu)
        got = planner._iteration_value(fast.accelerate(dev), *(a.to(device) for a in args_cpu)).cpu()
    out["planner_value_max_rel_error"] = float(((got - want).abs() / want.abs().clamp(min=1)).max())
    # world-model loss and gradients on one batch, the targets computed on the CPU
    B = 32
    obs = torch.randn(H + 1, B, ref.cfg.obs_dim, generator=g)
    act = torch.rand(H, B, A, generator=g) * 2 - 1
    rew = torch.rand(H, B, 1, generator=g)
    tsk = torch.randint(0, 30, (B,), generator=g)
    grads = []
    for m in (ref, dev):
        d = m.discount.device
        learner = training.Learner(fast.accelerate(m), training.UpdateConfig())
        with torch.no_grad():
            next_z = ref.encode(obs[1:], tsk).to(d)
            td = (rew + 0.99 * torch.rand(H, B, 1, generator=torch.Generator().manual_seed(1))).to(d)
        total, _, _ = learner.model_losses(obs.to(d), act.to(d), rew.to(d), tsk.to(d), next_z, td)
        total.backward()
        grads.append((float(total.detach()), torch.cat([p.grad.flatten().cpu() for p in m.parameters() if p.grad is not None])))
    out["loss_cpu"], out["loss_device"] = grads[0][0], grads[1][0]
    out["loss_rel_error"] = abs(grads[0][0] - grads[1][0]) / abs(grads[0][0])
    out["grad_max_rel_error"] = float((grads[0][1] - grads[1][1]).abs().max() / grads[0][1].abs().max())
    return out


def _teacher_317m(device):
    """A 317M-shaped MT30 world model with random weights, built on the device without TD-MPC2's init pass."""
    from tdmpc_opt_lib.config import model_config
    from tdmpc_opt_lib.world_model import WorldModel
    saved = WorldModel.init_weights
    WorldModel.init_weights = lambda self: None
    try:
        with torch.device(device):
            t = WorldModel(model_config(317, "mt30"))
    finally:
        WorldModel.init_weights = saved
    with torch.no_grad():
        for p in t.parameters():
            p.normal_(0, 0.02)
    return t.eval()


def updates(args, device, data_dir) -> dict:
    from tdmpc_opt_lib import data, fast, training
    from tdmpc_opt_lib.data.device_batches import DeviceBatches
    ds = data.Dataset.open(data_dir)
    batch, n, warm = (16, 3, 2) if args.quick else (256, 200, 20)
    teacher = _student(device, seed=5) if args.quick else _teacher_317m(device)
    out = {"batch_size": batch, "timed_updates": n, "teacher_params": sum(p.numel() for p in teacher.parameters())}
    variants = [("student alone", None, "fp32", False), ("student + 317M teacher, fp32", teacher, "fp32", False)]
    if device.type == "cuda":
        variants += [("student + 317M teacher, tf32", teacher, "tf32", False),
                     ("student + 317M teacher, bf16", teacher, "bf16", False),
                     ("student alone, CUDA graph", None, "fp32", True),
                     ("student + 317M teacher, bf16, CUDA graph", teacher, "bf16", True)]
    for name, t, prec, graph in variants:
        try:
            model = _student(device)
            cfg = training.UpdateConfig(batch_size=batch, d_coef=0.4 if t is not None else 0.0)
            learner = training.Learner(fast.accelerate(model), cfg, fast.accelerate(t) if t is not None else None,
                                       capturable=graph, teacher_precision=prec)
            batches = DeviceBatches(data.WindowSampler(ds, 3, batch, seed=0), device)
            row = {"batches": batches.mode}
            if t is not None and prec != "fp32":
                ok, err = fast.precision_within_tolerance(learner.teacher, batches.next(), prec)
                row.update(teacher_change=err, within_tolerance=ok)
            if graph:
                from tdmpc_opt_lib.fast.graphs import CapturedUpdate
                update = CapturedUpdate(learner)
            else:
                update = learner.update
            with fast.cpu_runtime(device):
                for _ in range(warm):
                    update(**batches.next())
                sec = timed(lambda: update(**batches.next()), n, device)
            batches.close()
            row["updates_per_s"] = round(1 / sec, 2)
            out[name] = row
        except Exception as e:  # noqa: BLE001 (recorded per variant)
            out[name] = {"error": f"{type(e).__name__}: {e}", "trace": traceback.format_exc()[-1500:]}
    return out


def planner_speed(args, device) -> dict:
    from tdmpc_opt_lib import fast
    from tdmpc_opt_lib.planner import Planner
    model = fast.accelerate(_student(device).eval())
    out = {}
    from tdmpc_opt_lib.planner import PlannerConfig
    cfg = PlannerConfig(num_samples=64, num_elites=8, iterations=2) if args.quick else PlannerConfig()
    for n_env in ((1, 4) if args.quick else (1, 300)):
        p = Planner(model, cfg, seed=0, compile=not args.quick)
        obs = torch.randn(n_env, model.cfg.obs_dim, device=device)
        task = torch.arange(n_env, device=device) % 30
        with fast.cpu_runtime(device):
            for _ in range(3):
                p.plan(obs, task)
            out[f"ms_per_call_{n_env}_envs"] = round(1000 * timed(lambda: p.plan(obs, task), 2 if args.quick else 20,
                                                                  device), 2)
    return out


_CHILD = """
import os, sys, torch
from tdmpc_opt_lib import training
die = int(sys.argv[3])   # updates after which the process kills itself (0: none)
if die:
    update = training.Learner.update
    count = [0]
    def dying(self, **kw):
        count[0] += 1
        if count[0] > die:
            os._exit(9)
        return update(self, **kw)
    training.Learner.update = dying
if sys.argv[4] == "1":
    torch.use_deterministic_algorithms(True)
training.train(training.TrainConfig(data=sys.argv[1], out=sys.argv[2], steps=8, batch_size=32, log_every=2,
                                    checkpoint_every=4, device=sys.argv[5], seed=1, compile=False), progress=False)
"""


def resume(args, device, data_dir, tmp) -> dict:
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
           "CUBLAS_WORKSPACE_CONFIG": ":4096:8"}

    def child(out, die, det):
        return subprocess.run([sys.executable, "-c", _CHILD, str(data_dir), str(out), str(die), det, str(device)],
                              env=env, capture_output=True, text=True, timeout=300)

    out = {}
    for det in ("1",) if args.quick else ("1", "0"):
        full, killed = tmp / f"full-{det}", tmp / f"killed-{det}"
        a = child(full, 0, det)
        b = child(killed, 6, det)
        c = child(killed, 0, det)
        if a.returncode or c.returncode or b.returncode != 9:
            raise RuntimeError(f"runs failed: {a.returncode}, {b.returncode} (expected 9), {c.returncode}: "
                               f"{(a.stderr + c.stderr)[-1500:]}")
        sa = torch.load(full / "train.pt", weights_only=True)["model"]
        sc = torch.load(killed / "train.pt", weights_only=True)["model"]
        diff = max(float((sa[k].double() - sc[k].double()).abs().max()) for k in sa)
        out["deterministic" if det == "1" else "default"] = {"identical": diff == 0.0, "max_abs_difference": diff}
    return out


def mt30(args, device) -> dict:
    if args.wheels:
        r = subprocess.run([sys.executable, "-m", "pip", "install", "--no-index", "--find-links", args.wheels,
                            "dm-control", "mujoco"], capture_output=True, text=True)
        if r.returncode:
            return {"skipped": f"pip install from {args.wheels} failed: {r.stderr[-800:]}"}
    try:
        importlib.import_module("dm_control.suite")
    except Exception as e:  # noqa: BLE001 (the reason is the figure)
        return {"skipped": f"dm-control cannot be imported here ({type(e).__name__}: {e}); pass --wheels DIR"}
    from tdmpc_opt_lib.checkpoints import load_checkpoint
    from tdmpc_opt_lib.evaluation import evaluate, normalized_score
    from tdmpc_opt_lib.planner import PlannerConfig
    m = load_checkpoint(Path(args.shared) / RELEASED, device=device)
    workers = min(16, os.cpu_count() or 1) if importlib.util.find_spec("gymnasium") else 0   # 0: in this process
    kw = dict(tasks="cup-catch,cartpole-balance", episodes=1, episode_length=10, compile=False,
              planner_cfg=PlannerConfig(num_samples=64, num_elites=8, iterations=2)) if args.quick else \
        dict(tasks=None, episodes=10)
    t = time.perf_counter()
    df = evaluate(m, seed=0, mpc=True, batch_envs=300, workers=workers, progress=False, **kw)
    return {"score": round(normalized_score(df), 2), "wall_s": round(time.perf_counter() - t, 1),
            "episodes": len(df), "tasks": int(df.task.nunique()), "workers": workers,
            "protocol": "MPPI, 500-step episodes, seeds 0..9 (episode e: 1000*0+e)" if not args.quick else "quick"}


# ---------------------------------------------------------------------------------------------- main
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=str(REPO / "reports" / "gpu_check.json"))
    ap.add_argument("--shared", default=str(REPO.parent / "shared"), help="folder with golden/ and checkpoints/")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--wheels", default=None, help="folder of dm-control/mujoco wheels to pip install from")
    ap.add_argument("--quick", action="store_true", help="tiny scale (a CPU check of the script itself)")
    ap.add_argument("--only", default=None, help="comma list of sections")
    ap.add_argument("--budget-s", type=float, default=450, help="sections starting after this many seconds are skipped")
    args = ap.parse_args(argv)
    from tdmpc_opt_lib import data
    from tdmpc_opt_lib.device import resolve_device
    device = resolve_device(args.device)
    results: dict = {"started": time.strftime("%Y-%m-%d %H:%M:%S")}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data_dir = tmp / "data"
        sections = {"system": lambda: system(args, device), "golden": lambda: golden(args, device),
                    "agreement": lambda: agreement(args, device),
                    "updates": lambda: updates(args, device, data_dir),
                    "planner": lambda: planner_speed(args, device),
                    "resume": lambda: resume(args, device, data_dir, tmp), "mt30": lambda: mt30(args, device)}
        only = args.only.split(",") if args.only else list(sections)
        start = time.perf_counter()
        for name in only:
            t = time.perf_counter()
            if t - start > args.budget_s:
                results[name] = {"skipped": f"time budget of {args.budget_s:.0f} s spent"}
                continue
            try:
                if name in ("updates", "resume") and not data_dir.exists():
                    data.make_synthetic(data_dir, transitions=20_000 if args.quick else 2_000_000, tasks="mt30",
                                        episode_length=100)
                results[name] = sections[name]()
            except Exception as e:  # noqa: BLE001 (one failed section must not lose the others)
                results[name] = {"error": f"{type(e).__name__}: {e}", "trace": traceback.format_exc()[-2000:]}
            results[name]["section_s"] = round(time.perf_counter() - t, 1)
            print(f"{name}: {json.dumps(results[name], default=str)[:600]}", flush=True)
            out.write_text(json.dumps(results, indent=1, default=str) + "\n")     # figures so far survive a kill
    results["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
    out.write_text(json.dumps(results, indent=1, default=str) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
