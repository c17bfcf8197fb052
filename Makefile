# The two commands of the README: `make repro` runs the pipeline, `make test` runs the tests.
PY ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: repro test test-ci test-slow test-all bench env clean-venv dvc-yaml

$(STAMP): requirements.lock pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -r requirements.lock
	$(BIN)/python -m pip install -q --no-deps -e .
	touch $(STAMP)

env: $(STAMP)

# dvc.yaml's commands say `python`: the environment's bin goes first on PATH
repro: $(STAMP)
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/dvc repro

# dvc.yaml is generated (steve1/pipeline.py): stage code deps are what each stage imports
dvc-yaml: $(STAMP)
	$(BIN)/python -m steve1.pipeline

# docs/params.md is generated from the params schema (steve1/params_doc.py); a test checks it is current
.PHONY: params-doc
params-doc: $(STAMP)
	$(BIN)/python -m steve1.params_doc --write

# the default tier (minutes), with the slowest 25 tests named; the slow tier: end-to-end pipeline
# runs and timing-dependent self-tests
test: $(STAMP)
	$(BIN)/python -m pytest -m "not slow and not gpu" -q --durations=25

# The slow tests CI runs beside make test (.ci/run): whole-pipeline dvc runs, local-vs-Ray bytes
test-ci: $(STAMP)
	$(BIN)/python -m pytest -m "ci and not gpu" -q --durations=10

test-slow: $(STAMP)
	$(BIN)/python -m pytest -m "slow and not gpu" -q --durations=25

test-all: $(STAMP)
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	$(BIN)/python -m pytest benchmarks -q --benchmark-only

# The quick suite of this tree and of the reference commit (benchmarks/reference.json), run side by side
# and interleaved on this machine; fails on a slowdown beyond the run's own noise (benchmarks/gate.py).
.PHONY: bench-gate docker-test
bench-gate: $(STAMP)
	mkdir -p .benchmarks
	$(BIN)/python -m benchmarks.gate --json .benchmarks/gate.json

# Every GPU figure in one run on one GPU node, <= 8 min (benchmarks/gpu_check.py): gpu_check.json + gpu_check.md
# in benchmarks/results/gpu_check_<date>/. GPU_CHECK_FLAGS=--dry-run checks the script on the CPU (under a minute).
.PHONY: gpu-check
GPU_CHECK_OUT ?= benchmarks/results/gpu_check_$(shell date -u +%Y-%m-%d)
gpu-check: $(STAMP)
	$(BIN)/python -m benchmarks.gpu_check --out $(GPU_CHECK_OUT) $(GPU_CHECK_FLAGS)

# Build docker/Dockerfile's smoke target with podman on a debootstrap base (root; minutes).
docker-test:
	docker/build_test.sh

clean-venv:
	rm -rf $(VENV)

# Train on N processes of this machine (GPUs, or CPUs over gloo): make train-multi NPROC=8
NPROC ?= 2
.PHONY: train-multi
train-multi: $(STAMP)
	$(BIN)/accelerate launch --config_file configs/accelerate/multi_gpu.yaml --num_processes $(NPROC) -m stages.train

# Experiments: the readable comparison, and the Optuna search of params.yaml's tune section (docs/experiments.md)
.PHONY: compare tune
compare: $(STAMP)
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/steve1 compare

tune: $(STAMP)
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/steve1 tune
