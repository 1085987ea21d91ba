"""Offline training loop (resume, distillation, teacher checks, CLI) and an online smoke run."""
from __future__ import annotations

import csv

import pytest
import torch

from tdmpc_opt_lib import data, fast, online, training
from tdmpc_opt_lib.checkpoints import load_checkpoint, save_checkpoint
from tdmpc_opt_lib.cli import main
from tdmpc_opt_lib.config import model_config
from tdmpc_opt_lib.world_model import WorldModel

TASKS = ["cartpole-swingup", "reacher-easy"]
TINY = dict(enc_dim=32, mlp_dim=32, latent_dim=16, task_dim=8)
TEACHER = dict(enc_dim=48, mlp_dim=48, latent_dim=24, task_dim=4, num_q=3)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    path = tmp_path_factory.mktemp("d") / "ds"
    return str(data.make_synthetic(path, transitions=2000, tasks=TASKS, episode_length=50))


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    torch.manual_seed(0)
    model = WorldModel(model_config(None, TASKS, **TEACHER))
    for p in model._reward[-1].parameters():               # a non-trivial reward head to distil from
        torch.nn.init.normal_(p, std=0.3)
    path = tmp_path_factory.mktemp("t") / "teacher.pt"
    save_checkpoint(model, path)
    return str(path)


def _cfg(dataset, out, **kw) -> training.TrainConfig:
    base = dict(data=dataset, out=str(out), steps=6, batch_size=16, log_every=1, checkpoint_every=2,
                model_size=None, model_overrides=TINY, seed=3)
    return training.TrainConfig(**{**base, **kw})


def _rows(out) -> list[dict]:
    with open(out / "metrics.csv") as f:
        return [{k: v for k, v in r.items() if k not in ("updates_per_s", "wall_s")} for r in csv.DictReader(f)]


