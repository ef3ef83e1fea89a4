# authmw: `make test` and `make demo` work on a fresh machine with Python 3.11+ and make.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: test demo lint typecheck unit clean browser bench bench-smoke

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[dev,bench]'
	touch $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check src tests examples benchmarks
	$(BIN)/ruff format --check src tests examples benchmarks

typecheck: $(STAMP)
	$(BIN)/mypy --strict src/authmw

unit: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test: lint typecheck unit

# Debian's Chromium for tests/test_browser.py: installed with apt-get when missing and we are root. Otherwise the
# browser test skips, unless AUTHMW_REQUIRE_BROWSER=1 (CI), which makes this target (and the test) fail.
CHROMIUM := /usr/bin/chromium
browser:
	@if [ -x $(CHROMIUM) ]; then \
		echo "browser: $(CHROMIUM) present"; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "browser: installing Debian's chromium with apt-get"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium \
			&& test -x $(CHROMIUM) || { echo "FATAL: could not install chromium ($(CHROMIUM))" >&2; exit 1; }; \
	elif [ "$${AUTHMW_REQUIRE_BROWSER:-}" = 1 ]; then \
		echo "FATAL: $(CHROMIUM) is missing and apt-get is unusable (not root?); AUTHMW_REQUIRE_BROWSER=1" >&2; exit 1; \
	else \
		echo "browser: $(CHROMIUM) missing and cannot install it (needs root and apt-get); tests/test_browser.py will skip" >&2; \
	fi

# The benchmark suite (benchmarks/, peers from the `bench` extra; Redis on 127.0.0.1:6379). `bench` is the full
# run (under ~10 minutes) and writes benchmarks/RESULTS.md; `bench-smoke` uses tiny counts, writes nothing and
# fails if any case does not authenticate (tests/test_bench_smoke.py runs it under `make test`).
# Load over HTTP comes from Debian's wrk, installed with apt-get when missing and we are root; otherwise the
# suite falls back to its bounded Python load generator (benchmarks/loadgen.py) and says so.
WRK := wrk
bench: $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[dev,bench]'
	@if command -v $(WRK) >/dev/null; then \
		echo "bench: load generator: $$(command -v $(WRK))"; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "bench: installing Debian's wrk with apt-get"; \
		{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null; } \
			|| echo "bench: could not install wrk; using the in-repo Python load generator (benchmarks/loadgen.py)" >&2; \
	else \
		echo "bench: wrk missing and cannot install it (needs root and apt-get); using the in-repo Python load generator (benchmarks/loadgen.py)" >&2; \
	fi
	$(BIN)/python -m benchmarks --write benchmarks/RESULTS.md

bench-smoke: $(STAMP)
	$(BIN)/python -m benchmarks --smoke

demo: $(STAMP)
	AUTHMW_COOKIE_SECURE=$${AUTHMW_COOKIE_SECURE:-0} \
	AUTHMW_JWT_ALGORITHMS=$${AUTHMW_JWT_ALGORITHMS:-HS256} \
	AUTHMW_JWT_KEY=$${AUTHMW_JWT_KEY:-demo-only-jwt-secret-change-me-0123456789abcdef} \
	$(BIN)/uvicorn examples.starlette_app.app:app --host 127.0.0.1 --port 8000

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis
