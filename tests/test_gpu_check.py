"""benchmarks/gpu_check.py runs end to end on the CPU at its quick scale and writes every section."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def test_gpu_check_quick_on_the_cpu(tmp_path, shared_dir):
    out = tmp_path / "gpu_check.json"
    proc = subprocess.run([sys.executable, str(BENCH / "gpu_check.py"), "--quick", "--device", "cpu", "--out", str(out),
                           "--shared", str(shared_dir)], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads(out.read_text())
    errors = {k: v["error"] for k, v in r.items() if isinstance(v, dict) and "error" in v}
    assert not errors, errors
    assert r["system"]["device"] == "cpu" and r["golden"]["within_tolerance"]
    assert r["agreement"]["loss_rel_error"] == 0 and r["agreement"]["planner_value_max_rel_error"] == 0
    assert r["updates"]["student alone"]["updates_per_s"] > 0
    assert r["updates"]["student + 317M teacher, fp32"]["updates_per_s"] > 0
    assert r["planner"]["ms_per_call_1_envs"] > 0
    assert r["resume"]["deterministic"]["identical"]
    assert r["mt30"].get("episodes") == 2 or "skipped" in r["mt30"]
