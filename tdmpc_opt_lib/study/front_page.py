"""The report's front page (``reports/index.html``): one short paragraph per question with its number, 95 %
interval and notebook (from :func:`.findings.findings`), the key figures, then the tables and the notebook pages."""
from __future__ import annotations

import html
import time
from pathlib import Path

import pandas as pd

from . import ablations, findings, paper, plots
from .experiments import collect
from .params import RECORDED, resolve

STYLE = ("body{font-family:sans-serif;max-width:62em;margin:2em auto;line-height:1.45}table{border-collapse:collapse}"
         "td,th{border:1px solid #ccc;padding:2px 8px}h2{margin-top:1.6em}.q{margin:0.8em 0}")


def interval(r: pd.Series, signed: bool = False) -> str:
    """``12.34 (95 % CI 10.00 to 14.68)`` of a findings row (``+`` on differences)."""
    f = "{:+.2f}" if signed else "{:.2f}"
    ci = "" if pd.isna(r.ci95_low) else f" (95 % CI {f.format(r.ci95_low)} to {f.format(r.ci95_high)})"
    return f"{f.format(r.estimate)}{ci}"


def _get(table: pd.DataFrame, key: str) -> pd.Series | None:
    """The row with ``key``, or with a key ``<key>@...`` when ``key`` ends with ``@`` (None: no such row)."""
    rows = table[table.key.str.startswith(key) if key.endswith("@") else table.key == key]
    return rows.iloc[0] if len(rows) else None


def _detail(key: str) -> str:
    """What a key is about: ``0.4`` of ``effect@0.4``."""
    return key.split("@", 1)[1]


def _link(notebook: str) -> str:
    return f' <a href="{notebook}.html">{notebook}</a>'


def _verdict(r: pd.Series) -> str:
    if pd.isna(r.ci95_low):
        return "without an interval (one seed)"
    if r.ci95_low > 0 or r.ci95_high < 0:
        return f"resolved: the interval excludes 0 ({'a gain' if r.estimate > 0 else 'a loss'})"
    return "not resolved: the interval includes 0"


def _updates(n: int) -> str:
    return f"{n / 1e6:g}M" if n >= 1_000_000 else f"{n // 1000}k"


def distillation(table: pd.DataFrame) -> str:
    a, b, t = (_get(table, k) for k in ("distilled@", "scratch", "teacher"))
    eff = _get(table, f"effect@{_detail(a.key)}") if a is not None else None
    theirs = ", ".join(f"{d:+.2f} at batch {bs} / {_updates(n)} updates"
                       for bs, n, d in findings.paper_table2().itertuples(index=False))
    text = f"The paper's own picture (Table 2, single runs without intervals) is mixed: {theirs}."
    if eff is None:
        return f"Not measured in these results (run 04_ablations). {text}"
    teacher = f" The teacher scores {interval(t)} with the same planner." if t is not None else ""
    return (f"Students trained with reward distillation score {interval(a)} against {interval(b)} from scratch "
            f"({b.finding.split('(', 1)[1].rstrip(')')}). Paired by training seed and by evaluation episode, "
            f"distillation changes the score by <b>{interval(eff, True)}</b> normalized points, "
            f"{_verdict(eff)}.{teacher} {text}{_link(eff.notebook)}")


def best_d_coef(table: pd.DataFrame) -> str:
    best = _get(table, "best@")
    t1 = paper.table(1).dropna(subset=["d_coef"]).sort_values("d_coef")
    theirs = ", ".join(f"{r.d_coef:g}: {r.score:.2f}" for r in t1.itertuples())
    text = f"The paper's Table 1 (one run each) peaks at 0.4: {theirs}."
    if best is None:
        return f"Not measured in these results (run 04_ablations). {text}"
    effects = table[table.key.str.startswith("effect@")]
    each = "; ".join(f"d_coef {_detail(r.key)}: {interval(r, True)} ({_verdict(r)})" for _, r in effects.iterrows())
    return (f"Highest mean score: <b>d_coef {_detail(best.key)}</b>, {interval(best)}. "
            f"Each d_coef against from scratch, paired: {each}. {text}{_link(best.notebook)}")


def quantization(table: pd.DataFrame) -> str:
    parts = []
    for prefix, ref, who in (("released", "fp16", "The released MT30 student with MPPI"),
                             ("student", "fp32", "The MT-mini student with its policy prior")):
        sizes = table[table.key.str.startswith(f"{prefix}-size@")]
        items = []
        for r in sizes.itertuples():
            scheme = _detail(r.key)
            gap = _get(table, f"{prefix}-vs-{ref}@{scheme}")
            items.append(f"{scheme} {r.estimate:.2f} MiB" + ("" if gap is None else f", {interval(gap, True)}"))
        if items:
            parts.append(f"{who} (deployable size, score change against {ref} on the same episodes): "
                         + "; ".join(items) + ".")
    if not parts:
        return "Not measured in these results (run 05_quantization)."
    return " ".join(parts) + (" The paper's int8 and mixed recipes lose most of the score (paper: 28.45 fp16 "
                              "→ 13.53 mixed, 5.09 int8)." + _link("05_quantization"))


