# FlagMeter: `make run` starts everything locally, `make test` runs every test.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PYTEST_ARGS ?=

.PHONY: run test test-fast lint loadtest bench image clean help

help:
	@echo "make run       start PostgreSQL, Redis (under .run/), the API and the worker; print keys"
	@echo "make test      run every test (real PostgreSQL, Redis, Docker, Chromium, promtool, k6, Molecule)"
	@echo "make test-fast the quick suites only (no docker, molecule, browser or slow tests)"
	@echo "make lint      ruff, ruff format, mypy --strict, yamllint, ansible-lint, the playbook syntax check"
	@echo "make loadtest  k6 against a local stack or BASE_URL"
	@echo "make bench     the benchmark harness (results under bench/results/)"
	@echo "make image     build the flagmeter:local container image"

$(BIN)/flagmeter: pyproject.toml requirements.lock
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
		{ echo "FlagMeter needs Python >= 3.11 (found $$($(PYTHON) --version))"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -r requirements.lock
	$(BIN)/pip install -q --no-deps -e .
	@touch $@

run:
	@.ci/system-deps.sh run
	@$(MAKE) --no-print-directory $(BIN)/flagmeter
	$(BIN)/flagmeter dev

# The linters run first (make lint), then every other test.
LINT_TESTS := tests/test_lint.py tests/ansible/test_ansible_lint.py

test:
	@.ci/system-deps.sh test
	@$(MAKE) --no-print-directory $(BIN)/flagmeter
	@$(MAKE) --no-print-directory lint
	$(BIN)/pytest -ra --durations=20 $(addprefix --ignore=,$(LINT_TESTS)) $(PYTEST_ARGS)

test-fast: $(BIN)/flagmeter
	$(BIN)/pytest -ra -m "not docker and not molecule and not browser and not slow" $(PYTEST_ARGS)

lint: $(BIN)/flagmeter
	$(BIN)/pytest -q $(LINT_TESTS)

loadtest: $(BIN)/flagmeter
	$(BIN)/python loadtest/run.py

bench:
	@.ci/system-deps.sh bench
	@$(MAKE) --no-print-directory $(BIN)/flagmeter
	$(BIN)/python bench/run.py

image:
	.ci/dockerd.sh
	.ci/compose-plugin.sh
	DOCKER_BUILDKIT=1 docker build -t flagmeter:local .

clean:
	rm -rf $(VENV) build dist src/*.egg-info
