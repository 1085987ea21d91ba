"""The benchmark scripts run end to end at a tiny scale and print every figure they promise."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def run(script: str, *args: str) -> str:
    proc = subprocess.run([sys.executable, str(BENCH / script), *args], capture_output=True, text=True,
                          cwd=BENCH, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def numbers(line: str) -> list[float]:
    return [float(x) for x in re.findall(r"\d+\.\d+", line)]


def test_bench_train_smoke(tmp_path):
    out = run("bench_train.py", "--transitions", "60000", "--rounds", "1", "--block", "1", "--batch-size", "16",
              "--tmp", str(tmp_path))
    rows = {name: next(ln for ln in out.splitlines() if ln.startswith(name))
            for name in ("size-1 student, from scratch", "size-1 student + size-5 teacher (d 0.4)",
                         "size-5 model, from scratch (the teacher)")}
    for name, line in rows.items():
        eager, eager_best, fused, fused_best = numbers(line[len(name):])
        assert 0 < eager <= eager_best and 0 < fused <= fused_best, line
    floors = [ln for ln in out.splitlines() if "GFLOP  floor" in ln]
    assert len(floors) == 3 and all(numbers(ln)[0] > 0 for ln in floors), out
    assert re.search(r"fp32 matmul: \d+ GFLOP/s before the timed blocks, \d+ after", out), out
    assert re.search(r"peak \d+ MiB \(dataset [\d,]+ MiB\)", out), out
    assert list(tmp_path.iterdir()) == [], "the synthetic dataset must be deleted afterwards"


def test_bench_planner_smoke(shared_dir):
    ckpt = shared_dir / "checkpoints" / "mt30_1M_steps_045dist_fp16.pt"
    if not ckpt.is_file():
        pytest.skip(f"{ckpt} is missing")
    out = run("bench_planner.py", "--checkpoint", str(ckpt), "--repeats", "1", "--no-compile")
    assert f"model: {ckpt}" in out
    ref = next(ln for ln in out.splitlines() if ln.startswith("reference (plain)"))
    ours = [ln for ln in out.splitlines() if ln.startswith("ours, eager")]
    assert len(ours) == 2 and numbers(ref)[-1] == 1.0
    for line in ours:
        ms_call, ms_env, vs_ref = numbers(line)
        assert ms_call > 0 and ms_env > 0 and vs_ref > 0, line
