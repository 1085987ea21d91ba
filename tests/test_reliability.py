"""Bad values, bad data, diverging runs, concurrent runs, preemption and failed writes: one clear error or a
clean resume each (subprocess tests use tiny models and synthetic data)."""
from __future__ import annotations

import csv
import errno
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from tdmpc_opt_lib import checks, data, evaluation, runstate, training
from tdmpc_opt_lib.checkpoints import SaveError, atomic_save, load_checkpoint, save_checkpoint
from tdmpc_opt_lib.cli import main
from tdmpc_opt_lib.config import model_config
from tdmpc_opt_lib.study.params import resolve
from tdmpc_opt_lib.world_model import WorldModel

TASKS = ["cartpole-swingup", "reacher-easy"]
TINY = dict(enc_dim=32, mlp_dim=32, latent_dim=16, task_dim=8)
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", "")}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return str(data.make_synthetic(tmp_path_factory.mktemp("d") / "ds", transitions=1000, tasks=TASKS,
                                   episode_length=50))


def _cfg(dataset, out, **kw) -> training.TrainConfig:
    base = dict(data=dataset, out=str(out), steps=8, batch_size=8, log_every=2, checkpoint_every=4,
                model_size=None, model_overrides=TINY, seed=3)
    return training.TrainConfig(**{**base, **kw})


def _cli_train(dataset, out, steps=8, checkpoint_every=4) -> list[str]:
    return ["train", "--data", dataset, "--out", str(out), "--steps", str(steps), "--batch-size", "8",
            "--log-every", "2", "--checkpoint-every", str(checkpoint_every), "--seed", "3", "--model-size", "0",
            "--no-progress", *[a for k, v in TINY.items() for a in ("--override", f"{k}={v}")]]


def _python(code: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=ENV, cwd=REPO, capture_output=True,
                          text=True, timeout=timeout)


def _rows(out) -> list[dict]:
    with open(out / "metrics.csv") as f:
        return [{k: v for k, v in r.items() if k not in ("updates_per_s", "wall_s")} for r in csv.DictReader(f)]


def _same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


# ------------------------------------------------------------------------------------ one set of checks
STEPS_MESSAGE = "'steps' must be an integer >= 1, got -5"


def test_a_bad_value_gets_the_same_message_everywhere(dataset, tmp_path, capsys):
    with pytest.raises(ValueError, match=STEPS_MESSAGE):
        _cfg(dataset, tmp_path, steps=-5)
    with pytest.raises(ValueError, match=STEPS_MESSAGE):
        resolve("03_distill", profile="smoke", steps=-5)
    assert main(_cli_train(dataset, tmp_path / "run", steps=-5)) == 2
    assert STEPS_MESSAGE in capsys.readouterr().err and not (tmp_path / "run").exists()
    model = WorldModel(model_config(None, TASKS, **TINY))
    for name, value in (("episodes", 0), ("seed", -1), ("episode_length", 501)):
        with pytest.raises(ValueError) as lib:
            evaluation.evaluate(model, **{name: value})
        with pytest.raises(ValueError) as nb:
            resolve("01_teacher", profile="smoke", **{name: value})
        assert str(lib.value) in str(nb.value) and str(lib.value) == checks.problem(name, value, checks.RULES[name])


@pytest.mark.parametrize("name, value, message", [
    ("batch_size", 0, "'batch_size' must be an integer >= 1, got 0"),
    ("lr", float("nan"), "'lr' must be a number > 0, got nan"),
    ("d_coef", -0.1, "'d_coef' must be a number >= 0"),
    ("distill", "latent", "'distill' must be one of"),
    ("seed", True, "'seed' must be an integer >= 0, got True"),
    ("model_size", 3, r"'model_size' must be None or one of \[1, 5, 19, 48, 317\], got 3"),
    ("eval_every", -100, "'eval_every' must be an integer >= 0"),
    ("rho", 0, r"'rho' must be a number in \(0, 1\]"),
])
def test_train_config_refuses_values_that_make_no_sense(dataset, tmp_path, name, value, message):
    with pytest.raises(ValueError, match=message):
        _cfg(dataset, tmp_path, **{name: value})


# ------------------------------------------------------------------------------------ dataset validation
def _poison(path, field: str, rows: list[int]) -> None:
    arr = np.load(path / f"{field}.npy", mmap_mode="r+")
    arr[rows] = np.nan
    arr.flush()


