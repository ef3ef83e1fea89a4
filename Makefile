# authmw: `make test` and `make demo` work on a fresh machine with Python 3.11+ and make.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: test demo lint typecheck unit clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check src tests examples
	$(BIN)/ruff format --check src tests examples

typecheck: $(STAMP)
	$(BIN)/mypy --strict src/authmw

unit: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test: lint typecheck unit

demo: $(STAMP)
	AUTHMW_COOKIE_SECURE=$${AUTHMW_COOKIE_SECURE:-0} \
	AUTHMW_JWT_ALGORITHMS=$${AUTHMW_JWT_ALGORITHMS:-HS256} \
	AUTHMW_JWT_KEY=$${AUTHMW_JWT_KEY:-demo-only-jwt-secret-change-me-0123456789abcdef} \
	$(BIN)/uvicorn examples.starlette_app.app:app --host 127.0.0.1 --port 8000

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis
