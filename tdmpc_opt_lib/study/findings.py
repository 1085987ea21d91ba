"""The report's findings: one row per question with its estimate and 95 % interval (:mod:`.stats`), computed from
what the notebooks saved, written to ``results/findings.csv`` and, as text, to the front page and to the README's
results block (between :data:`README_BEGIN` and :data:`README_END`).
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pandas as pd

from .. import quantize
from ..checkpoints import atomic_write_text
from . import paper, stats
from .experiments import collect
from .params import MT_MINI_DIR, RECORDED, AblationParams, resolve

COLUMNS = ["finding", "estimate", "ci95_low", "ci95_high", "unit", "notebook"]
# in memory each row also has a ``key`` naming what it measures: ``teacher``, ``scratch``, ``distilled@<d_coef>``,
# ``effect@<d_coef>``, ``best@<d_coef>``, ``variant@<name>``, ``released``, ``released-vs-paper``,
# ``<released|student>-size@<scheme>``, ``released-vs-fp16@<scheme>``, ``student-vs-fp32@<scheme>``
POINTS = "normalized points"
SCORE = "normalized score"
README_BEGIN = "<!-- findings: generated from reports/results/findings.csv by `python -m tdmpc_opt_lib report` -->"
README_END = "<!-- end of findings -->"


def row(key: str, finding: str, interval: dict, unit: str, notebook: str) -> dict:
    """One findings row from an interval of :mod:`.stats` (or ``{"estimate": x}`` for a number without one)."""
    return {"key": key, "finding": finding, "estimate": interval["estimate"],
            "ci95_low": interval.get("ci95_low", math.nan), "ci95_high": interval.get("ci95_high", math.nan),
            "unit": unit, "notebook": notebook}


def paper_table2() -> pd.DataFrame:
    """The paper's Table 2 as differences: per batch size and training length, distilled minus from scratch
    (single runs, no intervals)."""
    t2 = paper.table(2)
    t2 = t2[t2.precision == "fp32"].pivot_table(index=["batch_size", "steps"], columns="method", values="score")
    out = (t2["distill"] - t2["from_scratch"]).dropna().rename("distilled - scratch").reset_index()
    return out.astype({"batch_size": int, "steps": int})


# ------------------------------------------------------------------------------ distillation (03/04)
def comparable(runs: pd.DataFrame, P: AblationParams) -> pd.DataFrame:
    """Runs at the base point's steps and batch size whose evaluations share one protocol (the most frequent one
    among them: episodes, planning, episode length, planner), so the runs of one seed saw the same episodes; the
    distilled ones only with the teacher most of them had (the base point's: Table 3's others have fewer runs)."""
    at = runs[(runs.steps == P.steps) & (runs.batch_size == P.batch_size)]
    if at.empty:
        return at
    if "teacher" in at and (at.d_coef > 0).any():
        main = at[at.d_coef > 0].teacher.value_counts().index[0]
        at = at[(at.d_coef == 0) | (at.teacher == main)]
    protocol = [c for c in ("eval_episodes", "eval_mpc", "episode_length", "num_samples", "iterations") if c in at]
    key = at[protocol].apply(lambda r: repr(tuple(r)), axis=1)
    return at[key == key.value_counts().index[0]]


def arm(runs: pd.DataFrame, d_coef: float, distill: str = "reward") -> pd.Series:
    """Normalized score per training seed of the runs with ``d_coef`` (0: from scratch) and variant."""
    sel = runs[(runs.d_coef == d_coef) & ((runs.distill == distill) | (d_coef == 0))]
    return sel.set_index("seed")["score"].sort_index()


def per_seed(runs: pd.DataFrame, d_coef: float, distill: str = "reward") -> pd.DataFrame:
    """Per training seed both arms have: ``seed``, the distilled and from-scratch scores, their ``difference``."""
    a, b = arm(runs, d_coef, distill), arm(runs, 0.0)
    seeds = a.index.intersection(b.index)
    return pd.DataFrame({"seed": seeds, "distilled": a[seeds].to_numpy(), "scratch": b[seeds].to_numpy(),
                         "difference": (a[seeds] - b[seeds]).to_numpy()})


def paired(runs: pd.DataFrame, d_coef: float, distill: str = "reward") -> dict | None:
    """:func:`.stats.paired_effect` of ``d_coef`` against from scratch over the seeds both have (None: < 2)."""
    d = per_seed(runs, d_coef, distill).set_index("seed")
    return stats.paired_effect(d.distilled, d.scratch) if len(d) >= 2 else None


def task_effects(runs: pd.DataFrame, d_coef: float, distill: str = "reward") -> pd.DataFrame:
    """Per task, ``d_coef`` minus from scratch paired by seed (the ``task:`` columns of the runs): ``task``,
    ``estimate``, ``ci95_low``, ``ci95_high``, ``seeds``."""
    a = runs[(runs.d_coef == d_coef) & (runs.distill == distill)].set_index("seed")
    b = runs[runs.d_coef == 0].set_index("seed")
    seeds = a.index.intersection(b.index)
    rows = []
    for c in (c for c in runs.columns if c.startswith("task:")):
        if len(seeds) >= 2:
            eff = stats.paired_effect(a.loc[seeds, c], b.loc[seeds, c])
            rows.append({"task": c[5:], "estimate": eff["estimate"], "ci95_low": eff["ci95_low"],
                         "ci95_high": eff["ci95_high"], "seeds": eff["n"]})
    return pd.DataFrame(rows, columns=["task", "estimate", "ci95_low", "ci95_high", "seeds"])


def d_coef_curve(runs: pd.DataFrame) -> pd.DataFrame:
    """Reward distillation along d_coef (0 = from scratch): ``d_coef``, mean ``score`` over seeds, its 95 %
    interval (``ci95_low``/``ci95_high``, half-width ``score_ci95``), ``seeds``, and the paired effect against
    from scratch on the seeds both have (``vs_scratch``, ``vs_scratch_low``, ``vs_scratch_high``)."""
    rows = []
    for d in sorted(set(runs[(runs.distill == "reward") | (runs.d_coef == 0)].d_coef)):
        scores = arm(runs, d)
        ci = stats.t_interval(scores.to_numpy())
        eff = paired(runs, d) if d > 0 else None
        rows.append({"d_coef": d, "score": ci["estimate"], "ci95_low": ci["ci95_low"], "ci95_high": ci["ci95_high"],
                     "score_ci95": ci["estimate"] - ci["ci95_low"], "seeds": ci["n"],
                     "vs_scratch": eff["estimate"] if eff else math.nan,
                     "vs_scratch_low": eff["ci95_low"] if eff else math.nan,
                     "vs_scratch_high": eff["ci95_high"] if eff else math.nan})
    return pd.DataFrame(rows, columns=["d_coef", "score", "ci95_low", "ci95_high", "score_ci95", "seeds",
                                       "vs_scratch", "vs_scratch_low", "vs_scratch_high"])


def distillation_rows(runs: pd.DataFrame, P: AblationParams) -> list[dict]:
    """The main comparison (d_coef ``P.d_coef`` vs from scratch, paired by seed and episode), both arms' scores,
    the best d_coef, and each latent variant against from scratch."""
    runs = comparable(runs, P)
    if runs.empty or arm(runs, 0.0).empty:
        return []
    setting = f"{P.steps} updates, batch {P.batch_size}"
    out = []
    for key, d, name in (("scratch", 0.0, "from scratch"),
                         (f"distilled@{P.d_coef:g}", P.d_coef, f"reward distillation d_coef {P.d_coef:g}")):
        s = arm(runs, d)
        if len(s):
            out.append(row(key, f"student score, {name} ({setting}, {len(s)} seeds)", stats.t_interval(s.to_numpy()),
                           SCORE, "04_ablations"))
    curve = d_coef_curve(runs)
    others = [d for d in curve.d_coef if d not in (0, P.d_coef)]
    for d in [P.d_coef, *others]:
        if eff := paired(runs, d):
            out.append(row(f"effect@{d:g}", f"reward distillation d_coef {d:g} minus from scratch ({setting}, paired over "
                           f"{eff['n']} seeds)", eff, POINTS, "04_ablations"))
    if len(curve) > 1:
        best = curve.loc[curve.score.idxmax()]
        out.append(row(f"best@{best.d_coef:g}", f"best d_coef by mean score: {best.d_coef:g} ({int(best.seeds)} seeds)",
                       {"estimate": best.score, "ci95_low": best.ci95_low, "ci95_high": best.ci95_high},
                       SCORE, "04_ablations"))
    for variant in sorted(set(runs.distill) - {"reward"}):
        if eff := paired(runs, P.d_coef, variant):
            out.append(row(f"variant@{variant}", f"{variant} distillation d_coef {P.d_coef:g} minus from scratch "
                           f"(paired over {eff['n']} seeds)", eff, POINTS, "04_ablations"))
    return out


# ------------------------------------------------------------------------------ teacher (01)
def teacher_rows(results: Path, reference: Path | None = MT_MINI_DIR) -> list[dict]:
    """The teacher's MPPI score with its interval over episodes: from 01 when it planned, else from the committed
    build's evaluation (``teacher_scores.csv``; its planner setting named)."""
    f01 = results / "01_teacher_episodes.csv"
    if f01.is_file():
        ep = pd.read_csv(f01).query("model == 'teacher'")
        if "protocol" in ep and len(ep) and ep.protocol.iloc[0].startswith("MPPI"):
            n = ep.groupby("task").size().min()
            return [row("teacher", f"teacher score, {ep.protocol.iloc[0]} ({n} episodes per task)",
                        stats.episode_interval(ep), SCORE, "01_teacher")]
    f = Path(reference) / "teacher_scores.csv" if reference else None
    if f is not None and f.is_file():
        ep = pd.read_csv(f).query("mode == 'mppi'")
        meta = json.loads(f.with_suffix(".json").read_text()).get("eval_planner", {})
        if len(ep):
            n = ep.groupby("task").size().min()
            setting = f"MPPI {meta.get('num_samples', '?')}x{meta.get('iterations', '?')}"
            return [row("teacher", f"teacher score, {setting} ({n} episodes per task, committed build)",
                        stats.episode_interval(ep), SCORE, "01_teacher")]
    return []