def test_non_finite_data_is_named_by_file_field_and_rows(dataset, tmp_path, capsys):
    import shutil
    bad = shutil.copytree(dataset, tmp_path / "bad")
    _poison(bad, "reward", [0])                                   # an episode's first reward: NaN by design
    data.Dataset.open(bad, full_check=True)
    _poison(bad, "obs", [60, 61, 700])
    data.Dataset.open(bad)                                        # the cheap checks do not read the values
    with pytest.raises(data.DatasetError, match=r"obs\.npy: field 'obs' has non-finite .* rows \[60, 61, 700\]"):
        data.Dataset.open(bad, full_check=True)
    assert main(["check-data", str(bad)]) == 2 and "'obs'" in capsys.readouterr().err
    assert main(["check-data", dataset]) == 0 and "valid" in capsys.readouterr().out
    # training on it stops at the first batch that reaches a bad row, before any update uses it
    with pytest.raises(data.DatasetError, match=r"obs\.npy: field 'obs' has non-finite values \(NaN or infinity\) "
                                                r"at rows \[(60|61|700)"):
        training.train(_cfg(str(bad), tmp_path / "run", steps=200, batch_size=64), progress=False)
    assert not (tmp_path / "run" / "train.pt").exists()


@pytest.mark.parametrize("field, value, message", [
    ("episode_task", 7, r"episode_task\.npy: task ids must be in \[0, 2\); first bad rows \[3\]"),
    ("episode_length", 0, r"episode_length\.npy: episode lengths must be >= 1; first bad rows \[3\]"),
    ("episode_offset", 5, r"episode_offset\.npy: each episode must start where the previous one ends; first bad "
                          r"rows \[3\]"),
])
def test_inconsistent_episodes_name_the_field_and_rows(dataset, tmp_path, field, value, message):
    import shutil
    bad = shutil.copytree(dataset, tmp_path / "bad")
    (bad / data.storage.SUMS).unlink()                           # as in a folder written before checksums
    arr = np.load(bad / f"{field}.npy")
    arr[3] = value
    np.save(bad / f"{field}.npy", arr)
    with pytest.raises(data.DatasetError, match=message):
        data.Dataset.open(bad)


def test_a_changed_episode_file_fails_its_checksum(dataset, tmp_path):
    import shutil
    bad = shutil.copytree(dataset, tmp_path / "bad")
    task = np.load(bad / "episode_task.npy")
    task[0] = 1 - task[0]                                        # still a valid task id
    np.save(bad / "episode_task.npy", task)
    with pytest.raises(data.DatasetError, match="episode_task.npy does not match its checksum"):
        data.Dataset.open(bad)


def test_conversion_refuses_non_finite_chunks(tmp_path):
    ds = data.Dataset.open(data.make_synthetic(tmp_path / "src", transitions=200, tasks=TASKS, episode_length=20))
    chunks = data.export_public(ds, tmp_path / "public", episodes_per_chunk=5)
    c = torch.load(chunks[1], weights_only=True)
    c["action"][2, 4, 0] = float("inf")
    torch.save(c, chunks[1])
    with pytest.raises(data.DatasetError, match=r"chunk_1\.pt: field 'action' .* episode 2, step 4; not converted"):
        data.convert_public(chunks, tmp_path / "out" / "converted", tasks=TASKS, trust=True)
    assert list((tmp_path / "out").iterdir()) == []


