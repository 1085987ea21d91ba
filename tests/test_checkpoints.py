"""Checkpoint I/O: the three TD-MPC-Opt releases, public layouts, our format, and bad inputs."""
from __future__ import annotations

import pickle

import pytest
import torch

from tdmpc_opt_lib.checkpoints import (CheckpointError, from_public, load_checkpoint, read_file, save_checkpoint,
                                       to_public)
from tdmpc_opt_lib.config import model_config
from tdmpc_opt_lib.world_model import WorldModel

RELEASES = {r: f"checkpoints/mt30_1M_steps_045dist_{r}.pt" for r in ("fp16", "mixed", "int8")}


@pytest.fixture(scope="module")
def releases(shared_dir):
    return {r: load_checkpoint(shared_dir / p) for r, p in RELEASES.items()}


def _predict(m: WorldModel) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    obs, a, task = torch.randn(30, 24, generator=g), torch.rand(30, 6, generator=g) * 2 - 1, torch.arange(30)
    with torch.no_grad():
        z = m.encode(obs, task)
        return {"z": z, "next": m.next(z, a, task), "reward": m.reward(z, a, task),
                "pi": m.pi(z, task)[1]["mean"], "q": m.Q(z, a, task, "all")}


def test_releases_load_as_size1_mt30(releases):
    for name, m in releases.items():
        assert m.cfg.model_size == 1 and m.cfg.num_tasks == 30 and not m.training, name
        assert all(p.dtype == torch.float32 for p in m.parameters())


def test_quantized_releases_follow_the_paper_recipe(releases):
    """int8 = round(w) with scale 1 on every tensor; mixed = fp16 for weight/bias keys, int8 for the Q params.

    The releases were quantized from fp32 weights, so rounding the fp16 copy moves a few values
    across .5: the integers agree on ≥ 99.9% of elements.
    """
    fp16 = releases["fp16"].state_dict()
    for name in ("int8", "mixed"):
        sd = releases[name].state_dict()
        same = total = 0
        for k, v in fp16.items():
            if name == "int8" or "Qs" in k:
                equal = sd[k] == torch.round(v).clamp(-128, 127)
                same, total = same + int(equal.sum()), total + equal.numel()
            else:
                assert torch.equal(sd[k], v), (name, k)
        assert same / total >= 0.999, (name, same / total)
    # scale 1.0 rounds nearly every weight to zero: that is why the paper's INT8 collapses
    w = releases["int8"]._dynamics[1].weight
    assert (w == 0).float().mean() > 0.85


def test_quantized_predictions_differ_as_recipe_implies(releases):
    p = {name: _predict(m) for name, m in releases.items()}
    # mixed keeps every non-Q tensor in fp16: encoder, dynamics, reward and policy are unchanged ...
    for key in ("z", "next", "reward", "pi"):
        torch.testing.assert_close(p["mixed"][key], p["fp16"][key])
    # ... while its Q heads (rounded to integers) and everything of int8 change a lot
    assert (p["mixed"]["q"] - p["fp16"]["q"]).abs().max() > 1.0
    for key in ("z", "reward", "q"):
        assert (p["int8"][key] - p["fp16"][key]).abs().max() > 0.1, key


@pytest.mark.parametrize("api", ["old", "new"])
def test_public_layouts_round_trip(releases, tmp_path, api):
    m = releases["fp16"]
    path = tmp_path / f"{api}.pt"
    torch.save({"model": to_public(m, api)}, path)
    again = load_checkpoint(path)
    for k, v in m.state_dict().items():
        assert torch.equal(again.state_dict()[k], v), k


def test_new_api_keys_look_like_public_code(releases):
    sd = to_public(releases["fp16"], "new")
    for key in ("_Qs.params.0.weight", "_detach_Qs_params.2.bias", "_target_Qs_params.1.ln.weight", "_action_masks",
                "log_std_min", "_encoder.state.0.ln.bias", "_task_emb.weight"):
        assert key in sd, key
    assert sd["_Qs.params.0.weight"].shape == (2, 384, 230)
    assert set(from_public(sd)) == set(releases["fp16"].state_dict())


def test_our_format_round_trips_exactly(tmp_path):
    cfg = model_config(None, ["cartpole-balance", "reacher-easy", "cup-catch"], enc_dim=64, mlp_dim=96,
                       latent_dim=32, num_q=3, task_dim=16)
    m = WorldModel(cfg)
    save_checkpoint(m, tmp_path / "m.pt", step=7)
    again = load_checkpoint(tmp_path / "m.pt")
    assert again.cfg.to_dict() == cfg.to_dict()
    for k, v in m.state_dict().items():
        assert torch.equal(again.state_dict()[k], v), k
    assert read_file(tmp_path / "m.pt")["step"] == 7
    assert not list(tmp_path.glob(".*tmp")), "atomic save left a temporary file"
    with pytest.raises(CheckpointError, match="trained on tasks"):
        load_checkpoint(tmp_path / "m.pt", task_set="mt30")


def test_wrong_model_size_names_expected_and_found(shared_dir):
    with pytest.raises(CheckpointError, match=r"model_size=5 requested.*size 1.*mlp_dim expected 512 found 384"):
        load_checkpoint(shared_dir / RELEASES["fp16"], model_size=5)


def test_wrong_task_set(shared_dir):
    with pytest.raises(CheckpointError, match="30 task embeddings.*has 2 tasks"):
        load_checkpoint(shared_dir / RELEASES["fp16"], task_set=["cartpole-balance", "cup-catch"])
    with pytest.raises(ValueError, match="unknown task"):
        load_checkpoint(shared_dir / RELEASES["fp16"], task_set=["cartpole-balanse"])


def test_missing_extra_and_misshaped_tensors_are_named(releases, tmp_path):
    sd = to_public(releases["fp16"], "old")
    del sd["_reward.1.ln.bias"]
    sd["_pi.0.bias"] = torch.zeros(7)
    sd["_extra.weight"] = torch.zeros(3)
    torch.save({"model": sd}, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(tmp_path / "bad.pt")
    msg = str(e.value)
    assert "_reward.1.ln.bias" in msg and "_extra.weight" in msg and "_pi.0.bias: expected (384,), found (7,)" in msg


def test_bad_files_give_clear_errors(shared_dir, tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "nope.pt")
    (tmp_path / "empty.pt").write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty"):
        load_checkpoint(tmp_path / "empty.pt")
    (tmp_path / "text.pt").write_text("hello, this is not a checkpoint\n")
    with pytest.raises(CheckpointError, match="cannot read"):
        load_checkpoint(tmp_path / "text.pt")
    data = (shared_dir / RELEASES["fp16"]).read_bytes()
    (tmp_path / "truncated.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupted"):
        load_checkpoint(tmp_path / "truncated.pt")
    with open(tmp_path / "pickle.pt", "wb") as f:
        pickle.dump({"model": {"x": object()}}, f)
    with pytest.raises(CheckpointError, match="cannot read"):
        load_checkpoint(tmp_path / "pickle.pt")
    torch.save({"model": {"foo": torch.zeros(2)}}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not a TD-MPC2 world model"):
        load_checkpoint(tmp_path / "other.pt")
    torch.save([1, 2, 3], tmp_path / "list.pt")
    with pytest.raises(CheckpointError, match="not a TD-MPC2 checkpoint"):
        load_checkpoint(tmp_path / "list.pt")
