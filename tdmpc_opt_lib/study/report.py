"""Regenerate the report: execute the notebooks in order with papermill, export each to HTML, and
write ``reports/index.html`` linking them with the headline results they saved.

    python -m tdmpc_opt_lib report [--profile default] [--only 01_teacher,...] [--out reports]
"""
from __future__ import annotations

import html
import json
import os
import time
from pathlib import Path

import pandas as pd

from ..checkpoints import atomic_write_text
from .params import MT_MINI_DIR, REPO, profile_name

NOTEBOOKS = REPO / "notebooks"


def notebooks(only: list[str] | None = None) -> list[Path]:
    """The report's notebooks in order (``NN_name.ipynb``), optionally restricted by name."""
    found = sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))
    if only:
        missing = sorted(set(only) - {p.stem for p in found})
        if missing:
            raise ValueError(f"unknown notebook(s) {missing}; known: {[p.stem for p in found]}")
        found = [p for p in found if p.stem in only]
    return found


def to_html(executed: Path) -> Path:
    """Export an executed notebook to an HTML page next to it. The plotly.js library that the notebook
    embeds (4.8 MB) is written once as ``plotly.min.js`` beside the pages, which load it from there."""
    import nbformat
    from nbconvert import HTMLExporter
    from plotly.offline import get_plotlyjs

    body, _ = HTMLExporter().from_notebook_node(nbformat.read(executed, as_version=4))
    js = get_plotlyjs()
    if js in body:
        write_plotly_js(executed.parent)
        body = body.replace(js, '</script><script src="plotly.min.js">')
    out = executed.with_suffix(".html")
    out.write_text(body, encoding="utf-8")
    return out


def write_plotly_js(folder: Path) -> Path:
    """``plotly.min.js`` in ``folder`` (written when missing or of another version), which the pages load."""
    from plotly.offline import get_plotlyjs

    js = get_plotlyjs()
    lib = folder / "plotly.min.js"
    if not lib.is_file() or lib.stat().st_size != len(js.encode()):
        lib.write_text(js, encoding="utf-8")
    return lib


def task_scores(results: str | os.PathLike, reference: str | os.PathLike | None = MT_MINI_DIR) -> pd.DataFrame:
    """Task × model table of mean scores from what the notebooks saved in ``results``: the teacher (01), every
    distillation configuration (03/04; runs of several seeds averaged), every quantized variant of each model
    (05), and the committed MT-mini teacher/students of ``reference``."""
    from .experiments import collect, over_seeds

    results, cols = Path(results), {}
    f01 = results / "01_teacher_episodes.csv"
    if f01.is_file():
        df = pd.read_csv(f01)
        for name, g in df.groupby("model", sort=False):
            cols[name] = g.groupby("task", sort=False).score.mean()
    runs = over_seeds(collect(results))
    for _, r in runs.iterrows():
        label = ("scratch" if r.d_coef == 0 else f"{r.distill} d{r.d_coef:g}") + f" {r.steps} steps bs{r.batch_size}"
        label += f" ({r.seeds} seeds)" if r.seeds > 1 else ""
        cols[label] = pd.Series({c[5:]: r[c] for c in runs.columns if c.startswith("task:")}, dtype=float)
    f05 = results / "05_quantization_episodes.csv"
    if f05.is_file():
        df = pd.read_csv(f05)
        for (model, scheme), g in df.groupby(["model", "scheme"], sort=False):
            cols[f"{model} {scheme}"] = g.groupby("task", sort=False).score.mean()
    for name in ("teacher", "student-distilled", "student-scratch"):
        f = Path(reference) / f"{name}_scores.csv" if reference else None
        if f is not None and f.is_file():
            df = pd.read_csv(f)
            for mode, g in df.groupby("mode", sort=False):
                cols[f"MT-mini {name} ({mode}, committed)"] = g.groupby("task", sort=False).score.mean()
    return pd.DataFrame(cols)


