"""Running on a Ray cluster: grid points as Ray tasks, a claim per point so it is trained once, split evaluations.

``cluster`` is a Ray address: ``"auto"`` (the cluster ``ray start`` runs on this machine, or ``$RAY_ADDRESS``)
or ``"host:port"`` of the head node. Ray is optional (``pip install -e ".[cluster]"``); nothing here imports it
until a cluster is asked for.

What the nodes share: the repository (or the installed package) and its Python environment at the same paths,
and one filesystem that holds ``out_dir``, the datasets and the teachers, mounted at the same path on every node
(NFS, Lustre, ...). Run folders are written there by the worker that trains them and the driver reads the
results back from there; Ray carries only the small status of each point (and, for evaluations, the model and
the per-episode rows).

A grid point runs under a claim: ``grid.claim`` in its run folder, created with ``O_CREAT | O_EXCL`` and kept
fresh by a heartbeat while the point trains. A point with ``result.json`` is done and never trained again; a
point claimed by a live owner is waited for; a stale claim (its process is gone, or its heartbeat is older than
``STALE_S``) is taken over, and the run resumes from its last ``train.pt``. Ray retries a task whose worker or
node died (``max_retries``); the retry carries the same owner token and takes its own claim back at once.
Every claim taken is logged in ``grid.log`` (one JSON line: owner, host, pid, whether ``train.pt`` existed).
"""
from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pandas as pd
from tqdm.auto import tqdm

from .runstate import release_foreign_lock

INSTALL = 'pip install -e ".[cluster]"  (or: pip install "ray>=2.40")'
CLAIM, LOG, DONE = "grid.claim", "grid.log", "result.json"
STALE_S = 120.0        # a claim whose heartbeat is older than this is abandoned (its node is gone)
HEARTBEAT_S = 10.0     # how often a held claim is refreshed
POLL_S = 1.0           # how often a point claimed by someone else is looked at again
MAX_RETRIES = 3        # Ray retries of a task whose worker process or node died


# ---------------------------------------------------------------------------------------------- Ray
def require_ray():
    """The ``ray`` module, or one ImportError saying what to install."""
    try:
        import ray
    except ImportError as e:
        raise ImportError(f"a Ray cluster was asked for (cluster=...) but Ray is not installed: {INSTALL}") from e
    return ray


def connect(cluster: str):
    """Join the cluster at ``cluster`` ("auto" or "host:port") as a driver, once per process; returns ``ray``.
    A loopback address (a cluster on this machine only) is joined from the loopback address too."""
    if not isinstance(cluster, str) or not cluster:
        raise ValueError(f"cluster must be 'auto' or a Ray address 'host:port', got {cluster!r}")
    ray = require_ray()
    if not ray.is_initialized():
        host = cluster.rpartition(":")[0].strip("[]")
        kw = {"_node_ip_address": host} if _is_loopback(host) else {}
        ray.init(address=cluster, log_to_driver=False, **kw)
    return ray


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def resources(device: str | None, cluster_gpus: float = 0.0) -> dict[str, float]:
    """Ray resources of one task: one GPU for a CUDA device ("auto": when the cluster has GPUs), else one CPU."""
    dev = str(device or "cpu")
    gpu = dev.startswith("cuda") or (dev == "auto" and cluster_gpus > 0)
    return {"num_cpus": 1, "num_gpus": 1} if gpu else {"num_cpus": 1, "num_gpus": 0}


def describe(res: dict[str, float]) -> str:
    return "1 GPU + 1 CPU" if res.get("num_gpus") else "1 CPU"


def where() -> str:
    """This process as the progress shows it: ``host (node ip, node id)`` inside Ray, else the host name."""
    try:
        import ray
        if ray.is_initialized():
            node = ray.get_runtime_context().get_node_id()[:8]
            return f"{socket.gethostname()} ({ray.util.get_node_ip_address()}, node {node})"
    except ImportError:
        pass
    return socket.gethostname()


# ------------------------------------------------------------------------------------ grid claims
def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _read_claim(path: Path) -> dict | None:
    try:
        return {**json.loads(path.read_text()), "age_s": time.time() - path.stat().st_mtime}
    except (FileNotFoundError, json.JSONDecodeError):
        return None   # gone, or being written this instant (an empty claim is younger than any stale age)


