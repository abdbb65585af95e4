# triserve developer commands. Both `demo` and `test` create the local virtualenv on first use.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test bench perf crds clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	$(BIN)/python tools/install_binaries.py --dest $(BIN)
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/triserve demo

test: $(STAMP)
	$(BIN)/ruff check src tests
	$(BIN)/ruff format --check src tests
	$(BIN)/mypy
	$(BIN)/lint-imports
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/pytest --cov --cov-report=term:skip-covered -q

bench: $(STAMP)
	$(BIN)/triserve bench --scenario examples/scenarios/reference.yaml

# Performance figures against their targets (reported, not asserted): simulator speed,
# controller decision cost, agent tick CPU/RSS, operator aggregation CPU/RSS.
perf: $(STAMP)
	$(BIN)/python -m triserve.sim.speed
	$(BIN)/pytest -q -s -p no:cacheprovider --no-cov --benchmark-enable tests/benchmarks

crds: $(STAMP)
	$(BIN)/triserve crds

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .coverage
