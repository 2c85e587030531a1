# The two commands a new user runs: `make run` and `make test`. Both create .venv.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run test lint typecheck pytest proto bench bench-quick bench-ab bench-clients bench-sched bench-native bench-counts clean

$(STAMP): pyproject.toml setup.py clients/python/pyproject.toml pdp/server/_wire.c pdp/policy/_json.c \
		pdp/policy/_doorkeeper.c
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ./clients/python -e '.[dev]'
	touch $(STAMP)

## run: serve on loopback with a dev PKI and the example bundle (under ./.pdp-dev)
run: $(STAMP)
	$(BIN)/pdp run

## test: the one quality gate: ruff, mypy (strict on pdp/), pytest with warnings as errors
test: lint typecheck pytest

lint: $(STAMP)
	$(BIN)/ruff check setup.py pdp tests benchmarks scripts clients/python examples

typecheck: $(STAMP)
	$(BIN)/mypy

pytest: $(STAMP)
	$(BIN)/pytest $(PYTEST_ARGS)

## proto: regenerate the gRPC stubs from proto/pdp/v1 into the client package
proto: $(STAMP)
	$(BIN)/python scripts/gen_proto.py

bench: $(STAMP)
	$(BIN)/python -m benchmarks.run --full

bench-quick: $(STAMP)
	$(BIN)/python -m benchmarks.run --quick

## bench-ab: the working tree side by side with an older revision: make bench-ab OLD=<rev>
## (CLIENT=native: the load from the native generator of bench-native instead of pdp-client)
bench-ab: $(STAMP)
	@test -n "$(OLD)" || { echo "usage: make bench-ab OLD=<revision> [CLIENT=native]"; exit 2; }
	$(BIN)/python -m benchmarks.ab $(OLD) $(if $(CLIENT),--client $(CLIENT))

## bench-clients: is the client the bottleneck? the same load from 1 to 4 load generators
bench-clients: $(STAMP)
	$(BIN)/python -m benchmarks.clients

## bench-native: the targets with a native (C++) load generator; needs g++, pkg-config, libgrpc++-dev
bench-native: $(STAMP)
	$(BIN)/python -m benchmarks.native

## bench-counts: the function calls per request of the floor and pdp, counted, not timed
bench-counts: $(STAMP)
	$(BIN)/python -m benchmarks.counts

## bench-sched: the floor and pdp under Linux's default CPU scheduling policy and SCHED_BATCH
bench-sched: $(STAMP)
	$(BIN)/python -m benchmarks.scheduling

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
