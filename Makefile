# OT-Attention Lab: every target creates the project virtualenv (.venv) on first use.
# `make help` lists the targets.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

# make variables -> config overrides (empty ones are left to the config files)
TASK   ?=
ATTN   ?=
POOL   ?=
EPOCHS ?=
SEED   ?=
ARGS   ?=
ATTNS  ?= softmax sinkhorn esp lotformer luna
POOLS  ?=
SEEDS  ?= 0 1 2
EXPERIMENT ?=
SWEEP  ?=
SYNTHETIC ?=
ROOT   ?= ./data
PORT   ?= 5000
NPROC  ?=
HOST   ?= 127.0.0.1
STORE  ?= sqlite:///mlflow.db
ARTIFACTS ?= ./mlartifacts
BENCH_ARGS ?=
PARITY_ARGS ?=

export MLFLOW_DISABLE_TELEMETRY := true

OVERRIDES = $(if $(TASK),task=$(TASK)) $(if $(ATTN),attention=$(ATTN)) $(if $(POOL),pooling=$(POOL)) \
            $(if $(EPOCHS),trainer.epochs=$(EPOCHS)) $(if $(SEED),seed=$(SEED)) $(ARGS)

.DEFAULT_GOAL := help
.PHONY: help setup train data sweep eval ui server test bench parity clean

# NPROC=N: data parallel over N processes on this machine (torchrun; gloo on CPU, NCCL on GPU)
LAUNCH = $(if $(NPROC),$(VENV)/bin/torchrun --standalone --nproc_per_node=$(NPROC),$(PY))

help:  ## list the targets
	@grep -hE '^[a-z]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN{FS=":.*## "}{printf "  make %-8s %s\n", $$1, $$2}'
	@echo "  variables: TASK ATTN POOL EPOCHS SEED ARGS NPROC (train); ATTNS POOLS SEEDS EXPERIMENT SWEEP (sweep);"
	@echo "             TASK SWEEP EXPERIMENT (eval); SYNTHETIC ROOT (data); STORE ARTIFACTS HOST PORT (server);"
	@echo "             BENCH_ARGS (bench); PARITY_ARGS (parity)"

setup: $(STAMP)  ## create .venv and install the project (again whenever pyproject.toml changes)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

train: $(STAMP)  ## train one model: make train TASK=cifar10 ATTN=esp EPOCHS=5 ARGS="trainer.lr=3e-4" [NPROC=2]
	$(LAUNCH) train.py $(OVERRIDES)

data: $(STAMP)  ## download, verify and preprocess a dataset: make data TASK=cifar10 [SYNTHETIC=1] [ROOT=./data] [OPTIONS="dataset=flip_scl"]
	$(PY) -m tasks.prepare $(or $(TASK),cifar10) --root $(ROOT) $(if $(SYNTHETIC),--synthetic) $(foreach o,$(OPTIONS),--option $(o))

sweep: $(STAMP)  ## train ATTNS x POOLS x SEEDS under one sweep id; again = skip finished, resume interrupted
	$(PY) -m evaluation.sweep --attentions "$(ATTNS)" --poolings "$(POOLS)" --seeds "$(SEEDS)" $(if $(SWEEP),--id $(SWEEP)) \
	  $(if $(TASK),task=$(TASK)) $(if $(EXPERIMENT),experiment=$(EXPERIMENT)) $(if $(EPOCHS),trainer.epochs=$(EPOCHS)) $(ARGS)

eval: $(STAMP)  ## test metrics for tracked runs that lack them + report in reports/eval/ (TASK, SWEEP, EXPERIMENT)
	$(PY) -m evaluation.report $(if $(TASK),--task $(TASK)) $(if $(SWEEP),--sweep $(SWEEP)) $(if $(EXPERIMENT),--experiment $(EXPERIMENT))

ui: $(STAMP)  ## open the MLflow UI over the run store on http://127.0.0.1:$(PORT)
	MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false $(VENV)/bin/mlflow ui --backend-store-uri $${MLFLOW_TRACKING_URI:-sqlite:///mlflow.db} --host 127.0.0.1 --port $(PORT) --workers 1

server: $(STAMP)  ## shared MLflow tracking server: make server [STORE=postgresql://user@host/db] [HOST=0.0.0.0] [PORT=5000]
	MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false $(VENV)/bin/mlflow server --backend-store-uri $(STORE) \
	  --artifacts-destination $(ARTIFACTS) --host $(HOST) --port $(PORT) --workers 1

test: $(STAMP)  ## run the test suite (what CI runs)
	$(PY) -m pytest -q

bench: $(STAMP)  ## attention time/memory scaling table + plot: make bench [BENCH_ARGS="--attentions softmax,luna --lengths 1024,4096"]
	$(PY) -m bench.attention $(BENCH_ARGS)

parity: $(STAMP)  ## every mechanism (+ paper presets) vs softmax at one budget per task, 3 seeds, 2 runs at once -> reports/parity/
	$(PY) -m bench.parity $(PARITY_ARGS)

clean:  ## remove caches and the virtualenv (keeps data/, runs/ and mlflow.db)
	rm -rf $(VENV) .pytest_cache
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
