"""The report builder executes notebooks with papermill and links them from an index page."""
from __future__ import annotations

import pytest

from tdmpc_opt_lib.report import build, notebooks


def test_notebooks_are_ordered_and_selectable():
    names = [p.stem for p in notebooks()]
    assert names == sorted(names) and "01_teacher" in names
    with pytest.raises(ValueError, match="unknown notebook"):
        notebooks(["07_nothing"])


def test_smoke_report(tmp_path):
    index = build("smoke", ["01_teacher"], tmp_path)
    page = index.read_text()
    assert '<a href="01_teacher.html">' in page and "01_teacher_summary" in page
    html = (tmp_path / "01_teacher.html").read_text()
    assert "normalized score" in html and "Plotly.newPlot" in html  # the figure is embedded, not dropped
    assert (tmp_path / "results" / "01_teacher_episodes.csv").is_file()
