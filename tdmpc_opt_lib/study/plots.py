"""Plotly figures used by the notebooks (each takes plain pandas data and returns a ``go.Figure``)."""
from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.express as px
import plotly.graph_objects as go
from plotly.subplots import make_subplots

LOSSES = ("consistency", "reward", "value", "pi", "distill", "latent_distill")


def score_bars(table: pd.DataFrame, title: str) -> go.Figure:
    """Grouped bars of a task × model table of scores (0-100)."""
    long = table.rename_axis("task").reset_index().melt(id_vars="task", var_name="model", value_name="score")
    fig = px.bar(long, x="task", y="score", color="model", barmode="group", range_y=[0, 100], title=title)
    fig.update_layout(xaxis_tickangle=-30, height=420)
    return fig


def loss_curves(runs: dict[str, pd.DataFrame], columns: tuple[str, ...] = LOSSES) -> go.Figure:
    """One panel per loss term; a line per run (``runs``: name → metrics.csv frame)."""
    cols = [c for c in columns if any(c in m and m[c].notna().any() and (m[c] != 0).any() for m in runs.values())]
    fig = make_subplots(rows=1, cols=len(cols), subplot_titles=cols, horizontal_spacing=0.04)
    palette = px.colors.qualitative.Plotly
    for i, (name, m) in enumerate(runs.items()):
        for j, c in enumerate(cols, start=1):
            if c in m:
                fig.add_trace(go.Scatter(x=m["step"], y=m[c], mode="lines", name=name, legendgroup=name,
                                         showlegend=j == 1, line=dict(color=palette[i % len(palette)])), 1, j)
    fig.update_yaxes(type="log")
    fig.update_layout(height=330, title="Training losses (log scale) vs update step")
    return fig


def return_distributions(episodes: pd.DataFrame) -> go.Figure:
    """Box plot of episode returns per task (a dataset's coverage of bad to good behaviour)."""
    fig = px.box(episodes, x="task", y="return", points="outliers", title="Episode returns in the dataset")
    fig.update_layout(height=380)
    return fig


def learning_curves(curves: pd.DataFrame) -> go.Figure:
    """Training-episode return vs environment step of the data-generating agents (``task``, ``step``, ``episode_return``)."""
    fig = px.line(curves, x="step", y="episode_return", color="task",
                  title="Data-generating agents: training-episode return (exploration noise on)")
    fig.update_layout(height=380)
    return fig


def ablation(ours: pd.DataFrame, paper: pd.DataFrame, x: str, title: str) -> go.Figure:
    """Our scores (left) next to the paper's (right) along one ablation axis; colour = method/variant. Error bars:
    the ``score_ci95`` column (half-width of the 95 % interval over seeds, :func:`experiments.over_seeds`), else
    ``score_se`` (standard error over seeds)."""
    fig = make_subplots(rows=1, cols=2, subplot_titles=("ours (MT-mini)", "paper (MT30)"))
    for col, df in ((1, ours), (2, paper)):
        for name, g in df.groupby("label", sort=False):
            g = g.sort_values(x)
            bar = next((g[c] for c in ("score_ci95", "score_se") if c in g), None)
            error = dict(type="data", array=bar.fillna(0).tolist()) if bar is not None and bar.notna().any() else None
            fig.add_trace(go.Scatter(x=g[x], y=g["score"], mode="lines+markers", name=f"{name}", error_y=error,
                                     legendgroup=f"{col}{name}", showlegend=True), 1, col)
    fig.update_xaxes(title_text=x)
    fig.update_yaxes(title_text="normalized score")
    fig.update_layout(height=380, title=title)
    return fig


def paired_differences(per_seed: pd.DataFrame, effect: dict, title: str) -> go.Figure:
    """Per training seed (``seed``, ``difference``) the paired score difference of two recipes, with their mean and
    95 % interval (``estimate``, ``ci95_low``, ``ci95_high``, :func:`~.stats.paired_effect`) and a zero line."""
    fig = go.Figure(go.Scatter(x=per_seed["seed"].astype(str), y=per_seed["difference"], mode="markers",
                               name="one training seed", marker=dict(size=9)))
    fig.add_hrect(y0=effect["ci95_low"], y1=effect["ci95_high"], fillcolor="royalblue", opacity=0.15, line_width=0,
                  annotation_text="95 % interval", annotation_position="top left")
    fig.add_hline(y=effect["estimate"], line_color="royalblue", annotation_text=f"mean {effect['estimate']:+.2f}")
    fig.add_hline(y=0, line_dash="dot", line_color="grey")
    fig.update_layout(xaxis_title="training seed", yaxis_title="difference (normalized points)", height=360,
                      title=title)
    return fig


def task_differences(delta: pd.DataFrame) -> go.Figure:
    """Grouped bars of :func:`~.experiments.distilled_minus_scratch`: per task, distilled minus from-scratch score."""
    return px.bar(delta, x="task", y="distilled - scratch", color="run", barmode="group",
                  title="Task score difference: distilled minus from scratch")


def heatmap(table: pd.DataFrame, title: str) -> go.Figure:
    """Task × model heatmap of scores with the values written in the cells."""
    fig = px.imshow(table.values, x=list(table.columns), y=list(table.index), zmin=0, zmax=100,
                    color_continuous_scale="Viridis", text_auto=".1f", aspect="auto", title=title)
    fig.update_layout(height=120 + 40 * len(table))
    return fig


def size_vs_score(table: pd.DataFrame, paper: pd.DataFrame | None = None) -> go.Figure:
    """Checkpoint size (MiB, with target Qs) vs normalized score per quantization scheme, the paper's Table 4 beside."""
    fig = go.Figure(go.Scatter(x=table["full_mib"], y=table["score"], mode="markers+text", text=table["scheme"],
                               textposition="top center", name="ours"))
    if paper is not None:
        fig.add_trace(go.Scatter(x=paper["size_mib"], y=paper["score"], mode="markers+text", text=paper["setting"],
                                 textposition="bottom center", name="paper Table 4 (MT30, 1M student)",
                                 marker=dict(symbol="diamond")))
    fig.update_layout(xaxis_title="checkpoint size (MiB, with target Qs)", yaxis_title="normalized score",
                      height=400, title="Quantization: size vs score")
    return fig


def frames(images: list[np.ndarray], labels: list[str]) -> go.Figure:
    """A row of rendered frames (RGB arrays of equal shape) with captions."""
    fig = px.imshow(np.stack(images), facet_col=0, facet_col_wrap=len(images), binary_string=True)
    for ann, label in zip(fig.layout.annotations, labels):
        ann.text = label
    fig.update_xaxes(showticklabels=False)
    fig.update_yaxes(showticklabels=False)
    fig.update_layout(height=260, margin=dict(l=10, r=10, t=40, b=10))
    return fig
