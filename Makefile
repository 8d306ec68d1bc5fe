# The two commands: `make serve` and `make test`. Both create .venv when needed.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

export RAY_USAGE_STATS_ENABLED ?= 0

.PHONY: venv serve test test-cluster eval bench bench-load bench-cache bench-engines image manifests lock clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $(STAMP)

venv: $(STAMP)

# `make serve` runs its own Ray head: its Prometheus metrics on port $(METRICS_PORT), path /metrics
# (the port KubeRay pods use too), its GCS on $(RAY_PORT). Override either: make serve METRICS_PORT=9100
METRICS_PORT ?= 8080
RAY_PORT     ?= 6379
# Ray's dashboard (http://127.0.0.1:8265) costs CPU the model needs on a small machine: off unless
# asked for, `make serve DASHBOARD=1`. The metrics on $(METRICS_PORT) do not need it.
DASHBOARD    ?= 0

## Start the service in the foreground on http://127.0.0.1:8000 (CPU, results under var/),
## with Prometheus metrics on http://127.0.0.1:$(METRICS_PORT)/metrics. Ctrl-C stops both.
## Ray's own settings come from serve.env (direct ingress on port 8000, the controller's pace).
serve: export CUTOUT_DATA_DIR ?= $(CURDIR)/var
# Ray's token authentication, as a bare `serve run` would have it (`ray start` alone does not).
serve: export RAY_AUTH_MODE ?= token
serve: $(STAMP)
	$(BIN)/cutout token init-local local
	@# `serve run` alone would start a Ray whose metrics port is random: start the head here, and
	@# stop it (this head only) when `serve run` ends.
	set -a; . ./serve.env; set +a; export PATH=$(CURDIR)/$(BIN):$$PATH; \
	if [ "$$RAY_AUTH_MODE" = token ]; then ray get-auth-token --generate >/dev/null || exit 1; fi; \
	ray start --head --block --port=$(RAY_PORT) \
	  --include-dashboard=$(if $(filter 1,$(DASHBOARD)),true,false) \
	  --metrics-export-port=$(METRICS_PORT) --disable-usage-stats & head=$$!; \
	trap 'kill $$head 2>/dev/null; wait $$head' EXIT; trap 'exit 130' INT TERM; \
	until python -c 'import socket; socket.create_connection(("127.0.0.1", $(RAY_PORT)), 1)' 2>/dev/null; do \
	  kill -0 $$head 2>/dev/null || exit 1; sleep 1; done; \
	echo "Serve's logs (one file per replica): $${RAY_TMPDIR:-/tmp}/ray/session_latest/logs/serve/"; \
	serve run --address 127.0.0.1:$(RAY_PORT) serve_config.yaml

# the venv's tools first on PATH: tests start `serve` and `ray` as the user would
PYTEST = PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/python -m pytest -q --durations=10

## Lint and check the formatting (ruff, configured in pyproject.toml), then run the whole test suite:
## everything on one Ray node first, then the multi-node cluster tests in a pytest of their own
## (a process holds one Ray cluster at a time).
test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(PYTEST) -m "not cluster"
	$(PYTEST) -m cluster

## Only the tests on a multi-node Ray cluster on this machine (a CPU-less head, two CPU nodes, a node
## with logical GPUs): placement, autoscaling, faults, metrics and logs per node, the batch job.
## `make test` runs them too, after the rest.
test-cluster: $(STAMP)
	$(PYTEST) -m cluster

## Score cutout quality on ../shared/eval (IoU, MAE, boundary F, edge colour error).
eval: $(STAMP)
	$(BIN)/cutout eval

## Throughput and latency side by side (model alone, in-process, the service; rembg's server
## too when REMBG_PYTHON names a python with rembg[cpu,cli]); writes docs/benchmarks.md.
bench: $(STAMP)
	$(BIN)/python benchmarks/bench.py $(if $(REMBG_PYTHON),--rembg-python $(REMBG_PYTHON)) --out docs/benchmarks.md
	$(BIN)/python benchmarks/load.py --out docs/benchmarks.md
	$(BIN)/python benchmarks/bench.py --cache-only --out docs/benchmarks.md
	$(BIN)/python benchmarks/engines.py --out docs/benchmarks.md

## Only the CPU engines of the shipped u2netp side by side (onnxruntime, OpenVINO), into their section.
bench-engines: $(STAMP)
	$(BIN)/python benchmarks/engines.py --out docs/benchmarks.md

## Only the result cache: the same 20 images twice (first pass, then cache hits), into its section.
bench-cache: $(STAMP)
	$(BIN)/python benchmarks/bench.py --cache-only --out docs/benchmarks.md

## Only the loads real clients send (benchmarks/load.py), into its section of docs/benchmarks.md.
bench-load: $(STAMP)
	$(BIN)/python benchmarks/load.py --out docs/benchmarks.md

## Build the cpu and gpu images (Dockerfile) tagged as cluster/rendered/*.yaml name them; PUSH=1 pushes them.
DOCKER ?= docker
image: $(STAMP)
	set -e; for target in cpu gpu; do \
	  tag=$$($(BIN)/python cluster/render.py --print image-$$target); \
	  $(DOCKER) build --target $$target \
	    --build-arg RAY_VERSION=$$($(BIN)/python cluster/render.py --print ray-version) \
	    --build-arg PYTHON_TAG=$$($(BIN)/python cluster/render.py --print python-tag) -t $$tag . ; \
	  if [ -n "$(PUSH)" ]; then $(DOCKER) push $$tag; fi; \
	done

## Render cluster/rendered/<profile>.yaml from cluster/values.yaml, the Serve configs and pyproject.toml.
manifests: $(STAMP)
	$(BIN)/python cluster/render.py --write

## Pin the image's dependencies (requirements.lock) at the versions installed in .venv.
lock: $(STAMP)
	$(BIN)/python cluster/lock.py > requirements.lock

clean:
	rm -rf $(VENV) var .pytest_cache