@pytest.mark.parametrize("variant", [{}, {"d_coef": 0.4, "distill": "latent-linear"}])
def test_resume_after_kill_matches_uninterrupted_run(dataset, teacher, tmp_path, monkeypatch, variant):
    if variant:
        variant = {**variant, "teacher": teacher}
    full = training.train(_cfg(dataset, tmp_path / "full", **variant), progress=False)

    real_update, calls = training.Learner.update, []

    def dying_update(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 6:                                   # killed during step 6: checkpoint at 4, row 5 logged
            raise KeyboardInterrupt
        return real_update(self, *args, **kwargs)

    monkeypatch.setattr(training.Learner, "update", dying_update)
    with pytest.raises(KeyboardInterrupt):
        training.train(_cfg(dataset, tmp_path / "resumed", **variant), progress=False)
    assert [r["step"] for r in _rows(tmp_path / "resumed")] == ["1", "2", "3", "4", "5"]
    monkeypatch.setattr(training.Learner, "update", real_update)
    resumed = training.train(_cfg(dataset, tmp_path / "resumed", **variant), progress=False)

    for (name, a), b in zip(full.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name
    assert _rows(tmp_path / "full") == _rows(tmp_path / "resumed")
    if variant:
        assert _rows(tmp_path / "full")[-1]["distill"] != "" and _rows(tmp_path / "full")[-1]["latent_distill"] != ""
    assert load_checkpoint(tmp_path / "resumed" / "model.pt").cfg.latent_dim == TINY["latent_dim"]


def test_resume_refuses_a_different_run(dataset, tmp_path):
    training.train(_cfg(dataset, tmp_path, steps=2), progress=False)
    with pytest.raises(ValueError, match="different run"):
        training.train(_cfg(dataset, tmp_path, steps=4, lr=1e-3), progress=False)
    training.train(_cfg(dataset, tmp_path, steps=4), progress=False)      # extending the same run is fine
    assert [r["step"] for r in _rows(tmp_path)] == ["1", "2", "3", "4"]


def test_a_moved_run_resumes_but_other_data_is_refused(dataset, tmp_path):
    import shutil
    training.train(_cfg(dataset, tmp_path / "run", steps=2), progress=False)
    moved_data = shutil.copytree(dataset, tmp_path / "elsewhere" / "ds")
    shutil.move(tmp_path / "run", tmp_path / "moved")
    training.train(_cfg(moved_data, tmp_path / "moved", steps=4), progress=False)   # same content, new paths
    assert [r["step"] for r in _rows(tmp_path / "moved")] == ["1", "2", "3", "4"]
    other = data.make_synthetic(tmp_path / "other", transitions=300, tasks=TASKS, episode_length=20, seed=5)
    with pytest.raises(ValueError, match="data_digest"):
        training.train(_cfg(other, tmp_path / "moved", steps=6), progress=False)


def test_pca_distillation_and_frozen_teacher(dataset, teacher, tmp_path):
    cfg = _cfg(dataset, tmp_path, steps=2, teacher=teacher, d_coef=0.45, distill="latent-pca", pca_samples=64)
    training.train(cfg, progress=False)
    state = torch.load(tmp_path / "train.pt", weights_only=True)
    proj = state["learner"]["projection"]
    assert proj["components"].shape == (TINY["latent_dim"], TEACHER["latent_dim"])
    assert proj["components"].abs().sum() > 0

    t = load_checkpoint(teacher)
    before = {k: v.clone() for k, v in t.state_dict().items()}
    student = WorldModel(model_config(None, TASKS, **TINY))
    learner = training.Learner(student, training.UpdateConfig(d_coef=0.4), teacher=t)
    batch = data.WindowSampler(data.Dataset.open(dataset), 3, 16, seed=0).sample()
    out = learner.update(**batch)
    assert out["distill"] > 0 and not t.training
    assert all(torch.equal(before[k], v) for k, v in t.state_dict().items())
    assert all(p.grad is None for p in t.parameters())


def test_teacher_student_mismatch(dataset, tmp_path):
    other = WorldModel(model_config(None, ["cartpole-swingup", "cup-catch"], **TEACHER))
    save_checkpoint(other, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="task"):
        training.train(_cfg(dataset, tmp_path / "run", teacher=str(tmp_path / "other.pt"), d_coef=0.4), progress=False)
    assert not (tmp_path / "run").exists()
    student = model_config(None, TASKS, **TINY)
    with pytest.raises(ValueError, match="task list"):
        training.check_teacher(other.cfg, student)
    training.check_teacher(model_config(None, TASKS, **TEACHER), student)       # sizes may differ
    with pytest.raises(ValueError, match="d_coef"):
        training.Learner(WorldModel(student), training.UpdateConfig(d_coef=0.0), teacher=WorldModel(student))
    with pytest.raises(ValueError, match="d_coef"):
        training.Learner(WorldModel(student), training.UpdateConfig(d_coef=0.4))


def test_cli_train(dataset, tmp_path, capsys):
    rc = main(["train", "--data", dataset, "--out", str(tmp_path), "--steps", "2", "--batch-size", "8",
               "--log-every", "1", "--checkpoint-every", "1", "--model-size", "0", "--no-progress",
               *[a for k, v in TINY.items() for a in ("--override", f"{k}={v}")]])
    assert rc == 0 and (tmp_path / "model.pt").exists()
    assert main(["convert-data", str(tmp_path / "chunk_0.pt"), "--out", str(tmp_path / "x")]) == 2
    assert "pickle" in capsys.readouterr().err


def _online_cfg(out, steps):
    return online.OnlineConfig(task="cartpole-swingup", out=str(out), steps=steps, seed_steps=40, episode_length=40,
                               batch_size=16, checkpoint_every=80, model_size=None, model_overrides=TINY,
                               planner=dict(iterations=1, num_samples=16, num_elites=4, num_pi_trajs=2))


def test_online_smoke_and_resume(tmp_path):
    full = online.train_online(_online_cfg(tmp_path / "full", 120), progress=False)
    ds = data.Dataset.open(tmp_path / "full" / "dataset")
    assert (ds.num_episodes, ds.num_steps, ds.tasks) == (3, 123, ["cartpole-swingup"])
    rows = list(csv.DictReader(open(tmp_path / "full" / "metrics.csv")))
    assert [int(r["updates"]) for r in rows] == [0, 40 + 39, 40]    # pretraining on the seed data, then 1 per step
    online.train_online(_online_cfg(tmp_path / "resumed", 80), progress=False)
    resumed = online.train_online(_online_cfg(tmp_path / "resumed", 120), progress=False)
    for (name, a), b in zip(full.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name
    assert sorted(p.name for p in (tmp_path / "resumed").glob("buffer-*")) == ["buffer-000000120"]


def test_model_losses_match_a_per_step_reference(dataset):
    """The vectorised losses equal TD-MPC2's loop over time steps and Q heads (dropout off for determinism)."""
    from tdmpc_opt_lib import math
    m = WorldModel(model_config(None, TASKS, **TINY)).eval()
    for p in m.parameters():
        torch.nn.init.normal_(p, std=0.2)
    learner = training.Learner(m, training.UpdateConfig())
    b = data.WindowSampler(data.Dataset.open(dataset), 3, 16, seed=0).sample()
    obs, action, reward, task = b["obs"], b["action"], b["reward"], b["task"]
    with torch.no_grad():
        next_z = m.encode(obs[1:], task)
        td = reward + 0.99 * torch.rand_like(reward)
        total, _, out = learner.model_losses(obs, action, reward, task, next_z, td)
        z, cons, rew, val, c = m.encode(obs[0], task), 0.0, 0.0, 0.0, m.cfg
        for t in range(3):
            r_logits = m.reward(z, action[t], task)
            rew += 0.5 ** t * math.soft_ce(r_logits, reward[t, :, 0], c.num_bins, c.vmin, c.vmax).mean()
            for q in m.Q(z, action[t], task, "all"):
                val += 0.5 ** t * math.soft_ce(q, td[t, :, 0], c.num_bins, c.vmin, c.vmax).mean()
            z = m.next(z, action[t], task)
            cons += 0.5 ** t * torch.nn.functional.mse_loss(z, next_z[t])
    ref = {"consistency": cons / 3, "reward": rew / 3, "value": val / (3 * c.num_q)}
    for k, v in ref.items():
        assert torch.allclose(out[k], v, rtol=1e-5), k
    assert torch.allclose(total, 20 * ref["consistency"] + 0.1 * ref["reward"] + 0.1 * ref["value"], rtol=1e-5)


def test_fused_kernels_match_eager_losses_and_gradients():
    """fast.accelerate (C / compiled LayerNorm+Mish, the task embedding folded into per-task first-layer
    rows) changes speed, not results: losses and every parameter's gradient, the task embedding's included
    (dropout off in eval)."""
    import copy
    torch.manual_seed(0)
    eager = WorldModel(model_config(None, TASKS, **TEACHER)).eval()
    fused = fast.accelerate(copy.deepcopy(eager))
    fused.FOLD_MIN_ROWS = 1                                         # fold these few rows too
    obs = torch.randn(3, 8, eager.cfg.obs_dim)                      # tasks repeat over a horizon dim, as in training
    a, task = torch.rand(3, 8, eager.cfg.action_dim) * 2 - 1, torch.tensor([0, 1, 1, 0, 1, 1, 1, 0])
    outs = []
    for m in (eager, fused):
        torch.manual_seed(1)
        z = m.encode(obs, task)
        q = m.Q(z, a, task, "all")
        loss = m.next(z, a, task).square().sum() + m.reward(z, a, task).square().mean() + q.square().mean()
        loss = loss + m.pi(z, task)[1]["mean"].square().sum() + m.Q(z, a, task, "avg", detach=True).sum()
        loss.backward()
        outs.append((loss.detach(), [p.grad.clone() for p in m.parameters() if p.grad is not None]))
    torch.testing.assert_close(outs[1][0], outs[0][0], rtol=1e-5, atol=1e-5)
    for g_f, g_e in zip(outs[1][1], outs[0][1]):
        torch.testing.assert_close(g_f, g_e, rtol=1e-4, atol=1e-5)


def test_deleted_training_log_gives_a_clear_error(dataset, tmp_path):
    training.train(_cfg(dataset, tmp_path, steps=2), progress=False)
    assert list(training.read_metrics(tmp_path).step) == [1, 2]
    (tmp_path / "metrics.csv").unlink()
    with pytest.raises(FileNotFoundError, match="training log was deleted"):
        training.read_metrics(tmp_path)
    training.train(_cfg(dataset, tmp_path, steps=2), progress=False)   # the finished run loads; its log is empty
    with pytest.raises(ValueError, match="no logged rows"):
        training.read_metrics(tmp_path)


@pytest.mark.parametrize("max_norm", [1e-3, 1e3])
def test_clip_grad_norm_matches_torch(max_norm):
    """Same norm and bit-identical gradients as nn.utils.clip_grad_norm_, clipping (tiny max_norm) or not."""
    import copy
    torch.manual_seed(0)
    nets = [torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.Linear(7, 3)) for _ in range(2)]
    nets[1] = copy.deepcopy(nets[0])
    x = torch.randn(4, 5)
    for net in nets:
        net(x).square().sum().backward()
    ref = torch.nn.utils.clip_grad_norm_(nets[0].parameters(), max_norm, foreach=True)
    got = training.clip_grad_norm(nets[1].parameters(), max_norm)
    assert torch.equal(got, ref)
    for a, b in zip(nets[0].parameters(), nets[1].parameters()):
        assert torch.equal(a.grad, b.grad)
    assert (ref > max_norm) == (max_norm == 1e-3)                     # both regimes were exercised


def test_policy_loss_leaves_the_task_embedding_alone(monkeypatch):
    """The policy loss's gradient on the task embedding is not computed (the next zero_grad discarded it):
    three updates give bit-identical parameters to updates that compute it."""
    import copy
    torch.manual_seed(0)
    cfg = model_config(None, TASKS, **TEACHER)
    base = WorldModel(cfg)
    batch = {"obs": torch.randn(4, 16, cfg.obs_dim), "action": torch.rand(3, 16, cfg.action_dim) * 2 - 1,
             "reward": torch.rand(3, 16, 1), "task": torch.tensor([0, 1] * 8)}
    models = []
    for detach in (True, False):
        if not detach:                                    # the reference: pi computes the embedding's gradient
            pi = WorldModel.pi
            monkeypatch.setattr(WorldModel, "pi", lambda self, z, task, generator=None, detach=False:
                                pi(self, z, task, generator))
        torch.manual_seed(1)
        learner = training.Learner(copy.deepcopy(base), training.UpdateConfig(batch_size=16))
        for _ in range(3):
            learner.update(**batch)
        models.append(learner.model)
    # the leftover gradients differ (the reference's includes the policy loss's), the parameters do not
    assert not torch.allclose(models[0]._task_emb.weight.grad, models[1]._task_emb.weight.grad)
    for a, b in zip(models[0].state_dict().values(), models[1].state_dict().values()):
        assert torch.equal(a, b)


def test_every_train_setting_is_documented_and_on_the_command_line():
    """TrainConfig is the one declaration: each field has a docstring, which is its --help text."""
    import dataclasses
    from tdmpc_opt_lib.cli import build_parser, field_docs
    docs = field_docs(training.TrainConfig)
    fields = [f.name for f in dataclasses.fields(training.TrainConfig)]
    assert sorted(docs) == sorted(fields) and all(len(d) > 10 for d in docs.values())
    train = next(a for a in build_parser()._subparsers._group_actions[0].choices.items() if a[0] == "train")[1]
    dests = {a.dest for a in train._actions}
    assert set(fields) - {"model_overrides"} <= dests and "override" in dests
    assert next(a for a in train._actions if a.dest == "lr").help.startswith(docs["lr"])