def headline(results: str | os.PathLike, reference: str | os.PathLike | None = MT_MINI_DIR) -> pd.DataFrame:
    """The report's headline: normalized score of teacher, distilled and from-scratch students (the longest runs
    of each kind, averaged over their seeds) and the quantized variants, over the tasks each was evaluated on;
    plus the committed MT-mini teacher and students of ``reference`` (``data/mt-mini``: longer runs, evaluated
    with MPPI too)."""
    from .experiments import collect, over_seeds

    results, rows = Path(results), []
    f01 = results / "01_teacher_episodes.csv"
    if f01.is_file():
        df = pd.read_csv(f01)
        for name, g in df.groupby("model", sort=False):
            rows.append((name, "01", g.groupby("task").score.mean().mean(), g.task.nunique()))
    runs = over_seeds(collect(results))
    if not runs.empty:
        for (d, kind), g in runs.groupby(["d_coef", "distill"]):
            r = g.sort_values(["steps", "batch_size"]).iloc[-1]
            label = "student from scratch" if d == 0 else f"student distilled ({kind}, d_coef {d:g})"
            label += f", {r.steps} steps, batch {r.batch_size}" + (f", mean of {r.seeds} seeds" if r.seeds > 1 else "")
            n = sum(c.startswith("task:") and pd.notna(r[c]) for c in runs.columns)
            rows.append((label, "03/04", r.score, n))
    f05 = results / "05_quantization_episodes.csv"
    if f05.is_file():
        df = pd.read_csv(f05)
        for (model, scheme), g in df.groupby(["model", "scheme"], sort=False):
            rows.append((f"{model}, quantized {scheme}", "05", g.groupby("task").score.mean().mean(), g.task.nunique()))
    for name in ("teacher", "student-distilled", "student-scratch"):
        f = Path(reference) / f"{name}_scores.json" if reference else None
        if f is not None and f.is_file():
            r = json.loads(f.read_text())
            label = f"MT-mini {name} ({r['settings']['steps']} updates, committed)"
            rows += [(f"{label}, policy prior", "data/mt-mini", r["score_policy_prior"], len(r["tasks"]["mppi"])),
                     (f"{label}, MPPI", "data/mt-mini", r["score_mppi"], len(r["tasks"]["mppi"]))]
    return pd.DataFrame(rows, columns=["model", "notebook", "normalized score", "tasks"]).set_index("model")


