# authmw: `make test` and `make demo` work on a fresh machine with Python 3.11+ and make.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# The demos install only what they run (the `demo` extra); `make test` installs everything (`dev` and `bench`).
DEMO_STAMP := $(VENV)/.installed-demo

.PHONY: test demo demo-flask demo-redis lint typecheck unit clean browser bench bench-smoke docs

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[dev,bench]'
	touch $(STAMP) $(DEMO_STAMP) $(VENV)/.installed-docs

$(DEMO_STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[demo]'
	touch $(DEMO_STAMP)

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

# The example apps on http://127.0.0.1:8000 with demo keys (examples/__main__.py prints the URL, the demo users and
# how to get a token once the server answers). Any AUTHMW_* variable already set wins over the demo's.
demo: $(DEMO_STAMP)
	$(BIN)/python -m examples starlette

demo-flask: $(DEMO_STAMP)
	$(BIN)/python -m examples flask

# Sessions in the Redis at AUTHMW_REDIS_URL (default redis://127.0.0.1:6379/0), under the prefix authmw-demo:,
# signed with a fixed demo key, so they survive a restart of the app.
demo-redis: $(DEMO_STAMP)
	$(BIN)/python -m examples starlette --redis

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis site

# The documentation site (mkdocs.yml, docs/) into site/, with only the `docs` extra installed. --strict turns every
# warning into a failure, and mkdocs.yml's `validation` makes a broken link or anchor, or a page left out of the
# nav, a warning. tests/test_docs.py builds it too, and runs every ```python block of docs/ and README.md.
DOCS_STAMP := $(VENV)/.installed-docs

$(DOCS_STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[docs]'
	touch $(DOCS_STAMP)

docs: $(DOCS_STAMP)
	$(BIN)/python -m mkdocs build --strict
