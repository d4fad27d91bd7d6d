# The index of what a developer can do. Two commands set everything up: `make run`, `make test`.
PYTHON ?= python3
VENV := .venv
# pytest is the only test dependency; when the machine lacks it, bootstrap it into .venv (git-ignored).
PYTEST_PY = $(shell $(PYTHON) -c "import pytest" >/dev/null 2>&1 && echo $(PYTHON) || echo $(VENV)/bin/python)

.PHONY: run test bench bench-deps bench-against stress lint clean

run:                ## the built-in demo server on http://127.0.0.1:8080/ (WebSocket echo at /echo)
	$(PYTHON) -m minisoup --bind 127.0.0.1:8080

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet pytest

test: $(if $(filter $(VENV)/bin/python,$(PYTEST_PY)),$(VENV)/bin/python)  ## the test suite (bootstraps pytest if missing)
	$(PYTEST_PY) -m pytest -q -p no:cacheprovider tests

bench:              ## speed figures: HTTP, WebSocket echo, masking, deflate, pre-fork scaling, TLS, pub/sub fan-out (vs websockets, in .venv-bench), the peers table (libsoup in C, aiohttp, websockets, stdlib)
	$(PYTHON) tools/bench.py

bench-deps:         ## what the bench's peers section needs from Debian (as root): a C compiler, libsoup-3.0-dev, wrk; without them it skips those peers
	apt-get install -y gcc libsoup-3.0-dev wrk

bench-against:      ## the headline figures against another revision's, one run (make bench-against REV=abc123)
	$(PYTHON) tools/bench_against.py $(or $(REV),HEAD~1)

stress:             ## the long reliability runs (slowloris, idle memory, faults)
	$(PYTHON) tools/stress.py

lint:               ## byte-compile everything and check the stdlib-only promise
	$(PYTHON) -m compileall -q minisoup tests tools
	$(PYTHON) tools/check_stdlib.py

clean:
	rm -rf $(VENV) .venv-bench build dist *.egg-info .pytest_cache
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