def save_csv(df: pd.DataFrame, out_dir: str | os.PathLike, name: str, index: bool = True) -> Path:
    """Write a notebook's result ``df`` to ``out_dir/name`` (the folder made if missing); returns the file."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    df.to_csv(out / name, index=index)
    return out / name


def index_page(pages: list[tuple[str, float | None]], results: Path, profile: str,
               table: pd.DataFrame | None = None) -> str:
    """HTML front page (:mod:`.front_page`): the findings ``table`` (default: computed from ``results``) as
    paragraphs and key figures, then the tables (headline and every ``*_summary.csv``), links to the notebook pages
    (with the run time of their last build)."""
    from . import findings, front_page

    table = findings.findings(results, profile) if table is None else table
    head = headline(results) if results.is_dir() else pd.DataFrame()
    tables = "" if head.empty else f"<h3>headline</h3>\n{head.round(2).to_html()}\n"
    tables += "\n".join(f"<h3>{html.escape(csv.stem)}</h3>\n{pd.read_csv(csv, index_col=0).round(2).to_html()}"
                        for csv in sorted(results.glob("*_summary.csv")))
    return front_page.page(pages, results, profile, table, tables)


def write_findings(out: Path, profile: str, readme: Path | None = None) -> Path:
    """Findings of the results in ``out/results`` to ``findings.csv``, the front page ``out/index.html`` (with
    ``plotly.min.js`` beside it) and, given ``readme``, its generated results block (from the CSV as written)."""
    from . import findings

    results = out / "results"
    table = findings.findings(results, profile)
    findings.write(table, results)
    if readme is not None:
        findings.update_readme(readme, findings.read(results))
    times_file = results / "page_times.json"
    timed = json.loads(times_file.read_text()) if times_file.is_file() else {}
    listed = [(nb.stem, timed.get(nb.stem)) for nb in notebooks() if (out / f"{nb.stem}.html").is_file()]
    write_plotly_js(out)
    index = out / "index.html"
    atomic_write_text(index, index_page(listed, results, profile, table))
    return index


def build(profile: str | None = None, only: list[str] | None = None, out: str | os.PathLike = REPO / "reports",
          device: str = "auto") -> Path:
    """Execute the notebooks (papermill, kernel in the notebooks folder, parameter ``device``) and write the HTML
    report."""
    import papermill as pm

    profile = profile_name(profile)
    out = Path(out).resolve()
    results = out / "results"
    out.mkdir(parents=True, exist_ok=True)
    pages = []
    for nb in notebooks(only):
        start = time.perf_counter()
        executed = out / nb.name
        # relative to the kernel's folder, so the pages do not show where this clone lives
        pm.execute_notebook(str(nb), str(executed), parameters={"profile": profile, "device": device,
                                                                "out_dir": os.path.relpath(results, NOTEBOOKS)},
                            cwd=str(NOTEBOOKS), progress_bar=False)
        to_html(executed)
        pages.append((nb.stem, time.perf_counter() - start))
        print(f"{nb.stem}: {pages[-1][1]:.0f} s -> {executed.with_suffix('.html')}")
    # pages executed earlier (``only``) stay in the index, with the run time recorded when they were built
    times_file = results / "page_times.json"
    timed = {**(json.loads(times_file.read_text()) if times_file.is_file() else {}),
             **{name: round(sec, 1) for name, sec in pages}}
    atomic_write_text(times_file, json.dumps(timed, indent=1, sort_keys=True) + "\n")
    # the README's results block follows the committed report (the default profile written into reports/)
    readme = REPO / "README.md" if profile == "default" and out == (REPO / "reports").resolve() else None
    index = write_findings(out, profile, readme)
    print(f"report: {index}" + (f"; findings also in {readme.name}" if readme else ""))
    return index


CHECK_MARK = "# CHECK_OUTPUT"
CHECKED_OUTPUTS = REPO / "tests" / "notebook_outputs.json"


def _checked(cell) -> bool:
    return cell.cell_type == "code" and cell.source.lstrip().startswith(CHECK_MARK)


def strip(path: str | os.PathLike) -> bool:
    """Remove every output and execution count from a notebook; returns whether the file changed."""
    import nbformat

    path = Path(path)
    nb = nbformat.read(path, as_version=4)
    before = nbformat.writes(nb)
    for cell in nb.cells:
        cell.metadata.pop("execution", None)
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    after = nbformat.writes(nb)
    if after != before:
        path.write_text(after + "\n", encoding="utf-8")
    return after != before


def checked_outputs(executed: str | os.PathLike) -> list[str]:
    """The text outputs (stdout + plain-text results) of the cells marked ``# CHECK_OUTPUT`` of an executed
    notebook: deterministic at the smoke profile, compared by ``tests/test_notebook_outputs.py``."""
    import nbformat

    out = []
    for cell in nbformat.read(executed, as_version=4).cells:
        if _checked(cell):
            out.append("".join(o.get("text", "") if o.output_type == "stream" and o.get("name") == "stdout"
                               else o.get("data", {}).get("text/plain", "") for o in cell.outputs))
    return out


def execute_smoke(nb: Path, dest: Path) -> Path:
    """Execute a notebook at the smoke profile (papermill) into ``dest``."""
    import papermill as pm

    pm.execute_notebook(str(nb), str(dest), parameters={"profile": "smoke"}, cwd=str(NOTEBOOKS), progress_bar=False)
    return dest


def strip_notebooks(record: bool = False) -> None:
    """Strip every notebook's outputs; with ``record``, also execute them at the smoke profile and write the
    outputs of their ``# CHECK_OUTPUT`` cells to :data:`CHECKED_OUTPUTS`."""
    import tempfile

    recorded = {}
    with tempfile.TemporaryDirectory() as tmp:
        for nb in notebooks():
            print(f"{nb.name}: {'stripped' if strip(nb) else 'unchanged'}")
            if record:
                outputs = checked_outputs(execute_smoke(nb, Path(tmp) / nb.name))
                if outputs:
                    recorded[nb.stem] = outputs
    if record:
        CHECKED_OUTPUTS.write_text(json.dumps(recorded, indent=1) + "\n", encoding="utf-8")
        print(f"recorded {sum(map(len, recorded.values()))} checked outputs in {CHECKED_OUTPUTS}")