def is_stale(claim: dict, stale_s: float = STALE_S) -> bool:
    """Whether a claim's holder is gone: its process on this host has exited, or its heartbeat is too old."""
    dead_here = claim.get("host") == socket.gethostname() and not _pid_alive(int(claim.get("pid", 0)))
    return dead_here or claim["age_s"] > stale_s


def try_claim(folder: str | os.PathLike, owner: str, stale_s: float = STALE_S) -> bool:
    """Take the claim of the point in ``folder`` for ``owner``: True if it is now ours (new, already ours from an
    earlier attempt of the same task, or taken over from a stale holder), False if someone alive holds it."""
    path = Path(folder) / CLAIM
    path.parent.mkdir(parents=True, exist_ok=True)
    mine = json.dumps({"owner": owner, "host": socket.gethostname(), "pid": os.getpid(), "since": time.time()})
    for _ in range(3):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            held = _read_claim(path)
            if held is None:
                continue
            if held.get("owner") != owner and not is_stale(held, stale_s):
                return False
            _remove_if_unchanged(path, held, stale_s)   # ours from a killed attempt, or stale: free it, then retry
            continue
        with os.fdopen(fd, "w") as f:
            f.write(mine)
            f.flush()
            os.fsync(f.fileno())
        return True
    return False


def _remove_if_unchanged(path: Path, seen: dict, stale_s: float) -> None:
    """Delete the claim at ``path`` if it still is ``seen``; one remover at a time (``<claim>.takeover``, itself
    created exclusively and ignored once older than ``stale_s``), so two takers cannot both delete and create."""
    guard = path.with_suffix(".takeover")
    try:
        fd = os.open(guard, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        with contextlib.suppress(FileNotFoundError):
            if time.time() - guard.stat().st_mtime > stale_s:
                guard.unlink()
        return
    try:
        os.close(fd)
        now = _read_claim(path)
        if now is not None and {k: now.get(k) for k in ("owner", "pid", "since")} == \
                {k: seen.get(k) for k in ("owner", "pid", "since")}:
            path.unlink()
    finally:
        guard.unlink()


def release(folder: str | os.PathLike, owner: str) -> None:
    """Remove the claim of ``folder`` if ``owner`` holds it."""
    path = Path(folder) / CLAIM
    held = _read_claim(path)
    if held is not None and held.get("owner") == owner and held.get("pid") == os.getpid():
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


@contextlib.contextmanager
def _heartbeat(path: Path, every: float) -> Iterator[None]:
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(every):
            with contextlib.suppress(FileNotFoundError):
                os.utime(path)

    thread = threading.Thread(target=beat, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def run_point(folder: str | os.PathLike, owner: str, work: Callable[[], Any], stale_s: float = STALE_S,
              heartbeat_s: float = HEARTBEAT_S, poll_s: float = POLL_S) -> str:
    """Run ``work()`` for the grid point in ``folder`` under its claim, unless the point is done (``result.json``):
    "cached" (done before, or finished meanwhile by another holder) or "ran". Waits while a live holder trains it."""
    folder = Path(folder)
    while not (folder / DONE).is_file():
        if not try_claim(folder, owner, stale_s):
            time.sleep(poll_s)
            continue
        try:
            if (folder / DONE).is_file():
                return "cached"
            with open(folder / LOG, "a") as f:
                f.write(json.dumps({"owner": owner, "host": socket.gethostname(), "pid": os.getpid(), "where": where(),
                                    "resumed": (folder / "train.pt").is_file(), "time": time.time()}) + "\n")
            # holding the claim, an earlier holder on another host is gone: its training lock goes too
            release_foreign_lock(folder)
            with _heartbeat(folder / CLAIM, heartbeat_s):
                work()
            return "ran"
        finally:
            release(folder, owner)
    return "cached"


def attempts(folder: str | os.PathLike) -> list[dict]:
    """The claims taken on a grid point (``grid.log``), oldest first."""
    path = Path(folder) / LOG
    return [json.loads(line) for line in path.read_text().splitlines() if line] if path.is_file() else []


def new_owner() -> str:
    """A token naming one driver's submission of a grid (the same across Ray's retries of its tasks)."""
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


# ------------------------------------------------------------------------------------ grid on Ray
def _grid_task(folder: str, owner: str, work: Callable[..., Any], args: tuple) -> dict:
    """One grid point on a worker: its claim, then ``work(*args)``."""
    start = time.perf_counter()
    status = run_point(folder, owner, lambda: work(*args))
    return {"status": status, "where": where(), "pid": os.getpid(), "s": round(time.perf_counter() - start, 1)}


def run_points(items: list[tuple[str, tuple]], work: Callable[..., Any], cluster: str,
               device: str | None = None, max_retries: int = MAX_RETRIES) -> dict[str, dict]:
    """Every ``(run folder, args)`` of ``items`` as one Ray task running ``work(*args)`` under the point's claim;
    a progress bar over finished points says where each ran. Returns folder name -> the task's report."""
    ray = connect(cluster)
    res = resources(device, ray.cluster_resources().get("GPU", 0))
    task = ray.remote(_grid_task)
    owner = new_owner()
    pending = {task.options(name=f"grid:{Path(f).name}", max_retries=max_retries, retry_exceptions=False, **res)
               .remote(str(f), owner, work, args): Path(f).name for f, args in items}
    done: dict[str, dict] = {}
    with tqdm(total=len(pending), desc=f"grid on {cluster} ({describe(res)} per point)", unit="point") as bar:
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            name = pending.pop(ready[0])
            done[name] = ray.get(ready[0])
            bar.write(f"{name}: {done[name]['status']} on {done[name]['where']} ({done[name]['s']} s)")
            bar.update(1)
    return done


def plan(rows: list[dict]) -> pd.DataFrame:
    """What a grid would submit: ``rows`` (one per point, with ``status`` and ``device``) and each one's Ray
    resources."""
    df = pd.DataFrame(rows)
    return df.assign(resources=[describe(resources(d)) for d in df["device"]]) if len(df) else df


# ------------------------------------------------------------------------------- split evaluation
def _eval_batch(model, batch: list[tuple[str, int]], lo: int, seed: int, mpc: bool, planner_cfg, compile: bool,
                episode_length: int | None) -> list[dict]:
    """Episodes ``batch`` (the local call's batch starting at job ``lo``) exactly as :func:`evaluation.evaluate`
    runs it: the same planner seed ``seed + lo``, speed layer and environments."""
    from . import fast
    from .envs.vector import LocalEnvs
    from .evaluation import _run_batch
    from .planner import Planner

    model.eval()
    speed = compile and mpc
    runner = fast.accelerate(model) if speed else model
    with fast.cpu_runtime(next(model.parameters()).device) if speed else contextlib.nullcontext():
        planner = Planner(runner, planner_cfg, seed=seed + lo, compile=compile) if mpc else None
        return _run_batch(runner, planner, LocalEnvs(model.cfg.tasks), batch, seed, episode_length, False,
                          label=f"{lo + 1}-{lo + len(batch)}")


def evaluate_split(model, names: list[str], episodes: int, seed: int, mpc: bool, planner_cfg, batch_envs: int,
                   compile: bool, episode_length: int | None, cluster: str, progress: bool = True,
                   max_retries: int = MAX_RETRIES) -> list[dict]:
    """The rows of :func:`evaluation.evaluate` with every batch of ``batch_envs`` episodes (tasks x episodes in
    the local order) as one Ray task, so a shard reproduces the local call's rows; a task whose worker died is
    rerun by Ray. Lower ``batch_envs`` for more, smaller shards (the local call with it gives the same rows). A
    CUDA model's shards ask for a GPU each."""
    ray = connect(cluster)
    device = next(model.parameters()).device
    res = resources(device.type, ray.cluster_resources().get("GPU", 0))
    task = ray.remote(_eval_batch).options(max_retries=max_retries, retry_exceptions=False, **res)
    jobs = [(t, e) for t in names for e in range(episodes)]
    ref = ray.put(model)
    futures = [task.remote(ref, jobs[lo:lo + batch_envs], lo, seed, mpc, planner_cfg, compile, episode_length)
               for lo in range(0, len(jobs), batch_envs)]
    order = {f: i for i, f in enumerate(futures)}
    shards: list[list[dict] | None] = [None] * len(futures)
    pending = list(futures)
    with tqdm(total=len(futures), desc=f"eval on {cluster}", unit="shard", disable=not progress) as bar:
        while pending:
            ready, pending = ray.wait(pending, num_returns=1)
            shards[order[ready[0]]] = ray.get(ready[0])
            bar.update(1)
    return [row for shard in shards for row in shard]
