# Set-up is part of every target: the virtual environment is made when missing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DATA ?= ../shared/data
export IMPRINTING_DATA ?= $(DATA)

.PHONY: demo test venv clean results serve

venv: $(STAMP)

# torch and torchvision first (pinned; pip finds them on the development machines' disk),
# then the package and its test dependencies.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

## The main job: transfer learning by imprinting on Flowers-102 (paper Table 3), then the paper's
## two-stage protocol (Tables 1 and 2) on CUB at 160 px, into runs/ (ignored: the committed results/ are
## `make results`). Features are cached: a second run takes minutes.
demo: $(STAMP)
	$(BIN)/imprint transfer --data-root $(IMPRINTING_DATA) --out runs/flowers102 --save-model models/flowers102.safetensors
	$(BIN)/imprint reproduce tables --dataset cub --data-root $(IMPRINTING_DATA) --image-size 160 --augment 2 --draws 2 --out runs/cub-160

## The layers (import-linter's contracts in pyproject.toml), then the test suite (real-data tests
## read ../shared/data, skipped with the reason when absent).
test: $(STAMP)
	$(BIN)/lint-imports
	$(BIN)/python -m pytest -q

## The service on the model the main job wrote (http://127.0.0.1:8000/).
serve: $(STAMP)
	$(BIN)/imprint serve models/flowers102.safetensors --store models/flowers102.sqlite

## Every committed result under results/ (hours on 2 CPU cores the first time; features are cached).
results: $(STAMP)
	$(BIN)/imprint transfer --data-root $(IMPRINTING_DATA) --out results/flowers102
	for ds in cub flowers102; do \
	  $(BIN)/imprint reproduce tables --dataset $$ds --augment 5 --data-root $(IMPRINTING_DATA) && \
	  $(BIN)/imprint reproduce table3 --dataset $$ds --augment 5 --data-root $(IMPRINTING_DATA) && \
	  $(BIN)/imprint reproduce fig5 --dataset $$ds --augment 5 --data-root $(IMPRINTING_DATA) && \
	  $(BIN)/imprint reproduce fig6 --dataset $$ds --augment 5 --data-root $(IMPRINTING_DATA) && \
	  $(BIN)/imprint reproduce fig7 --dataset $$ds --augment 5 -n 1 -n 5 --data-root $(IMPRINTING_DATA) && \
	  $(BIN)/imprint reproduce beyond --dataset $$ds --augment 5 --data-root $(IMPRINTING_DATA) && \
	  $(BIN)/imprint reproduce e2e --dataset $$ds --data-root $(IMPRINTING_DATA) || exit 1; \
	done
	$(BIN)/imprint reproduce omniglot --data-root $(IMPRINTING_DATA) -n 1 -n 5 --draws 3 --epochs 5 \
	  --ft-epochs 10 --ft-lr 1e-3 --e2e-shots 1 --e2e-epochs 2

clean:
	rm -rf $(VENV) .pytest_cache
