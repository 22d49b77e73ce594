# Set-up and the two everyday jobs. `make run` and `make test` each create the environment first.
#   TORCH_SPEC: the torch to install before the package. The default is the CPU build; a GPU user
#   passes their own (e.g. TORCH_SPEC='torch==2.13.0' with their index options) or TORCH_SPEC=
#   (empty) to keep the torch the environment already has.
PYTHON ?= python3.11
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
RUN_ARGS ?=
PYTEST_ARGS ?=

BIN := $(VENV)/bin

.PHONY: env run test bench clean

env: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(if $(strip $(TORCH_SPEC)),$(BIN)/python -m pip install -q "$(TORCH_SPEC)")
	$(BIN)/python -m pip install -q -e ".[test]"
	touch $@

run: env
	$(BIN)/spinebench run $(RUN_ARGS)

test: env
	$(BIN)/python -m pytest $(PYTEST_ARGS)

bench: env
	$(BIN)/python -m pip install -q -e ".[bench]"
	$(BIN)/python perf/run_all.py

clean:
	rm -rf $(VENV) .pytest_cache
