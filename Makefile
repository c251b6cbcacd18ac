# buildingd: `make run` (demo building on the simulator) and `make test` (everything) work on a
# fresh Debian / Raspberry Pi OS machine with Python 3.11+. Nothing else is needed beforehand.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
SPEED  ?= 60
STATE  ?= $(CURDIR)/state
PYFILES := buildingd tests bench

.PHONY: run test lint bench check system-deps install install-test install-service uninstall-service clean

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

install: $(VENV)/.installed
install-test: $(VENV)/.installed-test

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

test: install-test lint
	$(BIN)/python -m pytest -q

bench: install-test
	$(BIN)/python bench/run_all.py --out bench/results.json

# On a Pi or gateway: a venv under /opt/buildingd, the unit, the sysusers file and an example
# /etc/buildingd (never overwritten). See docs/systemd.md.
install-service:
	sudo systemd/install.sh

uninstall-service:
	sudo systemd/uninstall.sh

clean:
	rm -rf $(VENV) state .pytest_cache .mypy_cache .ruff_cache
