"""The files a profile's notebooks read, checked before anything runs: each missing one with the command that
provides it (``python -m tdmpc_opt_lib report --profile paper --check``)."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from .params import (MT_MINI_DATASET, MT_MINI_DIR, MT_MINI_TEACHER, NOTEBOOK_PROFILES, PAPER_DATA, PAPER_TEACHER,
                     PAPER_TEACHER_48M, RELEASED_FP16, Found, profile_name, rel)

HF_MODELS = "https://huggingface.co/nicklashansen/tdmpc2/resolve/main/multitask"
HF_DATA = "https://huggingface.co/datasets/nicklashansen/tdmpc2/resolve/main/mt30"
INPUTS = ("teacher", "released", "checkpoint", "dataset", "teachers")


def provider(path: str | Path) -> str:
    """The command that creates ``path`` (one of the inputs the profiles name)."""
    p = Path(path)
    if p == PAPER_DATA:
        chunks = " ".join(f"chunk_{i}.pt" for i in range(4))
        return (f"for i in 0 1 2 3; do curl -L -O {HF_DATA}/chunk_$i.pt; done && pip install tensordict && "
                f"python -m tdmpc_opt_lib convert-data {chunks} --out {rel(p)} --trust")
    if p in (PAPER_TEACHER, PAPER_TEACHER_48M):
        return f"curl -L --create-dirs -o {rel(p)} {HF_MODELS}/{p.name}"
    if p == MT_MINI_TEACHER:
        return "python -m tdmpc_opt_lib mt-mini --stage teacher"
    if p == Path(MT_MINI_DATASET) or p.is_relative_to(MT_MINI_DIR):
        return "python -m tdmpc_opt_lib mt-mini --stage data"
    if p == RELEASED_FP16:
        return f"copy the paper's released fp16 student to {rel(p)} (https://github.com/dmytro-kuzmenko/td-mpc-opt)"
    return f"provide {rel(p)}"


def _present(name: str, path: Path) -> bool:
    if name == "dataset":
        return (path / "index.json").is_file() or (
            path == Path(MT_MINI_DATASET) and (MT_MINI_DIR / "tasks").is_dir())
    return path.is_file()


def missing_inputs(profile: str | None = None) -> pd.DataFrame:
    """One row per input file a notebook of ``profile`` reads and that is missing: notebook, parameter, path,
    command (optional inputs looked up among several paths, such as the released student, are not listed)."""
    name = profile_name(profile)
    rows = []
    for notebook, profiles in NOTEBOOK_PROFILES.items():
        P = profiles[name]
        for field in INPUTS:
            value = getattr(P, field, None)
            if value is None or isinstance(value, Found):
                continue
            if field == "teacher" and getattr(P, "d_coef", 1) == 0:
                continue
            for path in (value if isinstance(value, (list, tuple)) else [value]):
                if not _present(field, Path(path)):
                    rows.append({"notebook": notebook, "parameter": field, "path": rel(path),
                                 "command": provider(path)})
    return pd.DataFrame(rows, columns=["notebook", "parameter", "path", "command"])


def check_report(profile: str | None = None) -> str:
    """A readable list of the missing inputs (grouped by file), or a line saying all are present."""
    missing = missing_inputs(profile)
    name = profile_name(profile)
    if missing.empty:
        return f"profile {name!r}: every input is present"
    lines = [f"profile {name!r}: {missing.path.nunique()} input(s) missing"]
    for path, g in missing.groupby("path", sort=False):
        lines.append(f"- {path} (needed by {', '.join(sorted(set(g.notebook + ':' + g.parameter)))})\n"
                     f"    {g.command.iloc[0]}")
    return "\n".join(lines)
