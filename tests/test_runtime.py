"""Process-level settings: malloc (applied on Linux/glibc, skipped on request) and oneDNN matmuls."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

CODE = "from tdmpc_opt_lib.fast.runtime import keep_freed_memory as k; print(k(), k())"


def _run(**env) -> str:
    out = subprocess.run([sys.executable, "-c", CODE], env={**os.environ, **env}, capture_output=True, text=True,
                         check=True)
    return out.stdout.strip()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="mallopt is glibc's")
def test_keep_freed_memory_applies_once_and_can_be_switched_off():
    assert _run(TDMPC_OPT_MALLOC="1") == "True True"        # mallopt accepted every setting; idempotent
    assert _run(TDMPC_OPT_MALLOC="0") == "False False"


def test_onednn_matmul_context_sets_and_restores_the_flag(monkeypatch):
    """On while inside (where the probe found oneDNN exact), restored after, even on an error; off on request and
    when the user chose a precision of their own."""
    import torch
    from tdmpc_opt_lib.fast import runtime
    mkldnn = torch.backends.mkldnn.matmul
    before = mkldnn.fp32_precision
    with runtime.onednn_fp32_matmul() as on:
        assert on == runtime.onednn_matmul_is_fp32() == runtime.onednn_matmul_active()
        assert mkldnn.fp32_precision == ("bf16" if on else before)
    assert mkldnn.fp32_precision == before and not runtime.onednn_matmul_active()
    with pytest.raises(KeyError):
        with runtime.onednn_fp32_matmul():
            raise KeyError("boom")
    assert mkldnn.fp32_precision == before
    monkeypatch.setenv("TDMPC_OPT_ONEDNN", "0")
    with runtime.onednn_fp32_matmul() as on:
        assert not on and mkldnn.fp32_precision == before
    monkeypatch.delenv("TDMPC_OPT_ONEDNN")
    mkldnn.fp32_precision = "tf32"
    try:
        with runtime.onednn_fp32_matmul() as on:
            assert not on and mkldnn.fp32_precision == "tf32"
    finally:
        mkldnn.fp32_precision = before


def test_onednn_probe_refuses_reduced_precision(monkeypatch):
    """Products with bfloat16-rounded inputs (what oneDNN computes on AMX machines) fail the probe."""
    import torch
    from tdmpc_opt_lib.fast import runtime
    rounded = lambda a, b: (a.bfloat16().float() @ b.bfloat16().float())
    monkeypatch.setattr(torch, "mm", rounded)
    monkeypatch.setattr(torch, "bmm", rounded)
    assert runtime._probe_onednn_matmul() is False
    monkeypatch.undo()
    assert runtime._probe_onednn_matmul() is runtime.onednn_matmul_is_fp32()


def test_training_update_is_float32_with_onednn(monkeypatch):
    """Two size-1 updates at batch 256 from the same state and batches, oneDNN on and off: every loss and
    gradient norm agrees to float32 rounding (measured: ≤ 5e-6 relative; bfloat16 matmuls miss by ~1e-3).
    Parameters are not compared: Adam's first steps (±lr wherever a gradient is non-zero) flip with its sign
    on the gradients that are ~0."""
    import copy
    import torch
    from tdmpc_opt_lib import training
    from tdmpc_opt_lib.config import model_config
    from tdmpc_opt_lib.world_model import WorldModel
    torch.manual_seed(0)
    from tdmpc_opt_lib import fast
    model = WorldModel(model_config(1, "mt30"))
    B, cfg = 256, model.cfg
    batch = dict(obs=torch.randn(4, B, cfg.obs_dim), action=torch.rand(3, B, cfg.action_dim) * 2 - 1,
                 reward=torch.rand(3, B, 1), task=torch.randint(0, cfg.num_tasks, (B,)))
    results = []
    for flag in ("0", "1"):
        monkeypatch.setenv("TDMPC_OPT_ONEDNN", flag)
        learner = training.Learner(fast.accelerate(copy.deepcopy(model)), training.UpdateConfig(batch_size=B))
        with fast.cpu_runtime():
            torch.manual_seed(1)
            learner.update(**batch)                     # the first update: reward and Q heads start at zero
            torch.manual_seed(2)
            results.append(learner.update(**batch))
    off, on = results
    for k in ("consistency", "reward", "value", "pi", "grad_norm", "pi_grad_norm"):
        torch.testing.assert_close(on[k], off[k], rtol=1e-4, atol=1e-7)
