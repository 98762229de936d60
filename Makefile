# lungkit: two commands do everything.
#   make reproduce   set up .venv, then run every notebook headless on the phantom data -> reports/
#   make test        set up .venv, then run the test suite (what CI runs)
# Options: PROFILE=smoke|quick|paper  DATA_DIR=/path/to/data (pickles, or a lungkit_source.json)  SEED=0  PYTHON=python3.11
#          JOBS=2 (notebooks at once)
#          RUN_DIR=runs/<run-id>  continue that run: notebooks that ran ok there are skipped, the one that
#                                 failed or was cut off reruns (training resumes from its last epoch)

PYTHON ?= $(shell command -v python3.11 2>/dev/null || command -v python3)
VENV ?= .venv
PROFILE ?= quick
DATA_DIR ?=
RUN_DIR ?=
SEED ?= 0
EXTRAS ?= dev,crf
# Notebooks the main job runs at once: two keep a 2-core machine busy while one kernel starts, traces or scores.
# JOBS=1 runs them one after another.
JOBS ?= 2
# Test processes: two keep a 2-core machine busy while one waits on a notebook kernel or traces a graph.
# TEST_WORKERS=0 runs the suite in this process.
TEST_WORKERS ?= 2
BIN := $(VENV)/bin

.PHONY: setup reproduce test bench clean-runs

setup: $(VENV)/.installed

# Reinstall when the dependency pins change; the stamp makes repeated commands cheap.
$(VENV)/.installed: pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info[:2] >= (3, 11), "lungkit needs Python >= 3.11, got " + sys.version.split()[0]'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[$(EXTRAS)]"
	touch $@

reproduce: setup
	$(BIN)/python -m lungkit reproduce --profile $(PROFILE) --seed $(SEED) --jobs $(JOBS) \
		$(if $(DATA_DIR),--data-dir $(DATA_DIR)) $(if $(RUN_DIR),--run-dir $(RUN_DIR))

test: setup
	$(BIN)/python -m pytest $(if $(filter-out 0,$(TEST_WORKERS)),-n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder)

bench: setup
	$(BIN)/python -m benchmarks.run
	$(BIN)/python -m benchmarks.real_data --skip-missing

clean-runs:
	rm -rf runs