# ------------------------------------------------------------------------------ quantization (05, recorded)
def released_rows(recorded: Path = RECORDED) -> list[dict]:
    """The released MT30 student with MPPI (runs recorded by ``benchmarks/quantized_mpc.py``): fp16's score with
    its interval over episodes, beside the paper's 28.45; each scheme's size and its score change against fp16 on
    the same episodes (95 % t-interval over the per-task differences)."""
    table = quantize.recorded_pooled(recorded)
    if table is None:
        return []
    out = []
    fp16 = quantize.pooled_runs(recorded, ["fp16"]).iloc[0]
    eps = pd.concat([pd.read_csv(recorded / f"released_fp16_mpc_seed{s}.csv") for s in fp16.seeds.split(",")])
    ours = stats.episode_interval(eps)
    reported = float(paper.table(2).set_index("setting").score["best fp16"])
    n_tasks = eps.task.nunique()
    out.append(row("released", f"released student fp16, MPPI 512x6, our evaluation ({fp16.episodes} episodes, {n_tasks} tasks)",
                   ours, SCORE, "05_quantization"))
    out.append(row("released-vs-paper", f"released student fp16: our evaluation minus the paper's {reported:g}",
                   {k: ours[k] - reported for k in ("estimate", "ci95_low", "ci95_high")}, POINTS, "05_quantization"))
    for r in table.itertuples():
        out.append(row(f"released-size@{r.scheme}", f"released student {r.scheme}: deployable size", {"estimate": r.deployable_mib}, "MiB",
                       "05_quantization"))
        if r.scheme != "fp16":
            eff = stats.from_standard_error(r.vs_fp16, r.vs_fp16_se, n_tasks - 1)
            out.append(row(f"released-vs-fp16@{r.scheme}", f"released student {r.scheme} minus fp16, MPPI ({r.protocol.split(', ', 1)[1]})", eff,
                           POINTS, "05_quantization"))
    return out


