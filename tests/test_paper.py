"""The paper's numbers kept in the library equal the spec's table of them."""
from __future__ import annotations

import numpy as np
import pandas as pd

from tdmpc_opt_lib.study import paper


def test_paper_numbers_match_the_spec(shared_dir):
    spec = pd.read_csv(shared_dir / "spec" / "paper_results.csv")
    ours = paper.results()
    assert len(ours) == len(spec)
    for (_, a), (_, b) in zip(ours.iterrows(), spec.iterrows()):
        assert (str(a.table), a.setting, a.method) == (str(b.table), b.setting, b.method)
        assert a.score == b.normalized_score and a.batch_size == b.batch_size
        for x, y in ((a.steps, b.steps), (a.d_coef, b.d_coef), (a.size_mib, b.model_size_mib)):
            assert (np.isnan(x) and np.isnan(y)) or x == y
        name = lambda t: t if isinstance(t, str) else ""  # noqa: E731  (missing teacher: None / NaN)
        assert name(a.teacher) == name(b.teacher) and a.precision == b.precision


def test_tables_select_rows():
    assert list(paper.table(4).precision) == ["fp32", "fp16", "mixed", "int8"]
    t1 = paper.table(1)
    assert t1.loc[t1.score.idxmax(), "d_coef"] == 0.4 and len(t1) == 9
