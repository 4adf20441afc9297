# Two commands do all the set-up on a fresh machine:
#   make run    serve one in-memory process on 127.0.0.1:8888 (ARGS="--port 9000" to change)
#   make test   lint (ruff, mypy --strict), run the whole test suite, and report its branch coverage
VENV := .venv
PY := $(VENV)/bin/python
# The Node tools of the tests: tsc checks the browser client's declarations, axe-core the pages.
NODE_TOOLS := tests/node/node_modules/.installed
ARGS ?=

.PHONY: run test lint

# The pinned dependencies, then the package itself, editable: its command runs this checkout.
$(VENV)/.installed: requirements.txt pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps -e .
	touch $@

run: $(VENV)/.installed
	$(VENV)/bin/aether-tornado $(ARGS)

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

$(NODE_TOOLS): tests/node/package-lock.json
	npm ci --prefix tests/node --no-audit --no-fund --loglevel=error
	touch $@

# Every test under coverage, the server processes the tests start included (pyproject.toml):
# the report lists what no test reached, and the run fails under its floor.
test: $(VENV)/.installed lint
	scripts/system-packages.sh
	$(MAKE) --no-print-directory $(NODE_TOOLS)
	rm -f .coverage .coverage.*
	$(PY) -m coverage run -m pytest
	$(PY) -m coverage combine -q
	$(PY) -m coverage report
