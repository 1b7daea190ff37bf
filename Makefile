# The project's commands. Everything installs into .venv; the broker lives under .kafka/.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PYTEST_ARGS ?=
# pytest-xdist processes for `make test` (0: every test in one process, in file order)
TEST_PROCESSES ?= 2

.PHONY: install test lint demo bench peers kafka-up kafka-down clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test,lint,stats]'
	touch $@

## test: every test, unit and integration, against a real broker (started when none answers),
## in TEST_PROCESSES processes side by side, a test file in one process (its fixtures, such as
## a broker of its own, are set up once)
test: install
	$(BIN)/python -m pytest -n $(TEST_PROCESSES) --dist loadfile $(PYTEST_ARGS)

## lint: ruff (lint and format) and mypy --strict on streams/ and bench/
lint: install
	$(BIN)/ruff check streams bench tests scripts
	$(BIN)/ruff format --check streams bench tests scripts
	$(BIN)/mypy

## demo: the main job on a local broker: a worker, a realistic sample, what was joined
demo: install
	$(BIN)/python -m streams.demo

## bench: the benchmark of BENCHMARK.md: the worker, the lean loop, Kafka Streams, Quix Streams
## (the peers are built on demand; BENCH_ARGS=--scale for the scale mode)
bench: install
	$(BIN)/python -m bench $(BENCH_ARGS)

## peers: build the benchmark's peers now (bench/kstreams with Maven, .venv-quix)
peers: install
	$(BIN)/python -m bench.peers

## kafka-up: the local broker on localhost:9092; `make kafka-up KAFKA_SECURE=1` starts the
## secured one instead (localhost:19092, SASL and TLS listeners on 19094-19096, see README)
kafka-up:
	scripts/kafka.sh up

kafka-down:
	scripts/kafka.sh down

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis streams-data
	rm -rf .venv-quix bench/kstreams/target .peers-build.lock
