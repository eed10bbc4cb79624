# dvdexit developer tasks (GNU make). `make demo` and `make test` work from a clean clone.

PYTHON ?= python3
VENV := .venv
VPY := $(VENV)/bin/python
# Written after a successful install; pyproject.toml changes make it stale.
STAMP := $(VENV)/.dvdexit-installed
# Two test processes, one file each at a time: most tests wait on peers, not on a core.
PYTEST_ARGS ?= -n 2 --dist loadfile

.DEFAULT_GOAL := help
.PHONY: help .venv demo test lint typecheck clean distclean

help:
	@echo "make demo       send a synthetic DVD to a local receiver and verify it"
	@echo "make test       lint, typecheck, then the test suite (installs DCMTK and dicom3tools when root)"
	@echo "make lint       ruff check + ruff format --check"
	@echo "make typecheck  mypy --strict over dvdexit_cli"
	@echo "make clean      remove caches and demo-out/ (distclean also removes .venv/)"

.venv: $(STAMP)

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null 2>&1 || { \
	  echo "error: '$(PYTHON)' not found. Install Python 3.11+ or run: make PYTHON=/path/to/python3.11 ..." >&2; \
	  exit 1; }
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { \
	  echo "error: dvdexit needs Python 3.11 or newer, but $(PYTHON) is $$($(PYTHON) -V 2>&1)." >&2; \
	  echo "       Install a newer Python and run: make PYTHON=python3.11 ..." >&2; \
	  exit 1; }
	@# Debian ships venv/ensurepip separately (python3-venv); install it when we may.
	@if [ ! -x $(VPY) ] && ! $(PYTHON) -c 'import ensurepip, venv' >/dev/null 2>&1; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "Installing python3-venv (needed to create $(VENV))"; \
	    apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends python3-venv; \
	  else \
	    echo "error: $(PYTHON) cannot create a virtual environment; install python3-venv (apt-get install python3-venv)." >&2; \
	    exit 1; \
	  fi; \
	fi
	@[ -x $(VPY) ] || $(PYTHON) -m venv $(VENV)
	$(VPY) -m pip install --quiet --upgrade pip
	$(VPY) -m pip install --quiet -e '.[test]'
	@touch $@

demo: .venv
	$(VPY) scripts/demo.py

test: .venv lint typecheck
	scripts/ensure-peers.sh
	$(VPY) -m pytest $(PYTEST_ARGS)

lint: .venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: .venv
	$(VENV)/bin/mypy

clean:
	rm -rf demo-out build .pytest_cache .mypy_cache .ruff_cache *.egg-info
	find . -path ./$(VENV) -prune -o -type d -name __pycache__ -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV)
