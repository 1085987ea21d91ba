"""The TD-MPC-Opt paper's reported numbers (MT30 normalized scores), kept here as facts for side-by-side plots.

Every row: the paper's table, a label, ``method`` ("distill", "from_scratch" or "public"), the teacher,
batch size, training steps, ``d_coef``, precision, normalized score and, for Table 4, the checkpoint size.
The student is always the 1M-parameter model; the teacher is the public 317M (or 48M) TD-MPC2 checkpoint.
``tests/test_paper.py`` checks these against ``../shared/spec/paper_results.csv`` when it is present.
"""
from __future__ import annotations

import pandas as pd

NAN = float("nan")
COLUMNS = ("table", "setting", "method", "teacher", "batch_size", "steps", "d_coef", "precision", "score", "size_mib")

# Table 1: distillation coefficient and latent-distillation variants (batch 256, 200k steps, 317M teacher).
_T1 = [("reward+next-state (linear projection)", "distill", NAN, 7.69),
       ("reward+next-state (PCA)", "distill", NAN, 8.78),
       ("d_coef 0.05", "distill", 0.05, 13.61),
       ("baseline (no distill)", "from_scratch", 0.0, 14.04),
       ("d_coef 0.25", "distill", 0.25, 14.49),
       ("d_coef 0.4", "distill", 0.4, 17.85),
       ("d_coef 0.55", "distill", 0.55, 16.08),
       ("d_coef 0.6", "distill", 0.6, 14.83),
       ("d_coef 0.9", "distill", 0.9, 13.79)]
# Table 2: batch size and training length (d_coef 0.4 when distilled).
_T2 = [("bs128 200K", "distill", 128, 200_000, "fp32", 17.37),
       ("bs256 200K", "from_scratch", 256, 200_000, "fp32", 14.04),
       ("bs256 200K", "distill", 256, 200_000, "fp32", 17.85),
       ("bs1024 200K", "from_scratch", 1024, 200_000, "fp32", 18.70),
       ("bs1024 200K", "distill", 1024, 200_000, "fp32", 18.11),
       ("bs1024 337K", "from_scratch", 1024, 337_000, "fp32", 26.94),
       ("bs1024 337K", "distill", 1024, 337_000, "fp32", 25.44),
       ("bs256 1M", "from_scratch", 256, 1_000_000, "fp32", 27.36),
       ("bs256 1M", "distill", 256, 1_000_000, "fp32", 28.12),
       ("best fp16", "distill", 256, 1_000_000, "fp16", 28.45)]
# Table 3: teacher size (batch 256, 200k steps, d_coef 0.4).
_T3 = [("teacher 48M", "48M", 13.61), ("teacher 317M", "317M", 17.85)]
# Table 4: post-training quantization of the best student (batch 256, 1M steps, d_coef 0.4).
_T4 = [("original", "fp32", 28.12, 7.9), ("fp16", "fp16", 28.45, 3.9), ("mixed", "mixed", 13.53, 2.8),
       ("int8", "int8", 5.09, 1.95)]


def results() -> pd.DataFrame:
    """All reported numbers, one row per table cell (plus the public 1M checkpoint the paper quotes)."""
    rows = [(1, s, m, "317M" if m == "distill" else None, 256, 200_000, d, "fp32", v, NAN) for s, m, d, v in _T1]
    rows += [(2, s, m, "317M" if m == "distill" else None, b, n, 0.4 if m == "distill" else 0.0, p, v, NAN)
             for s, m, b, n, p, v in _T2]
    rows += [(3, s, "distill", t, 256, 200_000, 0.4, "fp32", v, NAN) for s, t, v in _T3]
    rows += [(4, s, "distill", "317M", 256, 1_000_000, 0.4, p, v, mib) for s, p, v, mib in _T4]
    rows.append(("ref", "original TD-MPC2 1M checkpoint (as reported by the paper)", "public", None, 1024, NAN, NAN,
                 "fp32", 18.93, NAN))
    return pd.DataFrame(rows, columns=list(COLUMNS))


def table(n: int | str) -> pd.DataFrame:
    """The rows of one table (1-4 or "ref")."""
    df = results()
    return df[df.table.astype(str) == str(n)].reset_index(drop=True)
