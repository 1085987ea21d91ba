"""Dataset format, window sampler, public-chunk conversion and failure modes."""
from __future__ import annotations

import json
import mmap

import numpy as np
import pytest
import torch

from tdmpc_opt_lib import data

TASKS = ["cartpole-swingup", "reacher-easy", "cup-catch"]


def _tagged_dataset(path, lengths=(5, 2, 9, 4, 6, 12, 3), obs_dim=4, action_dim=2):
    """Episodes whose obs carry (episode, row), actions/rewards the row index, so windows can be checked."""
    with data.DatasetWriter(path, TASKS, obs_dim, action_dim) as w:
        for e, n in enumerate(lengths):
            t = np.arange(n, dtype=np.float32)
            obs = np.stack([np.full(n, e, np.float32), t], -1)              # narrower than obs_dim: padded
            action = np.stack([t, -t], -1)
            action[0] = np.nan
            reward = 1000 * e + t
            reward[0] = np.nan
            w.add(obs[None], action[None], reward[None], e % len(TASKS))
    return data.Dataset.open(path)


def test_format_roundtrip_and_index(tmp_path):
    ds = _tagged_dataset(tmp_path / "ds")
    assert (ds.num_episodes, ds.num_steps, ds.obs_dim, ds.action_dim) == (7, 41, 4, 2)
    assert isinstance(ds.obs, np.memmap)
    index = json.loads((tmp_path / "ds" / "index.json").read_text())
    assert index["tasks"] == TASKS and index["transitions"] == 41 - 7
    np.testing.assert_array_equal(ds.episode_offset, [0, 5, 7, 16, 20, 26, 38])
    np.testing.assert_array_equal(ds.obs[7:9, :2], [[2, 0], [2, 1]])
    assert np.all(ds.obs[:, 2:] == 0)


def test_windows_stay_inside_episodes_and_cover_every_task(tmp_path):
    ds = _tagged_dataset(tmp_path / "ds")
    H = 3
    s = data.WindowSampler(ds, horizon=H, batch_size=4096, seed=0)
    assert s.num_windows == sum(max(n - H, 0) for n in ds.episode_length)
    b = s.sample()
    assert b["obs"].shape == (H + 1, 4096, 4) and b["action"].shape == (H, 4096, 2)
    assert b["reward"].shape == (H, 4096, 1) and b["task"].shape == (4096,)
    ep, row = b["obs"][..., 0], b["obs"][..., 1]
    assert torch.all(ep == ep[0]), "a window crosses an episode boundary"
    assert torch.all(row == row[0] + torch.arange(H + 1)[:, None]), "window rows are not consecutive"
    # actions/rewards are those of window steps 1..H (never an episode's NaN first row)
    assert torch.all(b["action"][..., 0] == row[1:]) and not torch.isnan(b["reward"]).any()
    assert torch.all(b["reward"][..., 0] == 1000 * ep[1:] + row[1:])
    assert torch.all(b["task"] == ep[0].long() % len(TASKS))
    assert set(b["task"].tolist()) == {0, 1, 2}
    # uniform over windows: episode frequencies follow their window counts
    counts = np.bincount(ep[0].long().numpy(), minlength=7) / 4096
    expected = np.maximum(ds.episode_length - H, 0) / s.num_windows
    np.testing.assert_allclose(counts, expected, atol=0.03)
    assert counts[1] == counts[6] == 0  # 2- and 3-step episodes have no 4-step window


def test_task_subset_and_state_restore(tmp_path):
    ds = _tagged_dataset(tmp_path / "ds")
    s = data.WindowSampler(ds, horizon=2, batch_size=64, seed=3, tasks=["reacher-easy"])
    assert set(s.sample()["task"].tolist()) == {1}
    state = s.state_dict()
    a = s.sample()
    s2 = data.WindowSampler(ds, horizon=2, batch_size=64, seed=99, tasks=["reacher-easy"])
    s2.load_state_dict(state)
    assert torch.equal(a["obs"], s2.sample()["obs"])
    with pytest.raises(ValueError, match="not in the dataset"):
        data.WindowSampler(ds, tasks=["walker-run"])


@pytest.mark.parametrize("damage", ["truncate", "garbage", "missing", "shape", "index"])
def test_damaged_dataset_gives_clear_error(tmp_path, damage):
    _tagged_dataset(tmp_path / "ds")
    f = tmp_path / "ds" / "obs.npy"
    if damage == "truncate":
        f.write_bytes(f.read_bytes()[:300])
    elif damage == "garbage":
        f.write_bytes(b"not a numpy file at all")
    elif damage == "missing":
        f.unlink()
    elif damage == "shape":
        np.save(f, np.zeros((41, 3), np.float32))
    else:
        f = tmp_path / "ds" / "index.json"
        f.write_text("{ truncated")
    with pytest.raises(data.DatasetError, match=f.name):
        data.Dataset.open(tmp_path / "ds")


