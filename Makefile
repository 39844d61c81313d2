# Short verbs. Every target does its own set-up: a fresh clone needs nothing else.
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
# No hub look-ups: the defaults use offline assets only (without these, look-ups wait 20-50 s).
export HF_HUB_OFFLINE ?= 1
export HF_DATASETS_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false
DATA_ASSETS := countryinfo wiki-summaries-en
# What the default `cem run` reads (not MiniLM and its knowledge=wiki_dense index: `make assets`).
DEMO_ASSETS := smollm2-135m-instruct $(DATA_ASSETS)

.PHONY: setup assets demo test test-unit test-slow test-gpu bench lint format clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e ".[dev]"
	@touch $@

assets: setup
	$(BIN)/cem assets fetch

demo: setup
	$(BIN)/cem assets fetch $(DEMO_ASSETS)
	WANDB_MODE=$${WANDB_MODE:-offline} $(BIN)/cem run

test: setup
	$(BIN)/cem assets fetch $(DATA_ASSETS)
	WANDB_MODE=disabled $(BIN)/python -m pytest -m "not slow and not gpu" -q

test-unit: setup
	WANDB_MODE=disabled $(BIN)/python -m pytest -m "not slow and not gpu and not e2e" -q

test-slow: assets
	WANDB_MODE=disabled $(BIN)/python -m pytest -m slow -q

test-gpu: assets
	WANDB_MODE=disabled $(BIN)/python -m pytest -m gpu -q

bench: assets
	$(BIN)/python benchmarks/bench_eval.py
	$(BIN)/python benchmarks/bench_retrieval.py
	$(BIN)/python benchmarks/bench_train.py

lint: setup
	$(BIN)/ruff check cem tests benchmarks experiments
	$(BIN)/ruff format --check cem tests benchmarks experiments

format: setup
	$(BIN)/ruff format cem tests benchmarks experiments
	$(BIN)/ruff check --fix cem tests benchmarks experiments

clean:
	rm -rf runs outputs .pytest_cache .ruff_cache