# ------------------------------------------------------------------------------------- numerical guard
def test_a_non_finite_loss_stops_the_run_before_anything_is_written(dataset, tmp_path, monkeypatch):
    real_update, calls = training.Learner.update, []

    def poisoned_update(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 5:                                       # the reward head diverges in update 5
            with torch.no_grad():
                self.model._reward[-1].weight.fill_(float("nan"))
        return real_update(self, *args, **kwargs)

    monkeypatch.setattr(training.Learner, "update", poisoned_update)
    with pytest.raises(runstate.NonFiniteError, match=r"non-finite reward.* at step 5; .*state is that of step 4"):
        training.train(_cfg(dataset, tmp_path, steps=12, compile=False), progress=False)
    assert len(calls) == 6                                        # stopped at the first log point after it
    assert torch.load(tmp_path / "train.pt", weights_only=True)["step"] == 4
    assert [r["step"] for r in _rows(tmp_path)] == ["2", "4"] and not (tmp_path / "model.pt").exists()


def test_guard_names_each_bad_term_of_the_first_bad_update():
    guard = runstate.NumericalGuard(("reward", "value", "grad_norm"))
    ok, nan = torch.tensor(1.0), torch.tensor(float("nan"))
    guard.watch(1, {"reward": ok, "value": ok, "grad_norm": ok})
    guard.check("run", 0)
    guard.watch(2, {"reward": ok, "value": nan, "grad_norm": torch.tensor(float("inf"))})
    guard.watch(3, {"reward": nan, "value": ok, "grad_norm": ok})
    with pytest.raises(runstate.NonFiniteError, match="non-finite value, grad_norm at step 2; .*no state was saved"):
        guard.check("run", 0)


# ------------------------------------------------------------------------------------------ run locks
HOLD = """
import sys, time
from tdmpc_opt_lib.runstate import run_lock
with run_lock(sys.argv[1]):
    print("locked", flush=True)
    time.sleep(60)
"""


def test_a_second_process_is_refused_with_the_owner(dataset, tmp_path, capsys):
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path / "run")], env=ENV, cwd=REPO,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        assert main(_cli_train(dataset, tmp_path / "run")) == 3
        err = capsys.readouterr().err
        assert f"in use by process {holder.pid} on this host" in err and "run.lock" in err
        with pytest.raises(runstate.RunLockedError, match=str(holder.pid)):
            training.train(_cfg(dataset, tmp_path / "run"), progress=False)
    finally:
        holder.kill()
        holder.wait()
    assert not (tmp_path / "run" / "train.pt").exists()           # the refused runs wrote nothing
    training.train(_cfg(dataset, tmp_path / "run", steps=2), progress=False)     # the dead holder's lock is taken


def test_stale_and_foreign_locks(tmp_path):
    dead = subprocess.Popen(["true"])
    dead.wait()
    lock = tmp_path / runstate.LOCK_NAME
    lock.write_text(json.dumps({"host": socket.gethostname(), "pid": dead.pid}))
    with runstate.run_lock(tmp_path):
        assert json.loads(lock.read_text())["pid"] == os.getpid()
        with pytest.raises(runstate.RunLockedError, match="in use by process"):   # not twice, not by us either
            with runstate.run_lock(tmp_path):
                pass
    assert not lock.exists()
    lock.write_text(json.dumps({"host": "elsewhere", "pid": 1}))
    with pytest.raises(runstate.RunLockedError, match="process 1 on host 'elsewhere'.*delete the lock file"):
        with runstate.run_lock(tmp_path):
            pass
    lock.write_text("garbage")                                    # unreadable: owner unknown, never taken over
    with pytest.raises(runstate.RunLockedError, match="in use"):
        with runstate.run_lock(tmp_path):
            pass


KILLED_AT = """
import os, signal, sys
from tdmpc_opt_lib import training
from tdmpc_opt_lib.cli import main
update, calls = training.Learner.update, []
def update_then_die(self, *a, **k):
    calls.append(1)
    if len(calls) == int(sys.argv[1]):
        os.kill(os.getpid(), getattr(signal, sys.argv[2]))
    return update(self, *a, **k)
training.Learner.update = update_then_die
sys.exit(main(sys.argv[3:]))
"""


def _run_killed(at: int, sig: str, argv: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", KILLED_AT, str(at), sig, *argv], env=ENV, cwd=REPO,
                          capture_output=True, text=True, timeout=120)


def test_after_sigkill_a_restart_takes_the_stale_lock_and_resumes(dataset, tmp_path):
    killed = _run_killed(7, "SIGKILL", _cli_train(dataset, tmp_path / "run"))
    assert killed.returncode == -signal.SIGKILL
    assert json.loads((tmp_path / "run" / "run.lock").read_text())["pid"] != os.getpid()    # left behind
    assert torch.load(tmp_path / "run" / "train.pt", weights_only=True)["step"] == 4
    assert main(_cli_train(dataset, tmp_path / "run")) == 0
    assert not (tmp_path / "run" / "run.lock").exists()
    assert main(_cli_train(dataset, tmp_path / "full")) == 0
    _same_weights(load_checkpoint(tmp_path / "full" / "model.pt").state_dict(),
                  load_checkpoint(tmp_path / "run" / "model.pt").state_dict())