def test_failed_write_leaves_nothing_behind(tmp_path):
    with pytest.raises(RuntimeError):
        with data.DatasetWriter(tmp_path / "ds", TASKS, 4, 2) as w:
            w.add(np.zeros((2, 5, 4)), np.zeros((2, 5, 2)), np.zeros((2, 5)), [0, 1])
            raise RuntimeError("killed")
    with pytest.raises(ValueError, match="task index"):
        with data.DatasetWriter(tmp_path / "ds", TASKS, 4, 2) as w:
            w.add(np.zeros((1, 5, 4)), np.zeros((1, 5, 2)), np.zeros((1, 5)), 7)
    assert list(tmp_path.iterdir()) == []


def test_public_chunk_round_trip(tmp_path):
    src = data.make_synthetic(tmp_path / "src", transitions=600, tasks=TASKS, episode_length=20, seed=1)
    ds = data.Dataset.open(src)
    chunks = data.export_public(ds, tmp_path / "public", episodes_per_chunk=12)
    assert len(chunks) == 3
    c = torch.load(chunks[0], weights_only=True)
    assert c["obs"].shape == (12, 21, 8) and c["task"].shape == (12, 21) and torch.isnan(c["reward"][:, 0]).all()
    with pytest.raises(data.UntrustedFileError, match="pickle"):
        data.convert_public(chunks, tmp_path / "back", tasks=TASKS)
    back = data.Dataset.open(data.convert_public(chunks, tmp_path / "back", tasks=TASKS, trust=True))
    for name in ("obs", "action", "reward", "episode_task", "episode_offset", "episode_length"):
        np.testing.assert_array_equal(getattr(back, name), getattr(ds, name), err_msg=name)
    assert back.tasks == TASKS


def test_truncated_public_chunk_leaves_nothing_behind(tmp_path):
    ds = data.Dataset.open(data.make_synthetic(tmp_path / "src", transitions=200, tasks=TASKS, episode_length=20))
    chunks = data.export_public(ds, tmp_path / "public", episodes_per_chunk=5)
    chunks[1].write_bytes(chunks[1].read_bytes()[:1000])
    with pytest.raises(data.DatasetError, match="chunk_1.pt"):
        data.convert_public(chunks, tmp_path / "out" / "converted", tasks=TASKS, trust=True)
    assert list((tmp_path / "out").iterdir()) == []


def test_buffer_save_load_and_merge(tmp_path):
    buf = data.EpisodeBuffer(["cartpole-swingup"], 5, 1, capacity=4)
    for e in range(3):
        obs = np.random.default_rng(e).standard_normal((11, 5)).astype(np.float32)
        buf.add_episode(obs, np.ones((11, 1)), np.arange(11.0), 0)
    assert buf.dataset.num_steps == 33 and data.WindowSampler(buf, horizon=3).num_windows == 24
    data.save(buf.dataset, tmp_path / "a")
    again = data.EpisodeBuffer.from_dataset(data.Dataset.open(tmp_path / "a"))
    np.testing.assert_array_equal(again.dataset.obs, buf.dataset.obs)
    data.save(data.Dataset.open(data.make_synthetic(tmp_path / "s", 40, ["reacher-easy"], 10)), tmp_path / "b")
    merged = data.Dataset.open(data.merge([tmp_path / "a", tmp_path / "b"], tmp_path / "m", TASKS))
    assert merged.obs_dim == 6 and merged.action_dim == 2 and merged.num_episodes == 7
    np.testing.assert_array_equal(merged.episode_task, [0, 0, 0, 1, 1, 1, 1])
    np.testing.assert_array_equal(merged.obs[:33, :5], buf.dataset.obs)
    assert np.all(merged.obs[:33, 5] == 0)


def test_synthetic_dataset(tmp_path):
    ds = data.Dataset.open(data.make_synthetic(tmp_path / "s", transitions=1000, tasks="mt-mini", episode_length=50,
                                               episodes_per_block=7))
    assert ds.num_episodes == 20 and ds.num_steps == 1020 and ds.obs_dim == 9
    first = ds.episode_offset
    assert np.isnan(ds.reward[first]).all() and not np.isnan(np.delete(ds.reward, first)).any()
    pendulum = ds.tasks.index("pendulum-spin")   # obs dim 3 of 9: the rest is padding
    rows = np.concatenate([np.arange(o, o + n) for o, n, t in zip(ds.episode_offset, ds.episode_length,
                                                                   ds.episode_task) if t == pendulum])
    assert np.all(ds.obs[rows, 3:] == 0)


def test_mmap_advice_follows_dataset_size(tmp_path, monkeypatch):
    if not hasattr(mmap, "MADV_RANDOM"):
        pytest.skip("no madvise on this OS")
    assert data.mmap_advice(50, ram=100) == mmap.MADV_NORMAL       # the page cache can hold it: fault-around
    assert data.mmap_advice(51, ram=100) == mmap.MADV_RANDOM       # larger than half the memory: no read-ahead
    assert data.mmap_advice(10, ram=0) == mmap.MADV_RANDOM         # memory unknown: the safe choice
    asked = []
    real = data.mmap_advice
    monkeypatch.setattr(data.storage, "mmap_advice", lambda n: asked.append(n) or real(n, ram=0))
    ds = _tagged_dataset(tmp_path / "ds")
    assert asked == [41 * 4 * (4 + 2 + 1)]                          # obs, action and reward bytes
    assert ds.obs[7, 0] == 2