def student_quantization_rows(results: Path) -> list[dict]:
    """Each scheme of the MT-mini student (05) against its fp32 on the same episodes: score change with a 95 %
    t-interval over the per-task differences, and the deployable size."""
    f05, fsum = results / "05_quantization_episodes.csv", results / "05_quantization_summary.csv"
    if not (f05.is_file() and fsum.is_file()):
        return []
    eps, sizes = pd.read_csv(f05), pd.read_csv(fsum, index_col=0)
    eps = eps[eps.model == "student"]
    if "fp32" not in set(eps.scheme):
        return []
    ref, out = eps[eps.scheme == "fp32"], []
    for scheme, g in eps.groupby("scheme", sort=False):
        name = f"student {scheme}"
        if name in sizes.index:
            out.append(row(f"student-size@{scheme}", f"MT-mini student {scheme}: deployable size", {"estimate": sizes.loc[name, "deployable_mib"]},
                           "MiB", "05_quantization"))
        if scheme != "fp32":
            gap, se = quantize.paired_difference(g, ref)
            out.append(row(f"student-vs-fp32@{scheme}", f"MT-mini student {scheme} minus fp32, policy prior ({g.groupby('task').size().min()} "
                           "episodes per task)", stats.from_standard_error(gap, se, g.task.nunique() - 1), POINTS,
                           "05_quantization"))
    return out


