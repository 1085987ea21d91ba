"""Ray cluster support: grid-point claims, and a real two-node Ray cluster on 127.0.0.1 running the 04 grid (equal
to the local run, surviving a killed worker and a second driver) and a split evaluation (equal rows, a killed
worker's share redone). Every Ray process of these tests listens and connects on 127.0.0.1 only."""
from __future__ import annotations

import contextlib
import io
import json
import os
import re
import signal
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from importlib.util import find_spec
from pathlib import Path

import pandas as pd
import pytest
import torch

from tdmpc_opt_lib import cluster as rc
from tdmpc_opt_lib.config import model_config
from tdmpc_opt_lib.evaluation import evaluate
from tdmpc_opt_lib.planner import PlannerConfig
from tdmpc_opt_lib.study import experiments
from tdmpc_opt_lib.study.params import REPO, resolve
from tdmpc_opt_lib.world_model import WorldModel

NOTEBOOK_03 = REPO / "notebooks" / "03_distill.ipynb"
TASKS = ["cartpole-balance", "cup-catch"]
# the driver, the nodes and every kernel: no usage report, no proxy-less HTTP (Ray's dashboard process asks cloud
# metadata addresses which cloud it runs on: a dead loopback proxy answers instead), loopback addresses only
LOOPBACK_ENV = {"RAY_USAGE_STATS_ENABLED": "0", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
                **{k: "http://127.0.0.1:9" for k in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy")},
                **{k: "127.0.0.1,localhost" for k in ("NO_PROXY", "no_proxy")},
                "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}


# -------------------------------------------------------------------------------------- claims
def test_claim_is_exclusive_and_taken_back_by_its_owner(tmp_path):
    assert rc.try_claim(tmp_path, "a")
    assert not rc.try_claim(tmp_path, "b")              # alive holder (this process)
    assert rc.try_claim(tmp_path, "a")                  # the same owner again: a retried task
    rc.release(tmp_path, "b")                           # not b's: kept
    assert (tmp_path / rc.CLAIM).is_file()
    rc.release(tmp_path, "a")
    assert not (tmp_path / rc.CLAIM).exists() and rc.try_claim(tmp_path, "b")


def test_stale_claims_are_taken_over(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    claim = {"owner": "gone", "host": socket.gethostname(), "pid": int(dead.stdout), "since": 0.0}
    (tmp_path / rc.CLAIM).write_text(json.dumps(claim))
    assert rc.try_claim(tmp_path, "b")                  # its process on this host has exited
    other = tmp_path / "other"
    other.mkdir()
    (other / rc.CLAIM).write_text(json.dumps({**claim, "host": "elsewhere", "pid": 1}))
    assert not rc.try_claim(other, "b", stale_s=60)     # another host's holder with a fresh heartbeat: wait
    os.utime(other / rc.CLAIM, (time.time() - 120, time.time() - 120))
    assert rc.try_claim(other, "b", stale_s=60)         # its heartbeat stopped: taken over


CONTEND = """
import sys, time
from tdmpc_opt_lib import cluster
folder, owner, log = sys.argv[1:]
def work():
    with open(log, "a") as f:
        f.write(owner + "\\n")
    time.sleep(0.5)
    open(folder + "/result.json", "w").write("{}")
print(cluster.run_point(folder, owner, work, poll_s=0.05))
"""


def test_two_drivers_run_a_point_once(tmp_path):
    log = tmp_path / "trained.txt"
    procs = [subprocess.Popen([sys.executable, "-c", CONTEND, str(tmp_path / "point"), f"driver{i}", str(log)],
                              stdout=subprocess.PIPE, text=True, env={**os.environ, **LOOPBACK_ENV})
             for i in range(3)]
    status = sorted(p.communicate(timeout=60)[0].strip() for p in procs)
    assert status == ["cached", "cached", "ran"]
    assert len(log.read_text().split()) == 1 and len(rc.attempts(tmp_path / "point")) == 1
    assert not (tmp_path / "point" / rc.CLAIM).exists()


def test_cluster_without_ray_names_the_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)        # import ray fails as if not installed
    with pytest.raises(ImportError, match=r"pip install -e \".\[cluster\]\""):
        rc.connect("auto")
    monkeypatch.setattr("tdmpc_opt_lib.study.params.find_spec", lambda name: None)
    with pytest.raises(ValueError, match=r"'cluster' must be .*pip install"):
        resolve("04_ablations", "smoke", cluster="auto")


def test_grid_dry_run_lists_points_and_resources():
    points = [{"d_coef": d, "seed": 1} for d in (0.0, 0.4)]
    plan = experiments.run_grid(points, NOTEBOOK_03, "paper", dry_run=True)
    assert list(plan.d_coef) == [0.0, 0.4] and set(plan.steps) == {1_000_000}
    assert set(plan.resources) == {"1 CPU"} and all(s.startswith(("missing", "to run", "finished")) for s in plan.status)
    assert rc.resources("cuda") == {"num_cpus": 1, "num_gpus": 1} and rc.resources("auto", 2)["num_gpus"] == 1


# ------------------------------------------------------------------------------- a real cluster
needs_ray = pytest.mark.skipif(find_spec("ray") is None, reason='Ray is not installed (pip install -e ".[cluster]")')


def _start_node(temp: str, *args: str) -> tuple[subprocess.Popen, Path]:
    log = Path(temp + ".log")
    cmd = [sys.executable, str(Path(__file__).with_name("ray_loopback.py")), "start", "--block",
           "--node-ip-address=127.0.0.1", "--num-cpus=1", "--num-gpus=0", "--disable-usage-stats",
           f"--temp-dir={temp}", "--object-store-memory=80000000", *args]
    with open(log, "w") as out:
        env = {k: v for k, v in {**os.environ, **LOOPBACK_ENV}.items() if k != "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"}
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    return proc, log


def _wait_for(log: Path, pattern: str, proc: subprocess.Popen, timeout: float = 90) -> re.Match:
    end = time.time() + timeout
    while time.time() < end:
        found = re.search(pattern, log.read_text())
        if found:
            return found
        if proc.poll() is not None:
            break
        time.sleep(0.5)
    raise RuntimeError(f"ray start did not get ready:\n{log.read_text()[-3000:]}")


def _stop(procs: list[subprocess.Popen]) -> None:
    """Stop the nodes these tests started: their process trees, by pid (no `ray stop`, which stops every
    Ray process of the machine)."""
    import psutil

    tree = []
    for p in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            tree += [psutil.Process(p.pid), *psutil.Process(p.pid).children(recursive=True)]
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    _, alive = psutil.wait_procs(tree, timeout=10)
    for p in alive:
        p.kill()
    for p in procs:
        p.wait(timeout=10)


@pytest.fixture(scope="module")
def ray_cluster():
    """A head and one worker node (one CPU each) on 127.0.0.1; the test process joined as a driver."""
    saved = {k: os.environ.get(k) for k in LOOPBACK_ENV}
    os.environ.update(LOOPBACK_ENV)        # before ray is imported: its constants are read at import
    root = tempfile.mkdtemp(prefix="ray", dir="/tmp")   # short: Ray's socket paths must fit 107 bytes
    procs = []
    try:
        head, head_log = _start_node(f"{root}/h", "--head", "--port=0", "--include-dashboard=false")
        procs.append(head)
        address = _wait_for(head_log, r"ray start --address='([0-9.:]+)'", head).group(1)
        worker, worker_log = _start_node(f"{root}/w", f"--address={address}")
        procs.append(worker)
        _wait_for(worker_log, r"Ray runtime started", worker)
        ray = rc.connect(address)
        end = time.time() + 60
        while len([n for n in ray.nodes() if n["Alive"]]) < 2 and time.time() < end:
            time.sleep(0.5)
        yield address, ray
    finally:
        if "ray" in sys.modules and sys.modules["ray"] is not None and sys.modules["ray"].is_initialized():
            sys.modules["ray"].shutdown()
        _stop(procs)
        shutil.rmtree(root, ignore_errors=True)
        for k, v in saved.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)


def _results(out_dir: Path) -> pd.DataFrame:
    runs = experiments.collect(out_dir)
    return runs[["run", "score", *sorted(c for c in runs if c.startswith("task:"))]].sort_values("run", ignore_index=True)


@needs_ray
def test_two_node_cluster_runs_the_04_grid_like_this_machine(ray_cluster, tmp_path):
    import papermill as pm

    address, ray = ray_cluster
    nodes = [n for n in ray.nodes() if n["Alive"]]
    assert len(nodes) == 2 and {n["NodeManagerAddress"] for n in nodes} == {"127.0.0.1"}
    assert {n["Resources"].get("CPU") for n in nodes} == {1.0}

    P = resolve("04_ablations", "smoke", seeds=[1, 2], out_dir=str(tmp_path / "local"))
    from tdmpc_opt_lib.study import ablations, params
    params.prepare_dataset(P.dataset)
    start = time.perf_counter()
    experiments.run_grid(ablations.points(P), NOTEBOOK_03, "smoke", jobs=2)
    local_s = time.perf_counter() - start

    start = time.perf_counter()
    pm.execute_notebook(str(REPO / "notebooks" / "04_ablations.ipynb"), str(tmp_path / "04.ipynb"),
                        parameters={"profile": "smoke", "seeds": [1, 2], "cluster": address,
                                    "out_dir": str(tmp_path / "cluster")}, cwd=str(REPO / "notebooks"),
                        progress_bar=False)
    cluster_s = time.perf_counter() - start
    local, remote = _results(tmp_path / "local"), _results(tmp_path / "cluster")
    assert len(local) == 4
    pd.testing.assert_frame_equal(remote, local)          # same runs (seeds), same scores
    where = {a["where"] for run in remote.run for a in rc.attempts(tmp_path / "cluster" / "runs" / run)}
    assert len(where) == 2, where                          # both nodes trained points
    print(f"\n04 smoke grid, 4 points: this machine (jobs 2) {local_s:.0f} s, two-node cluster {cluster_s:.0f} s")


KILL_POINTS = [{"d_coef": 0.0, "seed": 1}, {"d_coef": 0.4, "seed": 1}]
DRIVER = """
import json, sys
from tdmpc_opt_lib.study import experiments
points, notebook, address = json.loads(sys.argv[1]), sys.argv[2], sys.argv[3]
print(experiments.run_grid(points, notebook, "smoke", cluster=address)[["run", "score", "cached"]].to_json())
"""


def _kill_when_checkpointed(folders: list[Path], killed: list) -> None:
    """SIGKILL the Ray worker training the first point that has a resume checkpoint but no final model."""
    end = time.time() + 240
    while time.time() < end and not killed:
        for f in folders:
            claim = f / rc.CLAIM
            if (f / "train.pt").is_file() and not (f / "model.pt").exists() and claim.is_file():
                try:
                    pid = json.loads(claim.read_text())["pid"]
                    os.kill(pid, signal.SIGKILL)
                except (ValueError, KeyError, ProcessLookupError):
                    continue
                killed.append(f)
                return
        time.sleep(0.05)


@needs_ray
def test_killed_grid_point_resumes_and_no_point_trains_twice(ray_cluster, tmp_path):
    address, _ = ray_cluster
    P = resolve("04_ablations", "smoke", out_dir=str(tmp_path))
    points = [{"teacher": P.teacher, "dataset": P.dataset, "out_dir": str(tmp_path), "steps": 240,
               "batch_size": 32, **p} for p in KILL_POINTS]
    folders = [experiments.run_dir(resolve("03_distill", "smoke", **p)) for p in points]
    killed: list[Path] = []
    killer = threading.Thread(target=_kill_when_checkpointed, args=(folders, killed))
    killer.start()
    second = subprocess.Popen([sys.executable, "-c", DRIVER, json.dumps(points), str(NOTEBOOK_03), address],
                              stdout=subprocess.PIPE, text=True, env={**os.environ, **LOOPBACK_ENV})
    first = experiments.run_grid(points, NOTEBOOK_03, "smoke", cluster=address)
    other = pd.read_json(io.StringIO(second.communicate(timeout=300)[0].strip().splitlines()[-1]))
    killer.join()
    assert second.returncode == 0 and killed, "no point was killed"
    assert list(first.run) == list(other.run) and list(first.score) == pytest.approx(list(other.score), abs=1e-9)
    for f in folders:
        tries = rc.attempts(f)
        metrics = pd.read_csv(f / "metrics.csv")
        assert metrics.step.is_monotonic_increasing and metrics.step.is_unique and metrics.step.iloc[-1] == 240
        if f == killed[0]:
            assert len(tries) == 2 and not tries[0]["resumed"] and tries[1]["resumed"], tries
            restart = metrics.index[metrics.wall_s.diff() < 0]           # the clock restarts with the resumed run
            assert len(restart) == 1, metrics
            every = experiments.train_config(resolve("03_distill", "smoke", **points[0])).checkpoint_every
            assert metrics.step[restart[0] - 1] % every == 0             # ... right after a checkpoint
        else:
            assert len(tries) == 1 and not tries[0]["resumed"], tries    # trained once, by one driver


def _kill_first_eval_worker(killed: list) -> None:
    """SIGKILL the first Ray worker seen running an evaluation shard (its process title names the task)."""
    import psutil

    end = time.time() + 120
    while time.time() < end and not killed:
        for p in psutil.process_iter(["pid", "cmdline"]):
            if any("ray::_eval_batch" in part for part in (p.info["cmdline"] or [])):
                with contextlib.suppress(psutil.NoSuchProcess):
                    p.kill()
                killed.append(p.info["pid"])
                return
        time.sleep(0.02)


@needs_ray
def test_split_evaluation_equals_the_local_rows_and_redoes_a_killed_share(ray_cluster):
    address, _ = ray_cluster
    torch.manual_seed(0)
    model = WorldModel(model_config(None, TASKS, enc_dim=32, mlp_dim=32, latent_dim=16, task_dim=8, num_q=2))
    kw = dict(tasks=TASKS, episodes=3, seed=4, mpc=True, planner_cfg=PlannerConfig(num_samples=64, iterations=2),
              batch_envs=2, compile=False, episode_length=60, progress=False)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)            # as a one-CPU Ray task runs
    try:
        local = evaluate(model, **kw)
    finally:
        torch.set_num_threads(threads)
    killed: list[int] = []
    killer = threading.Thread(target=_kill_first_eval_worker, args=(killed,))
    killer.start()
    split = evaluate(model, **kw, cluster=address)
    killer.join()
    assert killed, "no evaluation worker was killed"
    assert len(local) == 6 and split.attrs["mpc"]
    pd.testing.assert_frame_equal(split, local)


def test_a_claimed_point_takes_over_the_training_lock_of_a_dead_node(tmp_path):
    """A node that died while training leaves its run.lock, which run_lock cannot judge from another host: the
    point's new claim holder removes it, so the retried run resumes instead of failing; a lock of this host stays
    for run_lock to judge."""
    (tmp_path / "run.lock").write_text(json.dumps({"host": "dead-node", "pid": 4242, "token": "x", "since": "-"}))
    seen = []
    assert rc.run_point(tmp_path, "me", lambda: seen.append((tmp_path / "run.lock").exists())) == "ran"
    assert seen == [False]
    (tmp_path / "run.lock").write_text(json.dumps({"host": socket.gethostname(), "pid": 1, "token": "x", "since": "-"}))
    assert rc.run_point(tmp_path, "me", lambda: seen.append((tmp_path / "run.lock").exists())) == "ran"
    assert seen == [False, True]
