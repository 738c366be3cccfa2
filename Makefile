# Every target builds .venv itself: a fresh machine needs nothing but python3.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STATE := out/sample_state.h5
export KERAS_BACKEND := numpy
# Quiet installs; setuptools' notice on every editable install is not ours to act on.
PIP := PYTHONWARNINGS="ignore:Editable installation" $(BIN)/python -m pip install --quiet
# An editable install leaves bncli's bytecode to the first import, and under
# PYTHONDONTWRITEBYTECODE=1 every command compiles every module again (0.13 s of
# a 0.36 s small fit). A wheel install compiles at install; so do these targets.
COMPILE := $(BIN)/python -m compileall -q bncli

.DEFAULT_GOAL := help
.PHONY: help run test test-fast lint format bench sample-data clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

$(BIN)/activate:
	$(PYTHON) -m venv $(VENV)
	@echo "upgrading pip in $(VENV)"
	@$(PIP) --upgrade pip

# The install builds the C extensions: a changed source installs again.
NATIVE := setup.py bncli/native/moments.c bncli/native/crc.c

$(VENV)/.installed-run: pyproject.toml $(NATIVE) | $(BIN)/activate
	@echo "installing bncli into $(VENV)"
	@$(PIP) -e .
	@touch $@

$(VENV)/.installed-dev: pyproject.toml $(NATIVE) | $(BIN)/activate
	@echo "installing bncli with the dev extras into $(VENV)"
	@$(PIP) -e '.[dev]'
	@touch $@ $(VENV)/.installed-run

$(VENV)/.installed-bench: pyproject.toml $(NATIVE) | $(BIN)/activate
	@echo "installing bncli with the dev and bench extras into $(VENV)"
	@$(PIP) -e '.[dev,bench]'
	@touch $@ $(VENV)/.installed-dev $(VENV)/.installed-run

run: $(VENV)/.installed-run  ## set up, fit on sample_data/, transform it, inspect the state
	@$(COMPILE)
	@mkdir -p out
	@rm -f $(STATE) out/sample_normalized.parquet
	$(BIN)/bncli fit $(STATE) sample_data/features.parquet --exclude id --momentum 0.9
	$(BIN)/bncli transform $(STATE) sample_data/features.parquet -o out/sample_normalized.parquet
	$(BIN)/bncli inspect $(STATE)

# The suite and the package's doctests (the docstrings' examples run as written).
PYTEST := $(BIN)/python -m pytest -q -n 2 -p no:cacheprovider tests bncli --doctest-modules

test: $(VENV)/.installed-dev  ## set up with the dev extras and run the whole suite
	@$(COMPILE)
	$(PYTEST)

test-fast: $(VENV)/.installed-dev  ## the suite without the subprocess-heavy tests marked slow (under a minute)
	@$(COMPILE)
	$(PYTEST) -m "not slow"

lint: $(VENV)/.installed-dev  ## ruff and mypy
	$(BIN)/ruff check bncli tests benchmarks
	$(BIN)/ruff format --check bncli tests benchmarks
	$(BIN)/mypy bncli

format: $(VENV)/.installed-dev  ## ruff format and fix
	$(BIN)/ruff format bncli tests benchmarks
	$(BIN)/ruff check --fix bncli tests benchmarks

bench: $(VENV)/.installed-bench  ## benchmark against the baselines, printed as ratios
	@$(COMPILE)
	$(BIN)/python benchmarks/run.py

sample-data: $(VENV)/.installed-run  ## regenerate sample_data/ (committed)
	$(BIN)/python sample_data/make_sample_data.py

clean:  ## remove the virtualenv and outputs
	rm -rf $(VENV) out build *.egg-info .pytest_cache