def released(table: pd.DataFrame) -> str:
    ours, gap = _get(table, "released"), _get(table, "released-vs-paper")
    if ours is None:
        return "No recorded MPPI run of the released student (python benchmarks/quantized_mpc.py)."
    public = float(paper.table("ref").score.iloc[0])
    return (f"Our evaluation of the paper's released fp16 student scores <b>{interval(ours)}</b> over "
            f"{ours.finding.split('(', 1)[1].rstrip(')')}, against the paper's 28.45 over 10 episodes per task: "
            f"a difference of {interval(gap, True)}, {_verdict(gap).split(':')[0]}. The protocol is the public "
            f"TD-MPC2 code's (500-step episodes, task score = return / 10; environments and model outputs match "
            f"the public code in the golden tests); the public 1M TD-MPC2 model scores {public:.2f} as the paper "
            f"reports it.{_link(ours.notebook)}")


QUESTIONS = (("Does reward distillation help at this scale?", distillation),
             ("Which d_coef is best?", best_d_coef),
             ("What does each quantization scheme cost in size and score?", quantization),
             ("Does our evaluation of the released student agree with the paper?", released))


def figures(results: Path, profile: str) -> list:
    """The d_coef curve beside the paper's Table 1, the per-seed paired differences of the main comparison, and
    score against size of the released student's quantization schemes, those the results support."""
    from .. import quantize

    out = []
    P = resolve("04_ablations", profile)
    runs = collect(results)
    if not runs.empty:
        runs = findings.comparable(runs, P)
        curve = findings.d_coef_curve(runs)
        if len(curve) > 1:
            out.append(plots.ablation(curve.assign(label=ablations.D_COEF_CURVE), ablations.paper_d_coef_curve(),
                                      "d_coef", "Normalized score vs d_coef (ours: mean and 95 % interval over seeds)"))
        eff = findings.paired(runs, P.d_coef)
        if eff is not None:
            out.append(plots.paired_differences(findings.per_seed(runs, P.d_coef), eff,
                                                f"Reward distillation (d_coef {P.d_coef:g}) minus from scratch, "
                                                "per training seed (same episodes)"))
    recorded = quantize.recorded_pooled(RECORDED)
    if recorded is not None:
        out.append(plots.size_vs_score(recorded, paper.table(4)).update_layout(
            title="Released MT30 student: checkpoint size vs MPPI score per scheme (paper's Table 4 beside)"))
    return out


def page(pages: list[tuple[str, float | None]], results: Path, profile: str, table: pd.DataFrame,
         tables: str) -> str:
    """The front page's HTML: findings, figures (plotly, loading ``plotly.min.js`` beside the page), the findings
    table, ``tables`` (HTML of the other tables) and the notebook links with their run times."""
    answers = "\n".join(f'<div class="q"><h3>{i}. {html.escape(q)}</h3><p>{answer(table)}</p></div>'
                        for i, (q, answer) in enumerate(QUESTIONS, start=1))
    figs = "\n".join(f.to_html(full_html=False, include_plotlyjs=False) for f in figures(results, profile))
    listed = "\n".join(f'<li><a href="{html.escape(name)}.html">{html.escape(name)}</a>'
                       f'{"" if sec is None else f" ({sec:.0f} s)"}</li>' for name, sec in pages)
    shown = table[findings.COLUMNS].round(2).to_html(index=False, na_rep="")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>TD-MPC-Opt report</title>"
            f"<script src='plotly.min.js'></script><style>{STYLE}</style></head><body>"
            f"<h1>TD-MPC-Opt: distilling multi-task TD-MPC2 — what we found</h1>"
            f"<p>Profile <b>{profile}</b>, generated {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}. "
            f"Intervals are 95 % t-intervals (paired differences: over training seeds; single models: over "
            f"episodes; quantization: over the per-task differences); "
            f"<a href='results/findings.csv'>results/findings.csv</a> holds every number below.</p>"
            f"<h2>Findings</h2>{answers}<h2>Key figures</h2>{figs or '<p>none yet</p>'}"
            f"<h2>Findings table</h2>{shown}<h2>Notebooks</h2><ol>{listed}</ol>"
            f"<h2>Tables</h2>{tables or '<p>none yet</p>'}</body></html>")
