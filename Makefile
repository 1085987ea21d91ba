# Two entry points; each sets up a local virtual environment on first use.
#   make report  — the main job: regenerate reports/ at the default, CPU-friendly scale
#   make test    — the test suite and the notebooks at smoke scale (golden checks need ../shared)
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
export MUJOCO_GL ?= egl

.PHONY: setup report test bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e ".[notebooks,test,cluster,public-data]"
	touch $(STAMP)

report: $(STAMP)
	$(BIN)/python -m tdmpc_opt_lib report --profile default

test: $(STAMP)
	$(BIN)/python -m pytest -q --nbval-lax

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_planner.py

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