# ----------------------------------------------------------------------------------------- preemption
def test_sigterm_checkpoints_training_and_the_resumed_run_is_bit_identical(dataset, tmp_path):
    """SIGTERM in update 7 (between log rows, long before the next checkpoint): the run saves step 7 and exits
    with 75; the restart ends with the parameters and metrics rows of an uninterrupted run."""
    argv = _cli_train(dataset, tmp_path / "run", steps=12, checkpoint_every=10)
    stopped = _run_killed(7, "SIGTERM", argv)
    assert stopped.returncode == 75 and "stopped on SIGTERM at step 7" in stopped.stderr, stopped.stderr
    assert torch.load(tmp_path / "run" / "train.pt", weights_only=True)["step"] == 7
    assert not (tmp_path / "run" / "run.lock").exists()
    assert main(argv) == 0
    assert main(_cli_train(dataset, tmp_path / "full", steps=12, checkpoint_every=10)) == 0
    _same_weights(load_checkpoint(tmp_path / "full" / "model.pt").state_dict(),
                  load_checkpoint(tmp_path / "run" / "model.pt").state_dict())
    assert _rows(tmp_path / "full") == _rows(tmp_path / "run")


ONLINE = """
import os, signal, sys
from tdmpc_opt_lib import online, training
from tdmpc_opt_lib.runstate import Preempted
update, calls = training.Learner.update, []
def update_then_term(self, *a, **k):
    calls.append(1)
    if len(calls) == 45:                                # during the second episode (the first ends at step 40)
        os.kill(os.getpid(), signal.SIGTERM)
    return update(self, *a, **k)
training.Learner.update = update_then_term
TINY = dict(enc_dim=32, mlp_dim=32, latent_dim=16, task_dim=8)
cfg = online.OnlineConfig(task="cartpole-swingup", out=sys.argv[1], steps=120, seed_steps=40, episode_length=40,
                          batch_size=16, checkpoint_every=1000, model_size=None, model_overrides=TINY,
                          planner=dict(iterations=1, num_samples=16, num_elites=4, num_pi_trajs=2))
try:
    online.train_online(cfg, progress=False)
except Preempted as e:
    print(e)
    sys.exit(Preempted.exit_code)
"""


def test_sigterm_checkpoints_online_training_at_the_episode_end(tmp_path):
    from tdmpc_opt_lib import online
    stopped = subprocess.run([sys.executable, "-c", ONLINE, str(tmp_path / "run")], env=ENV, cwd=REPO,
                             capture_output=True, text=True, timeout=120)
    assert stopped.returncode == 75 and "stopped on SIGTERM at step 80" in stopped.stdout, stopped.stderr
    assert torch.load(tmp_path / "run" / "online.pt", weights_only=True)["step"] == 80
    cfg = dict(task="cartpole-swingup", steps=120, seed_steps=40, episode_length=40, batch_size=16,
               checkpoint_every=1000, model_size=None, model_overrides=TINY,
               planner=dict(iterations=1, num_samples=16, num_elites=4, num_pi_trajs=2))
    resumed = online.train_online(online.OnlineConfig(out=str(tmp_path / "run"), **cfg), progress=False)
    full = online.train_online(online.OnlineConfig(out=str(tmp_path / "full"), **cfg), progress=False)
    _same_weights(full.state_dict(), resumed.state_dict())


EVALUATE = """
import os, signal, sys
from tdmpc_opt_lib import evaluation
from tdmpc_opt_lib.cli import main
run_batch, calls = evaluation._run_batch, []
def batch_then_term(*a, **k):
    calls.append(1)
    if len(calls) == 3:
        os.kill(os.getpid(), signal.SIGTERM)
    return run_batch(*a, **k)
evaluation._run_batch = batch_then_term
sys.exit(main(sys.argv[1:]))
"""


