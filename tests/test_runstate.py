"""The run-folder helpers shared by offline and online training: resume state, metrics CSV, schedules."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from tdmpc_opt_lib import data, evaluation, runstate
from tdmpc_opt_lib.checkpoints import CheckpointError, atomic_save

FORMAT = "tdmpc_opt_test/1"


class _Learner:
    """Stands in for training.Learner: an optimizer whose state must survive a resume."""

    def __init__(self, model: torch.nn.Module):
        self.optim = torch.optim.Adam(model.parameters(), lr=0.1)

    def step(self, model: torch.nn.Module) -> None:
        self.optim.zero_grad()
        model(torch.randn(4, 3)).square().sum().backward()
        self.optim.step()

    def state_dict(self) -> dict:
        return self.optim.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.optim.load_state_dict(state)


def _parts(tmp_path, seed: int = 0):
    torch.manual_seed(seed)
    model = torch.nn.Linear(3, 2)
    if not (tmp_path / "ds").exists():
        data.make_synthetic(tmp_path / "ds", transitions=100, tasks=["cartpole-swingup"], episode_length=20)
    sampler = data.WindowSampler(data.Dataset.open(tmp_path / "ds"), horizon=2, batch_size=4, seed=seed)
    return model, _Learner(model), sampler


def _advance(model, learner, sampler) -> dict:
    learner.step(model)
    return sampler.sample()


def test_fresh_run_has_no_state(tmp_path):
    assert runstate.RunState(tmp_path / "run" / "train.pt", FORMAT, {"lr": 1}).load() is None


def test_save_then_restore_continues_exactly(tmp_path):
    model, learner, sampler = _parts(tmp_path)
    _advance(model, learner, sampler)
    state_file = runstate.RunState(tmp_path / "train.pt", FORMAT, {"lr": 1})
    state_file.save(7, model, learner, sampler, episode=3)
    expected = _advance(model, learner, sampler), torch.rand(3), {k: v.clone() for k, v in model.state_dict().items()}

    model2, learner2, sampler2 = _parts(tmp_path, seed=1)              # other weights, optimizer and RNG streams
    state = runstate.RunState(tmp_path / "train.pt", FORMAT, {"lr": 1}).load()
    assert runstate.RunState.restore(state, model2, learner2, sampler2) == 7 and state["episode"] == 3
    batch = _advance(model2, learner2, sampler2)
    for k, v in expected[0].items():
        assert torch.equal(batch[k], v), k
    assert torch.equal(torch.rand(3), expected[1])
    for k, v in model2.state_dict().items():
        assert torch.equal(v, expected[2][k]), k


def test_reads_resume_files_written_before_the_helper(tmp_path):
    """The keys a run folder's train.pt has always held."""
    model, learner, sampler = _parts(tmp_path)
    atomic_save({"format": FORMAT, "step": 4, "run": {"lr": 1}, "model": model.state_dict(),
                 "learner": learner.state_dict(), "sampler": sampler.state_dict(),
                 "torch_rng": torch.get_rng_state()}, tmp_path / "train.pt")
    state = runstate.RunState(tmp_path / "train.pt", FORMAT, {"lr": 1}).load()
    assert runstate.RunState.restore(state, *_parts(tmp_path, seed=1)) == 4
    runstate.RunState(tmp_path / "saved.pt", FORMAT, {"lr": 1}).save(4, model, learner, sampler)
    assert set(torch.load(tmp_path / "saved.pt", weights_only=True)) == set(state)


def test_refuses_another_format_or_another_run(tmp_path):
    model, learner, sampler = _parts(tmp_path)
    runstate.RunState(tmp_path / "train.pt", FORMAT, {"lr": 1, "seed": 2}).save(1, model, learner, sampler)
    with pytest.raises(CheckpointError, match="tdmpc_opt_other/1"):
        runstate.RunState(tmp_path / "train.pt", "tdmpc_opt_other/1", {"lr": 1, "seed": 2}).load()
    with pytest.raises(ValueError, match=r"different run.*'lr': \(3, 1\)"):
        runstate.RunState(tmp_path / "train.pt", FORMAT, {"lr": 3, "seed": 2}).load()
    # a setting only one side records (a newer or an older version) is not compared
    assert runstate.RunState(tmp_path / "train.pt", FORMAT, {"lr": 1, "new": 0}).load()["step"] == 1
    assert runstate.RunState(tmp_path / "train.pt", FORMAT, {"lr": 1}).load()["step"] == 1


def test_run_settings_drop_the_ignored_fields():
    from tdmpc_opt_lib.training import TrainConfig
    run = runstate.run_settings(TrainConfig(data="d", out="o", steps=5), {"steps", "out"})
    assert "steps" not in run and "out" not in run and run["data"] == "d"


@pytest.mark.parametrize("every, step, before, expected", [
    (10, 10, 9, True), (10, 9, 8, False), (10, 25, 15, True), (10, 19, 10, False), (10, 40, 20, True),
    (0, 10, 9, False)])
def test_due_when_a_multiple_is_crossed(every, step, before, expected):
    assert runstate.due(every, step, before) is expected


def test_accumulate_sums_per_key():
    sums = {}
    runstate.accumulate(sums, {"a": torch.tensor(1.0)})
    runstate.accumulate(sums, {"a": torch.tensor(2.0), "b": torch.tensor(5.0)})
    assert sums == {"a": 3.0, "b": 5.0}


def test_metrics_csv_keeps_rows_up_to_the_resumed_step(tmp_path):
    path, cols = tmp_path / "metrics.csv", ("step", "loss", "note")
    log = runstate.MetricsCSV(path, cols, keep_until=0)
    for step in (1, 2, 3):
        log.append({"step": step, "loss": step / 3})
    with open(path, "a") as f:
        f.write("4,0.5")                                           # torn by a kill
    runstate.MetricsCSV(path, cols, keep_until=2).append({"step": 3, "loss": 9.0, "note": "x"})
    df = runstate.read_metrics(tmp_path)
    assert list(df.step) == [1, 2, 3] and df.loss.iloc[1] == pytest.approx(0.666667) and df.note.iloc[2] == "x"
    assert pd.isna(df.note.iloc[0])
    with pytest.raises(ValueError, match="different columns"):
        runstate.MetricsCSV(path, ("step", "other"), keep_until=3)


def test_evaluate_score_leaves_the_training_rng_alone(monkeypatch):
    seen = {}

    def fake_evaluate(model, tasks, episodes, seed, **kwargs):
        seen.update(kwargs, tasks=tasks, episodes=episodes, seed=seed)
        torch.rand(100)                                            # evaluation draws random numbers
        return pd.DataFrame({"task": ["cartpole-swingup"], "score": [np.float64(42.0)]})

    monkeypatch.setattr(evaluation, "evaluate", fake_evaluate)
    monkeypatch.setattr(evaluation, "normalized_score", lambda df: float(df.score.mean()))
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    assert runstate.evaluate_score(None, ["cartpole-swingup"], 2, 5, mpc=False) == 42.0
    assert torch.equal(torch.rand(3), expected)
    assert seen == {"tasks": ["cartpole-swingup"], "episodes": 2, "seed": 5, "mpc": False, "progress": False}
