"""The notebooks' tables: dataset composition (02), teacher scores (01), quantization (05), task analysis (06)."""
from __future__ import annotations

import pandas as pd
import pytest

from tdmpc_opt_lib.planner import PlannerConfig
from tdmpc_opt_lib.study import composition, mtmini, quantization, report, task_analysis, teacher_scores
from tdmpc_opt_lib.study.params import MT_MINI_DIR, QuantizationParams, TaskAnalysisParams


def test_dataset_composition_has_a_total_row():
    episodes = pd.DataFrame({"task": ["a", "a", "b"], "episode": [0, 1, 2], "transitions": [10, 20, 70],
                             "return": [1.0, 3.0, 8.0]})
    t = composition.per_task(episodes)
    assert t.index.tolist() == ["a", "b", "total"]
    assert t.loc["a"].tolist() == [2, 30, 2.0, 1.0, 3.0, 30.0]
    assert t.loc["total"].tolist() == [3, 100, 4.0, 1.0, 8.0, 100.0]


def test_generation_record_of_the_committed_mt_mini_build(tmp_path):
    assert composition.generation_record(None) is None and composition.generation_record(tmp_path) is None
    if not (MT_MINI_DIR / "build.json").is_file():
        pytest.skip("no data/mt-mini build record")
    agents, curves = composition.generation_record(MT_MINI_DIR)
    assert list(agents.columns) == ["env steps", "episodes", "eval score", "± std", "train h"]
    assert set(curves.task) == set(agents.index) and "episode_return" in curves


def test_teacher_planner_rule_and_score_tables():
    assert (teacher_scores.planner_config(512, 6).num_elites, teacher_scores.planner_config(512, 6).num_pi_trajs) == (64, 24)
    small = teacher_scores.planner_config(64, 2)
    assert (small.num_samples, small.iterations, small.num_elites, small.num_pi_trajs) == (64, 2, 8, 4)
    # the committed MT-mini build's evaluation setting follows the same rule
    assert teacher_scores.planner_config(256, 4) == PlannerConfig(**mtmini.EVAL_PLANNER)
    results = {"teacher": pd.DataFrame({"task": ["a", "a", "b"], "score": [10.0, 20.0, 40.0]}),
               "released student": pd.DataFrame({"task": ["a", "b"], "score": [5.0, 7.0]})}
    table, summary = teacher_scores.scores(results)
    assert table.loc["a"].tolist() == [15.0, 5.0] and summary.tolist() == [27.5, 6.0]
    eps = teacher_scores.episodes(results)
    assert eps.columns[0] == "model" and eps.model.tolist() == ["teacher"] * 3 + ["released student"] * 2


def test_recorded_file_names(tmp_path):
    assert quantization.run_file("released_paper-int8_mpc_seed2.csv") == ("paper-int8", 2)
    assert quantization.run_file("released_int8-nearest_mpc_seed10.csv") == ("int8-nearest", 10)
    assert quantization.run_file("released_fp16_policy_seed0.csv") is None
    assert quantization.run_file("quantization_released_mpc_seed0.csv") is None
    for name in ("released_fp16_mpc_seed0.csv", "released_int8_mpc_seed0.csv", "released_int8_mpc_seed1.csv",
                 "released_mixed_mpc_seed0.csv", "released_fp16_policy_seed0.csv"):
        (tmp_path / name).write_text("")
    assert quantization.recorded_schemes(tmp_path) == ["int8", "mixed"]
    assert quantization.recorded_comparisons(tmp_path / "nothing") is None


def test_quantization_choices_and_summary(tmp_path):
    P = QuantizationParams(schemes=("fp16", "int8"), checkpoint=None, released=None, out_dir=str(tmp_path))
    assert quantization.schemes(P) == ["fp16", "int8"]
    assert "paper-int8" in quantization.schemes(QuantizationParams(schemes="all"))
    table = pd.DataFrame({"score": [1.0], "full_mib": [2.0], "deployable_mib": [1.5], "plan_ms": [3.0]},
                         index=pd.MultiIndex.from_tuples([("student", "int8")], names=["model", "scheme"]))
    assert quantization.summary(table).index.tolist() == ["student int8"]
    assert quantization.paper_table4().columns[2] == "paper score (MT30, 10 episodes, MPPI)"


def test_task_analysis_choices():
    runs = pd.DataFrame({"run": ["r1"], "task:b": [12.0], "task:c": [3.0]})
    scores = pd.DataFrame({"MT-mini teacher (policy prior, committed)": [50.0, 60.0, 70.0]}, index=["a", "b", "c"])
    assert task_analysis.student_tasks(scores, runs) == ["b", "c"]
    assert task_analysis.student_tasks(scores, runs.drop(columns=["task:b", "task:c"])) == ["a", "b", "c"]
    table = task_analysis.run_vs_teacher(runs, scores, "r1", ["b", "c"])
    assert table.to_dict() == {"run": {"b": 12.0, "c": 3.0}, "teacher": {"b": 60.0, "c": 70.0}}
    assert task_analysis.frame_steps(TaskAnalysisParams(frame_steps=(0, 10, 499), episode_length=20)) == [0, 10]
    assert task_analysis.rendered(None) is False
    assert task_analysis.rendered(pd.DataFrame({"frame": [None]})) is False


def test_save_csv_makes_the_folder(tmp_path):
    path = report.save_csv(pd.DataFrame({"x": [1]}), tmp_path / "new", "t.csv", index=False)
    assert path == tmp_path / "new" / "t.csv" and path.read_text() == "x\n1\n"
