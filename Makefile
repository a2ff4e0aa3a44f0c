# Attention in CNNs, derived: the course's commands. README.md shows the two that matter:
#   make lab    set up (if needed) and open the course in JupyterLab on notebooks/
#   make test   set up (if needed) and run every test: unit tests + strict nbval on every notebook
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
CONSTRAINTS ?= constraints.txt
# TORCH_CPU=1: take torch from PyTorch's CPU-only wheel index (about 0.7 GB of torch instead of
# the several GB of CUDA libraries that a Linux machine otherwise downloads from PyPI).
TORCH_CPU ?=
TORCH_INDEX := $(if $(TORCH_CPU),--index-url https://download.pytorch.org/whl/cpu --extra-index-url https://pypi.org/simple)
# FORCE=1: let `make student` overwrite student copies that exist already.
FORCE ?=
PORT ?= 8888
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# OpenMP's busy-waiting makes torch several times slower on a busy 2-core machine.
export OMP_WAIT_POLICY ?= PASSIVE
# Silences the debugger's note about frozen modules that ipykernel kernels print at start-up.
export PYDEVD_DISABLE_FILE_VALIDATION := 1
# JupyterLab refuses to start as root (containers, CI) unless told that it is intended.
ROOT_FLAG := $(if $(filter 0,$(shell id -u)),--allow-root)

# The settings of `make test-portable`: each changes the last bits of float results, as another
# machine would (another thread count; torch's and oneDNN's kernels on another instruction set).
PORTABLE_1 := COURSE_THREADS=1
PORTABLE_2 := COURSE_THREADS=2 ATEN_CPU_CAPABILITY=default ONEDNN_MAX_CPU_ISA=SSE41
# `make test-seeds`: the notebooks' seeds start here instead of at 0.
SEED_BASE ?= 10

.PHONY: setup lab test test-unit test-notebooks test-portable test-seeds test-browser site notebook student progress execute bench clean help

help:
	@echo "make lab            set up and open the course in JupyterLab (LAB_ARGS=... passes options)"
	@echo "make test           set up and run all tests (unit + strict nbval)"
	@echo "make test-unit      unit tests only"
	@echo "make test-notebooks strict nbval on every notebook"
	@echo "make test-portable  strict nbval on every notebook as on two other machines (1 thread; other kernels)"
	@echo "make test-seeds     every notebook on other seeds (SEED_BASE=10): its claims must still hold"
	@echo "make test-browser   optional: run a notebook in JupyterLab in an installed Chromium (skipped without one)"
	@echo "make site           the course as a static website in site/ (offline; open site/index.html)"
	@echo "make notebook NB=01 strict nbval on one notebook (by number)"
	@echo "make student        student copies in student/ (solutions removed; existing copies are kept, FORCE=1 overwrites)"
	@echo "make progress       which exercises the checkers passed in student/ (NB=02 one notebook, DIR=folder another folder)"
	@echo "make execute NB=01  re-execute one notebook in place (for authors)"
	@echo "make bench          run every benchmark script in benchmarks/ (minutes; run on a quiet machine)"
	@echo "make clean          remove the virtual environment and generated files"

setup: $(STAMP)

$(STAMP): pyproject.toml $(CONSTRAINTS) jupyter/overrides.json
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else "Python 3.10 or newer is needed (found " + sys.version.split()[0] + "); set PYTHON=python3.x")'
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@echo "Installing tutorial_lib and the course tools into $(VENV) (first time: about a minute)..."
	@$(BIN)/python -m pip install --quiet --disable-pip-version-check $(TORCH_INDEX) -c $(CONSTRAINTS) -e ".[course]" 2>&1 \
		| grep -v -E "^WARNING: Location .* is ignored" || true
	@$(BIN)/python -c "import tutorial_lib, torch, nbval, jupyterlab, matplotlib.pyplot" \
		|| { echo "set-up failed: see the pip output above"; exit 1; }
	@# JupyterLab settings for this environment only (not the user's home): no news feed, no update check.
	@mkdir -p $(VENV)/share/jupyter/lab/settings && cp jupyter/overrides.json $(VENV)/share/jupyter/lab/settings/overrides.json
	@touch $(STAMP)

lab: setup
	$(BIN)/jupyter lab --ServerApp.root_dir=notebooks $(ROOT_FLAG) $(LAB_ARGS)

test: setup
	$(BIN)/python -m pytest

test-unit: setup
	$(BIN)/python -m pytest tests

test-browser: setup
	@$(BIN)/python -c "import playwright" 2>/dev/null || $(BIN)/python -m pip install --quiet --disable-pip-version-check \
		-c $(CONSTRAINTS) -e ".[course,browser]" 2>&1 | grep -v -E "^WARNING: Location .* is ignored" || true
	$(BIN)/python -m pytest browser_tests -rs

test-notebooks: setup
	$(BIN)/python -m pytest notebooks

# Strict nbval twice more, under settings that round floats differently from the default run:
# exact outputs must still match, and every measured cell's assertions must still hold.
test-portable: setup
	@echo "== strict nbval, $(PORTABLE_1)"
	$(PORTABLE_1) $(BIN)/python -m pytest notebooks
	@echo "== strict nbval, $(PORTABLE_2)"
	$(PORTABLE_2) $(BIN)/python -m pytest notebooks

# Every notebook trained on seeds SEED_BASE, SEED_BASE+1, ...: printed outputs that name the seeds
# change, so outputs are not compared (--nbval-lax); every cell must run and every claim hold.
test-seeds: setup
	COURSE_SEED_BASE=$(SEED_BASE) $(BIN)/python -m pytest notebooks --nbval-lax

site: setup
	$(BIN)/python -m tutorial_lib.site notebooks site

notebook: setup
	@test -n "$(NB)" || { echo "say which notebook, e.g. make notebook NB=02"; exit 2; }
	$(BIN)/python -m pytest notebooks/$(NB)_*.ipynb

student: setup
	$(BIN)/python -m tutorial_lib.exercises.student notebooks student $(if $(FORCE),--force)

progress: setup
	$(BIN)/python -m tutorial_lib.exercises.progress --dir $(or $(DIR),student) $(if $(NB),--nb $(NB))

execute: setup
	@test -n "$(NB)" || { echo "say which notebook, e.g. make execute NB=02"; exit 2; }
	$(BIN)/python -m tutorial_lib.execute notebooks/$(NB)_*.ipynb

bench: setup
	@for script in benchmarks/bench_*.py; do echo "== $$script"; $(BIN)/python $$script || exit 1; done

clean:
	rm -rf $(VENV) student site .pytest_cache
