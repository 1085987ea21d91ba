"""The public TD-MPC2 formats for real: MT30 chunks written with tensordict and converted (resuming after a kill),
and 48M-/317M-shaped checkpoints in the new-API layout with their tensordict metadata entries."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

from tdmpc_opt_lib import data
from tdmpc_opt_lib.checkpoints import load_checkpoint, to_public
from tdmpc_opt_lib.config import model_config
from tdmpc_opt_lib.world_model import WorldModel

tensordict = pytest.importorskip("tensordict")
TASKS = ["cartpole-balance", "reacher-easy", "cup-catch"]


def write_public_chunks(ds: data.Dataset, folder, per_chunk: int) -> list:
    """``chunk_{i}.pt`` as the public MT30 release stores them: ``torch.save`` of a TensorDict of batch size
    [episodes, T+1] with obs, action, reward and task (per step)."""
    folder.mkdir(parents=True, exist_ok=True)
    plain = data.export_public(ds, folder / "plain", episodes_per_chunk=per_chunk)
    files = []
    for i, p in enumerate(plain):
        c = torch.load(p, weights_only=True)
        E, T1 = c["reward"].shape
        td = tensordict.TensorDict({"obs": c["obs"], "action": c["action"], "reward": c["reward"],
                                    "task": c["task"]}, batch_size=[E, T1])
        torch.save(td, folder / f"chunk_{i}.pt")
        files.append(folder / f"chunk_{i}.pt")
    return files


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    return data.Dataset.open(data.make_synthetic(tmp_path_factory.mktemp("s") / "src", transitions=900, tasks=TASKS,
                                                 episode_length=20, seed=2))


def _same(a: data.Dataset, b: data.Dataset) -> None:
    for name in ("obs", "action", "reward", "episode_task", "episode_offset", "episode_length"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)


def test_tensordict_chunks_convert(source, tmp_path, monkeypatch):
    chunks = write_public_chunks(source, tmp_path / "public", per_chunk=15)
    td = torch.load(chunks[0], weights_only=False)
    assert type(td).__name__ == "TensorDict" and tuple(td.batch_size) == (15, 21)
    monkeypatch.setattr(data.public, "BLOCK_EPISODES", 4)          # several blocks per chunk
    out = data.convert_public(chunks, tmp_path / "mt30", tasks=TASKS, trust=True, progress=False)
    _same(data.Dataset.open(out), source)
    assert not (tmp_path / ".mt30.converting").exists()


def test_conversion_resumes_after_a_kill(source, tmp_path):
    chunks = write_public_chunks(source, tmp_path / "public", per_chunk=10)
    script = (
        "import os, sys\n"
        "from tdmpc_opt_lib.data import public\n"
        "commit = public._ResumableWriter.commit\n"
        "def dying(self, chunk):\n"
        "    commit(self, chunk)\n"
        "    if len(self.done) == 2:\n"
        "        self.add(*self._last)\n"                 # half of the next chunk written, not committed
        "        os._exit(9)\n"
        "add = public._ResumableWriter.add\n"
        "def recording(self, *a):\n"
        "    self._last = a\n"
        "    add(self, *a)\n"
        "public._ResumableWriter.commit, public._ResumableWriter.add = dying, recording\n"
        f"public.convert_public(sys.argv[1:], {str(tmp_path / 'mt30')!r}, tasks={TASKS!r}, trust=True, progress=False)\n")
    r = subprocess.run([sys.executable, "-c", script, *map(str, chunks)], capture_output=True, text=True)
    assert r.returncode == 9, r.stderr
    work = tmp_path / ".mt30.converting"
    assert work.is_dir() and not (tmp_path / "mt30").exists()
    added = []
    real = data.public._ResumableWriter.add
    data.public._ResumableWriter.add = lambda self, *a: added.append(len(a[2])) or real(self, *a)
    try:
        out = data.convert_public(chunks, tmp_path / "mt30", tasks=TASKS, trust=True, progress=False)
    finally:
        data.public._ResumableWriter.add = real
    _same(data.Dataset.open(out), source)
    assert sum(added) == source.num_episodes - 20 and not work.exists()      # the two finished chunks were kept
    with pytest.raises(FileExistsError):
        data.convert_public(chunks, tmp_path / "mt30", tasks=TASKS, trust=True, progress=False)


@pytest.mark.parametrize("size", [48, 317])
def test_public_new_api_checkpoints_of_the_large_sizes_load_exactly(size, tmp_path, monkeypatch):
    for name in ("kaiming_uniform_", "uniform_", "trunc_normal_", "zeros_"):      # skip init: weights are set below
        monkeypatch.setattr(torch.nn.init, name, lambda t, *a, **k: t)
    torch.manual_seed(size)
    model = WorldModel(model_config(size, "mt30"))
    with torch.no_grad():
        for p in model.parameters():
            p.uniform_(-0.05, 0.05)
    sd = to_public(model, api="new")
    for prefix in ("_Qs.params", "_detach_Qs_params", "_target_Qs_params"):        # tensordict bookkeeping
        sd[f"{prefix}.__batch_size"] = torch.Size([])
        sd[f"{prefix}.__device"] = None
    path = tmp_path / f"mt30-{size}M.pt"
    torch.save({"model": sd}, path)
    del sd
    loaded = load_checkpoint(path, model_size=size)
    assert loaded.cfg.model_size == size
    want = model.state_dict()
    got = loaded.state_dict()
    assert want.keys() == got.keys() and all(torch.equal(want[k], got[k]) for k in want)
