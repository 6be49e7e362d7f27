# One command vocabulary. `make run` and `make test` set up everything they need first.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
RUST_SRC := $(wildcard matcher_ext/src/*.rs matcher_ext/src/python/*.rs) matcher_ext/Cargo.toml matcher_ext/Cargo.lock
PROTOS := $(wildcard protos/healthcode/v1/*.proto)
PROTO_STAMP := protos/healthcode/v1/.generated

.PHONY: setup build-dev proto browser-deps postgres-deps run test test-rust test-python lint typecheck stubtest bench bench-matcher bench-whatif bench-display bench-city bench-throughput bench-exams bench-shared-keys clean

## setup: the virtualenv, every pinned package, the Rust extension and the generated code
setup: $(VENV)/.installed $(PROTO_STAMP)

$(VENV)/.installed: pyproject.toml $(RUST_SRC)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	# services/, clients/ and the generated healthcode.v1 package import from the checkout
	printf '%s\n%s\n' "$(CURDIR)" "$(CURDIR)/protos" \
	  > "$$($(PY) -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/healthcode_checkout.pth"
	touch $@

## build-dev: rebuild the Rust extension in place after editing matcher_ext/src
build-dev:
	$(PY) -m pip install -q --no-deps -e .
	touch $(VENV)/.installed

## proto: generate Python code and stubs from protos/ (never committed), and the connectrpc
## code the browser gateway serves (services/gateway; `protobuf=google`: the runtime used here)
proto: $(PROTO_STAMP)

$(PROTO_STAMP): $(PROTOS) $(VENV)/.installed Makefile
	@if ls protos/healthcode/v1/*.proto >/dev/null 2>&1; then \
	  PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(PY) -m grpc_tools.protoc -Iprotos \
	    --python_out=protos --mypy_out=protos --grpc_python_out=protos --mypy_grpc_out=protos \
	    --connectrpc_out=protos --connectrpc_opt=protobuf=google \
	    protos/healthcode/v1/*.proto; \
	fi
	touch $@

## browser-deps: Debian's chromium (and a Chinese font for the pages) for tests/browser; never
## `playwright install`. Needs root where they are missing (CI runs as root).
browser-deps:
	command -v chromium >/dev/null || (apt-get update && apt-get install -y chromium)
	fc-list :lang=zh | grep -q . || (apt-get update && apt-get install -y --no-install-recommends fonts-wqy-microhei)

## postgres-deps: Debian's PostgreSQL 15 server binaries for the storage tests (tests/pg.py starts
## a throwaway cluster from /usr/lib/postgresql/15/bin; the Debian package's own cluster is not
## used). Needs root where it is missing (CI runs as root).
postgres-deps:
	test -x /usr/lib/postgresql/15/bin/initdb || (apt-get update && apt-get install -y --no-install-recommends postgresql-15)

## run: the whole platform on loopback with a demo population
run: setup
	$(PY) -m clients.demo

## test: every test, Rust and Python
test: setup test-rust lint typecheck stubtest test-python

test-rust:
	cd matcher_ext && cargo clippy --quiet --all-targets -- -D warnings && cargo test --quiet

test-python: setup browser-deps postgres-deps
	$(PY) -m pytest -q

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	cd protos && ../$(VENV)/bin/buf lint

## typecheck: mypy over the whole tree (files and paths in pyproject.toml)
typecheck: setup
	$(PY) -m mypy

stubtest: setup
	$(PY) -m mypy.stubtest healthcode_matcher._native --ignore-missing-stub

## bench-matcher: 18 M persons, 25 M phones, 42 sources; matcher vs the pyroaring reference
bench-matcher: setup
	$(PY) -m bench.bench_matcher

## bench-whatif: a draft rule set over 18 M persons beside the active one (target < 5 s)
bench-whatif: setup
	$(PY) -m bench.bench_whatif

## bench-display: Show/Scan per second through the four real services, beside a gRPC health baseline
bench-display: setup
	$(PY) -m bench.bench_display

## bench-city: the four real services brought to 18 M people through the import and feed RPCs
bench-city: setup postgres-deps
	$(PY) -m bench.bench_city --storage postgresql

## bench-throughput: Show, Scan and EvaluateStream beside a bare gRPC echo server, 1 and 2 processes, the midnight peak
bench-throughput: setup
	$(PY) -m bench.bench_throughput

## bench-exams: an exam's 50,000 candidates through `healthcode exam verify` and the real services
bench-exams: setup
	$(PY) -m bench.bench_exams

## bench-shared-keys: 2 worker processes holding an 18 M index, their own keys against one shared file
bench-shared-keys: setup
	$(PY) -m bench.bench_shared_keys

bench: bench-matcher bench-whatif bench-throughput bench-shared-keys bench-exams

clean:
	rm -rf $(VENV) matcher_ext/target $(PROTO_STAMP) protos/healthcode/v1/*_pb2*.py*
