# buildingd: `make run` (demo building on the simulator) and `make test` (everything) work on a
# fresh Debian / Raspberry Pi OS machine with Python 3.11+. Nothing else is needed beforehand.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
HA_VENV := .venv-ha
SPEED  ?= 60
STATE  ?= $(CURDIR)/state
PYFILES := buildingd tests bench

.PHONY: run test lint bench check system-deps install install-test install-ha install-service uninstall-service clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e .
	touch $@

# Test extras build dbus-python (for python-dbusmock), which needs Debian's dev packages first.
$(VENV)/.installed-test: pyproject.toml | $(BIN)/python
	sh .ci/system-deps.sh
	$(BIN)/pip install -q -e '.[test]'
	touch $@ $(VENV)/.installed

# Home Assistant core in a venv of its own (never buildingd's), for tests/test_ha_*.py.
# About 3 minutes once on a fresh machine (measured: 2m52s with a warm pip cache).
$(HA_VENV)/.installed: tests/ha/requirements.txt
	$(PYTHON) -m venv $(HA_VENV)
	$(HA_VENV)/bin/pip install -q --upgrade pip
	$(HA_VENV)/bin/pip install -q -r tests/ha/requirements.txt
	touch $@

install: $(VENV)/.installed
install-test: $(VENV)/.installed-test
install-ha: $(HA_VENV)/.installed

system-deps:
	sh .ci/system-deps.sh

# The demo building, simulated devices, one simulated hour per minute, starting on a workday
# morning. BUILDINGD_DURATION=60 stops it after a minute.
run: install
	BUILDINGD_STATE_DIR=$${BUILDINGD_STATE_DIR:-$(STATE)} $(BIN)/buildingd run --speed $(SPEED) \
		--start workday $(if $(BUILDINGD_DURATION),--duration $(BUILDINGD_DURATION))

check: install
	$(BIN)/buildingd check --verbose

lint: install-test
	$(BIN)/ruff check $(PYFILES)
	$(BIN)/ruff format --check $(PYFILES)
	$(BIN)/mypy
	$(BIN)/lint-imports

# One worker per core (pytest-xdist): on 2 cores the whole suite takes about 5 min (8.5 serially);
# on a busy shared machine 14 instead of 22. Every test takes its own ports, directories, brokers.
test: install-test install-ha lint
	$(BIN)/python -m pytest -q -n auto

bench: install-test
	$(BIN)/python bench/run_all.py --out bench/results.json

# On a Pi or gateway: a venv under /opt/buildingd, the unit, the sysusers file and an example
# /etc/buildingd (never overwritten). See docs/systemd.md.
install-service:
	sudo systemd/install.sh

uninstall-service:
	sudo systemd/uninstall.sh

clean:
	rm -rf $(VENV) $(HA_VENV) state .pytest_cache .mypy_cache .ruff_cache
