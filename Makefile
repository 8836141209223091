# Two commands on a fresh machine: `make demo` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export HF_HUB_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false
export RAY_AUTH_MODE := disabled

.PHONY: demo test test-slow test-presets test-gpu lint format install bench clean

$(STAMP): pyproject.toml
	test -d $(VENV) || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# CPU torch wheel where there is no CUDA; an unpinned torch would pull a CUDA build.
	if command -v nvidia-smi >/dev/null 2>&1; then $(BIN)/pip install -q "torch>=2.4"; \
	else $(BIN)/pip install -q torch==2.13.0; fi
	$(BIN)/python -c "import torch; print(torch.__version__)" | sed 's/+.*//' > $(VENV)/torch-constraint.txt
	sed -i 's/^/torch==/' $(VENV)/torch-constraint.txt
	$(BIN)/pip install -q -c $(VENV)/torch-constraint.txt -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/midtrain demo

lint: $(STAMP)
	$(BIN)/ruff check src tests scripts
	$(BIN)/ruff format --check src tests scripts

format: $(STAMP)
	$(BIN)/ruff format src tests scripts
	$(BIN)/ruff check --fix src tests scripts

# the default suite: everything but the slow end-to-end tests (kill/resume, Ray, multi-process,
# the quick demo) and the presets; `.ci/run` runs all three targets
test: lint
	$(BIN)/python -m pytest -q tests -m "not presets and not slow"

test-slow: $(STAMP)
	$(BIN)/python -m pytest -q tests -m "slow and not presets" --durations=10

test-presets: $(STAMP)
	$(BIN)/python -m pytest -q tests -m presets --durations=0

# On a machine with a CUDA GPU (docs/benchmarks.md#gpu): the GPU tests, then the GPU benchmark.
# Without CUDA the tests skip themselves and `bench gpu` stops with one error line (exit 2).
test-gpu: $(STAMP)
	$(BIN)/python -m pytest -q -m gpu tests/gpu
	$(BIN)/midtrain bench gpu --json

bench: $(STAMP)
	$(BIN)/midtrain bench mix --json
	$(BIN)/midtrain bench train --json
	$(BIN)/midtrain bench sft --json

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache
