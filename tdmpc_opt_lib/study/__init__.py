"""This repository's report machinery, not the reusable library: notebook parameters and profiles, cached
distillation runs and ablation grids, the MT-mini build, the paper's numbers, the report's figures and the
report builder. The library proper (models, planning, training, quantization) is the parent package."""