# ------------------------------------------------------------------------------ the table and its text
def findings(results: str | os.PathLike, profile: str | None = None, recorded: Path = RECORDED,
             reference: Path | None = MT_MINI_DIR) -> pd.DataFrame:
    """Every finding the saved results support: ``key`` and :data:`COLUMNS` (rows whose inputs are missing are left
    out)."""
    results = Path(results)
    P = resolve("04_ablations", profile)
    runs = collect(results)
    rows = teacher_rows(results, reference)
    rows += distillation_rows(runs, P) if not runs.empty else []
    rows += released_rows(recorded) + student_quantization_rows(results)
    return pd.DataFrame(rows, columns=["key", *COLUMNS])


def table(rows: list[dict]) -> pd.DataFrame:
    """Findings rows as shown and saved: :data:`COLUMNS` only."""
    return pd.DataFrame(rows, columns=["key", *COLUMNS])[COLUMNS]


def write(table: pd.DataFrame, results: str | os.PathLike) -> Path:
    """``results/findings.csv`` (numbers rounded to 3 decimals), written atomically."""
    out = Path(results) / "findings.csv"
    atomic_write_text(out, table[COLUMNS].round(3).to_csv(index=False))
    return out


def number(x: float) -> str:
    return "n/a" if pd.isna(x) else f"{x:.2f}"


def sentence(r: pd.Series) -> str:
    """A finding as one line: ``name: estimate unit (95 % CI low to high; notebook)``."""
    ci = "" if pd.isna(r.ci95_low) else f", 95 % CI {number(r.ci95_low)} to {number(r.ci95_high)}"
    return f"{r.finding}: {number(r.estimate)} {r.unit}{ci} ({r.notebook})"


def readme_block(table: pd.DataFrame) -> str:
    """The README's generated results lines, between the two markers: one bullet per finding, except that the
    deployable sizes share one bullet and so do the MT-mini student's quantization changes (every row is in
    ``findings.csv``)."""
    sizes = table.unit.eq("MiB")
    mini = table.finding.str.startswith("MT-mini student") & ~sizes
    lines = [f"- {sentence(r)}" for _, r in table[~sizes & ~mini].iterrows()]
    if sizes.any():
        items = ", ".join(f"{r.finding.replace(': deployable size', '')} {number(r.estimate)}"
                          for _, r in table[sizes].iterrows())
        lines.append(f"- deployable size in MiB: {items} ({table[sizes].notebook.iloc[0]})")
    if mini.any():
        items = "; ".join(f"{r.finding.split(' minus')[0].removeprefix('MT-mini student ')} {number(r.estimate)} "
                          f"[{number(r.ci95_low)}, {number(r.ci95_high)}]" for _, r in table[mini].iterrows())
        lines.append(f"- MT-mini student, score of each scheme minus fp32 in normalized points [95 % CI]: {items} "
                     f"({table[mini].notebook.iloc[0]})")
    lines = lines or ["- no findings yet: run `make report`"]
    return "\n".join([README_BEGIN, *lines, README_END])


def readme_section(text: str) -> str:
    """The generated block of a README's text (markers included); ValueError when the markers are missing."""
    if README_BEGIN not in text or README_END not in text:
        raise ValueError("README.md has no generated findings block (markers missing)")
    start = text.index(README_BEGIN)
    return text[start:text.index(README_END, start) + len(README_END)]


def update_readme(readme: str | os.PathLike, table: pd.DataFrame) -> bool:
    """Rewrite the README's generated block from ``table``; returns whether the file changed."""
    path = Path(readme)
    text = path.read_text(encoding="utf-8")
    new = text.replace(readme_section(text), readme_block(table))
    if new != text:
        atomic_write_text(path, new)
    return new != text


def read(results: str | os.PathLike) -> pd.DataFrame:
    """``results/findings.csv`` as written by :func:`write` (empty with :data:`COLUMNS` when missing)."""
    f = Path(results) / "findings.csv"
    return pd.read_csv(f) if f.is_file() else pd.DataFrame(columns=COLUMNS)
