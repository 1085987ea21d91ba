"""The report builder executes notebooks with papermill and links them from an index page."""
from __future__ import annotations

import pytest

from tdmpc_opt_lib.study.report import build, notebooks


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
    assert (tmp_path / "plotly.min.js").stat().st_size > 1e6 and len(html) < 2e6   # the library once, beside
    assert (tmp_path / "results" / "01_teacher_episodes.csv").is_file()
    first = page[page.index('01_teacher</a>'):].split("</li>")[0]
    page = build("smoke", ["02_data"], tmp_path).read_text()          # a later partial build keeps 01 listed,
    assert first in page and first.endswith(" s)")                    # with the time of its own build
    assert '<a href="02_data.html">02_data</a> (' in page


def test_committed_notebooks_are_stripped(tmp_path):
    """Outputs are not committed (the report carries them); the checked cells' outputs live in tests/."""
    import shutil

    from tdmpc_opt_lib.study.report import strip
    for nb in notebooks():
        copy = shutil.copy(nb, tmp_path / nb.name)
        assert not strip(copy), f"{nb.name} has outputs: run `python -m tdmpc_opt_lib strip-notebooks`"


def test_every_notebook_has_a_validated_parameters_cell():
    import nbformat

    from tdmpc_opt_lib.study.params import NOTEBOOK_PROFILES
    for nb in notebooks():
        cells = nbformat.read(nb, as_version=4).cells
        params = [c for c in cells if "parameters" in c.metadata.get("tags", [])]
        assert len(params) == 1 and nb.stem in NOTEBOOK_PROFILES
        assert any(f'resolve("{nb.stem}"' in c.source for c in cells)
