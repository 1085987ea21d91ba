"""Damaged files: seeded byte flips and truncations of checkpoints, quantized files, safetensors exports and
dataset index files. Each case must load exactly the original or raise one of our errors; the cases run in a
child process with a time limit, so that a hang or an interpreter crash fails the test too."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TASKS = ["cartpole-swingup", "reacher-easy"]
TINY = dict(enc_dim=32, mlp_dim=32, latent_dim=16, task_dim=8)
# (what, file inside it, flips, truncations)
PLAN = [("checkpoint", "model.pt", 60, 15), ("quantized", "int8.pt", 60, 15),
        ("safetensors", "export/model.safetensors", 40, 10), ("safetensors", "export/config.json", 25, 5),
        ("dataset", "ds/index.json", 20, 5), ("dataset", "ds/episode_task.npy", 10, 3),
        ("dataset", "ds/episode_offset.npy", 10, 3), ("dataset", "ds/episode_length.npy", 10, 3),
        ("dataset", "ds/checksums.json", 10, 3)]


def _originals(root: Path) -> None:
    import torch

    from tdmpc_opt_lib import data
    from tdmpc_opt_lib.checkpoints import save_checkpoint
    from tdmpc_opt_lib.config import model_config
    from tdmpc_opt_lib.quantize import export_safetensors, save_quantized
    from tdmpc_opt_lib.world_model import WorldModel

    torch.manual_seed(0)
    model = WorldModel(model_config(None, TASKS, **TINY))
    save_checkpoint(model, root / "model.pt")
    save_quantized(model, "int8", root / "int8.pt", hessians={})
    export_safetensors(model, "int8", root / "export", hessians={})
    data.make_synthetic(root / "ds", transitions=200, tasks=TASKS, episode_length=20)


def _load(what: str, path: Path):
    """What a user would get: the loaded content, or our exception."""
    from tdmpc_opt_lib import data
    from tdmpc_opt_lib.checkpoints import load_checkpoint

    if what == "dataset":
        ds = data.Dataset.open(path, full_check=True)
        return {k: getattr(ds, k).tobytes() for k in ("obs", "action", "reward", "episode_task", "episode_offset",
                                                      "episode_length")} | {"tasks": ds.tasks}
    model = load_checkpoint(path)
    return {k: v.tobytes() if hasattr(v, "tobytes") else v.numpy().tobytes()
            for k, v in ((k, v.detach().numpy()) for k, v in model.state_dict().items())}


def fuzz(root: Path, seed: int = 0) -> dict:
    """Run every case of :data:`PLAN` under ``root``; returns outcome counts and the bad cases."""
    import numpy as np

    from tdmpc_opt_lib.checkpoints import CheckpointError
    from tdmpc_opt_lib.data import DatasetError

    _originals(root / "orig")
    rng = np.random.default_rng(seed)
    target = {"checkpoint": "model.pt", "quantized": "int8.pt", "safetensors": "export", "dataset": "ds"}
    expected = {what: _load(what, root / "orig" / name) for what, name in target.items()}
    outcomes, bad = Counter(), []
    for what, file, flips, truncations in PLAN:
        original = (root / "orig" / file).read_bytes()
        cases = [("flip", int(rng.integers(len(original))), int(rng.integers(1, 256))) for _ in range(flips)]
        cases += [("truncate", int(rng.integers(len(original))), 0) for _ in range(truncations)]
        for kind, pos, xor in cases:
            case = root / "case"
            shutil.rmtree(case, ignore_errors=True)
            shutil.copytree(root / "orig", case)
            damaged = bytearray(original)
            if kind == "flip":
                damaged[pos] ^= xor
            else:
                del damaged[pos:]
            (case / file).write_bytes(bytes(damaged))
            try:
                got = _load(what, case / target[what])
                outcome = "same content" if got == expected[what] else "DIFFERENT CONTENT"
            except (CheckpointError, DatasetError) as e:
                outcome = f"error {type(e).__name__}"
                if not str(e):
                    outcome = "EMPTY MESSAGE"
            except Exception as e:  # noqa: BLE001 - anything else is a finding
                outcome = f"UNEXPECTED {type(e).__name__}: {str(e)[:120]}"
            outcomes[f"{what}: {outcome}"] += 1
            if outcome.startswith(("UNEXPECTED", "DIFFERENT", "EMPTY")):
                bad.append(f"{file} {kind}@{pos}^{xor}: {outcome}")
    return {"cases": sum(outcomes.values()), "outcomes": dict(outcomes), "bad": bad}


def test_damaged_files_load_exactly_or_fail_clearly(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    r = subprocess.run([sys.executable, __file__, str(tmp_path)], env=env, cwd=REPO, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    result = json.loads(r.stdout.strip().splitlines()[-1])
    print(json.dumps(result, indent=1))
    assert result["cases"] == sum(f + t for _, _, f, t in PLAN) and result["bad"] == []
    assert all(result["outcomes"].get(f"{w}: error {e}", 0) > 0 for w, e in
               (("checkpoint", "CheckpointError"), ("quantized", "CheckpointError"),
                ("safetensors", "CheckpointError"), ("dataset", "DatasetError")))


if __name__ == "__main__":
    import torch
    torch.set_num_threads(1)
    print(json.dumps(fuzz(Path(sys.argv[1]))))
