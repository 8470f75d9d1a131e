# Two commands do all set-up on a fresh machine (only Python >= 3.11 and pip needed):
#   make demo   - build .venv with only what the demo needs ([service]) and run the demo
#                 (simulated GPUs, by design, labelled as such)
#   make test   - build .venv and run lint, format check, types and the whole test suite
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# The demo's own install: the [service] extra only (no linters, type checker, browsers or test
# tools), in the same .venv. Where `make test` already installed [dev] (a superset) it is reused.
DEMO_STAMP := $(VENV)/.installed-service

.PHONY: demo screenshots test test-fast lint types pytest integrations browser bench gpu images clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "thermoledger needs Python >= 3.11")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

$(DEMO_STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "thermoledger needs Python >= 3.11")'
	@if [ -f $(STAMP) ] && [ $(STAMP) -nt pyproject.toml ]; then :; else \
	  [ -x $(BIN)/python ] || $(PYTHON) -m venv $(VENV); \
	  echo "installing thermoledger[service] into $(VENV)"; \
	  $(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[service]' || exit 1; fi
	@touch $(DEMO_STAMP)

# A short simulated job metered, served by the embedded service (SQLite) and reported; the run
# page goes to demo/report.html in the user's data directory. DEMO_ARGS=--serve keeps the pages
# up until Ctrl-C.
demo: $(DEMO_STAMP)
	$(BIN)/thermoledger-server demo $(DEMO_ARGS)

# The README's screenshots (docs/img/report.png, report-bounds.png), taken from the demo's run
# page in headless Chromium (docs/screenshots.py).
screenshots: $(STAMP) browser
	$(BIN)/python docs/screenshots.py

# The packages are linted a second time through thermoledger/<folder> (symlinks), where each
# module has its installed name: that is where the ban on the bare names (TID251) can hold.
PACKAGES := accounting meters db service migrations integrations

lint: $(STAMP)
	$(BIN)/ruff check . $(addprefix thermoledger/,$(PACKAGES))
	$(BIN)/ruff format --check .

types: $(STAMP)
	$(BIN)/mypy

# The page tests drive a real headless Chromium (Debian's package; Playwright's own browser
# download needs the internet). Installed here when missing and we may (root + apt-get).
browser:
	@command -v chromium >/dev/null 2>&1 || [ -n "$$THERMOLEDGER_CHROMIUM" ] || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing Debian's chromium for the browser tests"; \
	    apt-get install -y -q chromium >/dev/null 2>&1 || \
	    { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q chromium >/dev/null; }; \
	  else \
	    echo "note: no chromium; browser tests skip (fail under CI=true); install Debian's chromium"; \
	  fi; }

# One process per core, up to 4 (pytest-xdist), each taking whole test files, so a module's
# fixtures (a live server, a seeded database) are built once: 4.5 min instead of 13 on 2 cores.
# PYTEST_WORKERS=0 runs in this process, as plain `pytest` does.
PYTEST_WORKERS ?= auto
pytest: $(STAMP) browser
	$(BIN)/pytest -n $(PYTEST_WORKERS) --maxprocesses=4 --dist loadfile

# The framework callbacks' lane (thermoledger.integrations, tests/integrations, which the main
# suite leaves out): its own venv with the [hf,lightning] extras and pytest, built once per
# pyproject.toml. torch is pinned to the CPU build this machine keeps (2.13.0): any other torch
# requirement pulls a multi-GB CUDA build from the index.
IVENV  := .venv-integrations
ISTAMP := $(IVENV)/.installed
TORCH  := torch==2.13.0

$(ISTAMP): pyproject.toml tests/integrations/constraints.txt
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "thermoledger needs Python >= 3.11")'
	$(PYTHON) -m venv $(IVENV)
	$(IVENV)/bin/python -m pip install --quiet --disable-pip-version-check \
	  -c tests/integrations/constraints.txt '$(TORCH)' -e '.[hf,lightning]' 'pytest>=8.2'
	@touch $(ISTAMP)

integrations: $(ISTAMP)
	$(IVENV)/bin/pytest tests/integrations -q

test: lint types pytest integrations

# The edit-test loop: the same gates, without the tests marked `slow` (subprocesses, live
# servers, builds, browsers). CI runs `make test`, everything.
test-fast: lint types
	$(BIN)/pytest -n $(PYTEST_WORKERS) --maxprocesses=4 --dist loadfile -m "not slow" -q

bench: $(STAMP)
	$(BIN)/python bench/integrate.py

# The real-GPU lane, on a machine lent an NVIDIA GPU: the tests marked `gpu` (failing where NVML
# sees no GPU) and `bench/accuracy.py --real`, time-limited. Builds nothing (no internet there):
# it takes this .venv if it runs there, else python3 with the checkout on PYTHONPATH (.ci/gpu).
gpu:
	.ci/gpu

# Builds deploy/Dockerfile's two images with podman/buildah and runs them, offline: the meter's
# `thermoledger --help` as a user other than root, and deploy/compose.yaml up to /readyz
# (deploy/images.sh; the recipe from ../shared/tools/oci beside the clone; needs root).
images:
	deploy/images.sh

clean:
	rm -rf $(VENV) $(IVENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis
