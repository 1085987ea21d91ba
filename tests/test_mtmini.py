"""The MT-mini build pipeline at a micro scale: stages, skip/resume per task, the fp16 teacher file."""
from __future__ import annotations

import json

import pytest
import torch

from tdmpc_opt_lib import data, online, training
from tdmpc_opt_lib.study import mtmini
from tdmpc_opt_lib.checkpoints import load_checkpoint
from tdmpc_opt_lib import cli

TASKS = ("cartpole-swingup", "reacher-easy")
TINY = dict(enc_dim=32, mlp_dim=32, latent_dim=16)
PLANNER = dict(iterations=1, num_samples=16, num_elites=4, num_pi_trajs=2)
MICRO = mtmini.Settings(
    tasks=TASKS, steps={t: 150 for t in TASKS},
    online=dict(model_size=None, model_overrides=TINY, batch_size=16, seed_steps=50, episode_length=50,
                checkpoint_every=100, planner=PLANNER),
    teacher=dict(model_size=None, model_overrides={**TINY, "task_dim": 8}, steps=4, batch_size=16, log_every=2,
                 checkpoint_every=2),
    teacher_continued=dict(steps=3, batch_size=8, seed=2),
    student=dict(model_size=None, model_overrides={**TINY, "task_dim": 4}, steps=4, batch_size=16, seed=1, log_every=2,
                 checkpoint_every=2),
    eval_episodes=2, prior_episodes=1, mppi_episodes=1, eval_planner=PLANNER,
    eval_episode_length=20)


@pytest.fixture(scope="module", autouse=True)
def one_thread_eager():
    """Tiny models: one thread, and no torch.compile of the teacher's planner."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TDMPC_OPT_COMPILE", "0")
        yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("mtmini")
    summary = mtmini.build(root / "out", root / "work", "all", MICRO, progress=False)
    return root / "out", root / "work", summary


def test_build_publishes_datasets_scores_and_summary(built):
    out, work, summary = built
    for t in TASKS:
        ds = data.Dataset.open(out / "tasks" / t / "dataset")
        assert (ds.tasks, ds.num_episodes, ds.num_steps) == ([t], 3, 153)
        scores = json.loads((out / "tasks" / t / "scores.json").read_text())
        assert scores["steps"] == 150 and len(scores["episode_scores"]) == 2 and scores["train_wall_s"] > 0
        assert scores["settings"]["planner"] == PLANNER
    assert data.Dataset.open(work / "dataset").tasks == list(TASKS)
    assert json.loads((out / "build.json").read_text()) == summary
    files = [p for p in out.rglob("*") if p.is_file() and p.name not in ("build.json", "README.md")]
    assert summary["bytes"]["total"] == sum(p.stat().st_size for p in files) > summary["bytes"]["teacher.pt"]
    assert summary["teacher"]["score_mppi"] >= 0 and "reacher-easy" in (out / "README.md").read_text()
    assert set(summary["students"]) == {"student-distilled", "student-scratch"}
    assert "distilled (d_coef 0.4) vs from scratch" in (out / "README.md").read_text()


def test_students_share_everything_but_the_distillation(built):
    out, work, summary = built
    cfgs = {n: json.loads((work / n / "config.json").read_text()) for n in mtmini.STUDENTS}
    a, b = cfgs["student-distilled"], cfgs["student-scratch"]
    assert (a["d_coef"], b["d_coef"], b["teacher"]) == (0.4, 0.0, None) and a["teacher"].endswith("teacher.pt")
    assert {k: v for k, v in a.items() if k not in ("d_coef", "teacher", "out")} == \
        {k: v for k, v in b.items() if k not in ("d_coef", "teacher", "out")}
    for n in mtmini.STUDENTS:
        assert load_checkpoint(out / f"{n}.pt").cfg.model_size is None and summary["students"][n]["score_mppi"] >= 0


def test_teacher_file_is_fp16_and_loads(built):
    out, work, summary = built
    raw = torch.load(out / "teacher.pt", weights_only=True)["model"]
    assert {v.dtype for v in raw.values()} == {torch.float16}
    teacher, full = load_checkpoint(out / "teacher.pt"), load_checkpoint(work / "teacher-continued" / "model.pt")
    assert teacher.cfg.tasks.tasks == TASKS and next(teacher.parameters()).dtype == torch.float32
    assert 0 < mtmini.fp16_error(full, teacher) < 1e-2
    assert summary["teacher"]["max_abs_fp16_error"] == mtmini.fp16_error(full, teacher)


def test_teacher_is_trained_in_two_phases(built):
    """Phase 2 starts from phase 1's fp16 file with its own batch size and seed; both are recorded."""
    out, work, summary = built
    second = json.loads((work / "teacher-continued" / "config.json").read_text())
    assert (second["steps"], second["batch_size"], second["seed"]) == (3, 8, 2)
    assert second["init_from"] == str((work / "teacher-phase1.pt").resolve())
    phase1 = summary["teacher"]["phase1"]
    assert (phase1["settings"]["steps"], phase1["settings"]["batch_size"]) == (4, 16) and phase1["train_wall_s"] >= 0
    assert load_checkpoint(work / "teacher-phase1.pt").cfg.task_dim == 8
    assert "4 updates of batch 16 (seed 1" in (out / "README.md").read_text()


def test_complete_tasks_are_skipped_and_a_deleted_score_reruns_its_task(built, monkeypatch):
    out, work, _ = built
    calls = []

    def counting(cfg, progress=True):
        calls.append(cfg.task)
        return train_online(cfg, progress)

    train_online = online.train_online
    monkeypatch.setattr(online, "train_online", counting)
    monkeypatch.setattr(training, "train", lambda *a, **k: pytest.fail("the teacher was retrained"))
    mtmini.build(out, work, "all", MICRO, progress=False)
    assert calls == []
    (out / "tasks" / TASKS[1] / "scores.json").unlink()
    mtmini.build(out, work, "data", MICRO, progress=False)
    assert calls == [TASKS[1]] and mtmini.task_complete(out, TASKS[1])
    assert data.Dataset.open(out / "tasks" / TASKS[1] / "dataset").num_steps == 153   # resumed at its last step


def test_teacher_stage_needs_every_task(tmp_path):
    with pytest.raises(ValueError, match="incomplete"):
        mtmini.build(tmp_path / "out", tmp_path / "work", "teacher", MICRO, progress=False)
    with pytest.raises(ValueError, match="stage"):
        mtmini.build(tmp_path / "out", tmp_path / "work", "model", MICRO)


def test_cli_parses():
    args = cli.build_parser().parse_args(["mt-mini", "--stage", "data", "--jobs", "2"])
    assert (args.stage, args.out, args.work, args.jobs, args.func) == ("data", "data/mt-mini", "build/mt-mini", 2,
                                                                       cli._mt_mini)