def test_sigterm_stops_a_long_evaluation_and_the_restart_skips_finished_batches(tmp_path, monkeypatch):
    torch.manual_seed(0)
    save_checkpoint(WorldModel(model_config(None, TASKS, **TINY)), tmp_path / "m.pt")
    argv = ["evaluate", "--checkpoint", str(tmp_path / "m.pt"), "--tasks", ",".join(TASKS), "--episodes", "2",
            "--no-mpc", "--batch-envs", "1", "--out", str(tmp_path / "res.csv")]
    stopped = subprocess.run([sys.executable, "-c", EVALUATE, *argv], env=ENV, cwd=REPO, capture_output=True,
                             text=True, timeout=120)
    assert stopped.returncode == 75 and "stopped on SIGTERM in episodes 3-3/4" in stopped.stderr, stopped.stderr
    progress = json.loads((tmp_path / "res.csv.part.json").read_text())
    assert sorted(progress["batches"]) == ["0", "1"] and not (tmp_path / "res.csv").exists()
    ran, real = [], evaluation._run_batch
    monkeypatch.setattr(evaluation, "_run_batch", lambda *a, **k: ran.append(a[3]) or real(*a, **k))
    assert main(argv) == 0
    assert ran == [[("reacher-easy", 0)], [("reacher-easy", 1)]]  # only the unfinished batches ran again
    assert not (tmp_path / "res.csv.part.json").exists()
    resumed = np.loadtxt(tmp_path / "res.csv", delimiter=",", skiprows=1, usecols=(1, 2, 3, 4, 5))
    full = evaluation.evaluate(load_checkpoint(tmp_path / "m.pt"), TASKS, 2, mpc=False, batch_envs=1, progress=False)
    np.testing.assert_array_equal(resumed, full[["episode", "seed", "return", "score", "steps"]].to_numpy())


def test_evaluation_progress_of_another_setting_is_refused(tmp_path):
    model = WorldModel(model_config(None, TASKS, **TINY))
    evaluation.evaluate(model, TASKS[:1], 1, mpc=False, episode_length=5, progress=False, resume=tmp_path / "p.json")
    with pytest.raises(ValueError, match="another evaluation .*different episodes"):
        evaluation.evaluate(model, TASKS[:1], 2, mpc=False, episode_length=5, progress=False,
                            resume=tmp_path / "p.json")
    (tmp_path / "p.json").write_text("{")
    with pytest.raises(ValueError, match="not the progress file of an evaluation"):
        evaluation.evaluate(model, TASKS[:1], 1, mpc=False, episode_length=5, progress=False,
                            resume=tmp_path / "p.json")


# ---------------------------------------------------------------------------------- disk full, read-only
FULL_DISK = """
import resource, signal, sys
import numpy as np, torch
from pathlib import Path
from tdmpc_opt_lib import data
from tdmpc_opt_lib.checkpoints import SaveError, atomic_save
out = Path(sys.argv[1])
atomic_save({"w": torch.zeros(10)}, out / "ckpt.pt")
data.make_synthetic(out / "ds", transitions=20, tasks=["cartpole-swingup"], episode_length=10)
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)                    # writes past the limit fail with EFBIG
resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, 20_000))      # as a full disk would
for write in (lambda: atomic_save({"w": torch.ones(100_000)}, out / "ckpt.pt"),
              lambda: data.make_synthetic(out / "ds", transitions=2000, tasks=["cartpole-swingup"],
                                          episode_length=10, overwrite=True)):
    try:
        write()
        print("written")
    except SaveError as e:
        print(f"SaveError errno={e.errno}: {e}")
"""


def test_a_full_disk_leaves_the_previous_checkpoint_and_dataset(tmp_path):
    r = _python(FULL_DISK.replace("sys.argv[1]", repr(str(tmp_path))))
    lines = r.stdout.strip().splitlines()
    assert r.returncode == 0 and len(lines) == 2, r.stderr
    assert lines[0].startswith(f"SaveError errno={errno.EFBIG}: ")
    assert "ckpt.pt: File too large; the previous ckpt.pt is unchanged" in lines[0]
    assert "ds: File too large; the previous ds is unchanged" in lines[1]
    assert torch.equal(torch.load(tmp_path / "ckpt.pt", weights_only=True)["w"], torch.zeros(10))
    assert data.Dataset.open(tmp_path / "ds", full_check=True).num_steps == 22
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt.pt", "ds"]        # no temporary leftovers


def test_a_read_only_folder_is_reported(tmp_path, monkeypatch):
    import tempfile
    atomic_save({"w": torch.zeros(3)}, tmp_path / "ckpt.pt")

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(tempfile, "mkstemp", read_only)
    monkeypatch.setattr(tempfile, "mkdtemp", read_only)
    with pytest.raises(SaveError, match="ckpt.pt: Read-only file system; the previous ckpt.pt is unchanged"):
        atomic_save({"w": torch.ones(3)}, tmp_path / "ckpt.pt")
    with pytest.raises(SaveError, match="ds: Read-only file system; ds was not written"):
        data.make_synthetic(tmp_path / "ds", transitions=20, tasks=TASKS, episode_length=10)
    assert torch.equal(torch.load(tmp_path / "ckpt.pt", weights_only=True)["w"], torch.zeros(3))
