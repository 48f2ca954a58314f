# AdaptFace — one-command setup. `make demo` runs the main job on the embedded benchmark (CPU);
# `make test` runs the test-suite (unit tests + notebook regression tests with nbval).
SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
NOTEBOOKS := $(sort $(wildcard notebooks/0*.ipynb))
RUN_DIR := results/notebooks
# Where the shared data/weights live (read-only); override with `make demo AFR_SHARED=/path`.
export AFR_SHARED ?= $(abspath ../shared)
export PYTHONHASHSEED := 0

.PHONY: venv demo test bench notebooks clean-data help apt

help:
	@echo "make demo   - create .venv, install, build the embedded benchmark, run the notebooks (CPU)"
	@echo "make test   - create .venv if needed and run unit tests + nbval notebook tests"
	@echo "make bench  - run the benchmarks in bench/ (prints ratios measured side by side)"
	@echo "make apt    - install the Debian packages in apt.txt (LaTeX for the paper) when root and apt-get exist"

venv: $(STAMP)

$(STAMP): requirements.txt pyproject.toml
	@test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip 2>&1 | grep -v "^WARNING: Location" || true
	$(PY) -m pip install -q -r requirements.txt 2>&1 | grep -v "^WARNING: Location" || true
	$(PY) -m pip install -q --no-deps --no-build-isolation -e . 2>&1 | grep -v "^WARNING: Location" || true
	$(PY) -c "import torch, transformers, peft, kornia, afr; print('environment ready: torch', torch.__version__, '| transformers', transformers.__version__, '| peft', peft.__version__)"
	@touch $@

# Each notebook runs with papermill (default parameters) into results/notebooks/, in numbered order.
notebooks: $(STAMP)
	@mkdir -p $(RUN_DIR)
	@for nb in $(NOTEBOOKS); do \
	  echo "== papermill $$nb"; \
	  $(VENV)/bin/papermill --cwd notebooks --log-level WARNING "$$nb" "$(RUN_DIR)/$$(basename $$nb)"; \
	done

demo: notebooks
	@echo "Done. Executed notebooks: $(RUN_DIR)/; metrics: results/*.json; figures: figures/"

test: $(STAMP)
	$(PY) -m pytest tests notebooks --nbval-lax --durations=15

bench: $(STAMP)
	@for script in bench/*.py; do echo "== $$script"; $(PY) "$$script"; done

# Debian packages (apt.txt): installed when we are root and apt-get exists; otherwise say what to install.
APT_PACKAGES := $(shell grep -v '^\s*\#' apt.txt 2>/dev/null | tr '\n' ' ')
apt:
	@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  missing=$$(for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	  if [ -n "$$missing" ]; then echo "apt-get install $$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	  else echo "apt packages already installed: $(APT_PACKAGES)"; fi; \
	else echo "skipping apt packages (not root or no apt-get); install them yourself: $(APT_PACKAGES)"; fi

clean-data:
	rm -rf data/processed
