# The two set-up commands of the README: `make run` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: run test install lint bench clean

run: $(STAMP)
	$(BIN)/redgrid run

# Whole suite: SQLite and PostgreSQL back ends, real Redis. Services that are missing
# make their tests skip locally; under CI=true they fail instead.
test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade "pip>=25.1"
	$(BIN)/python -m pip install --quiet -e . --group dev
	touch $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check bot dispatcher models jobs redgrid tests bench
	$(BIN)/mypy

clean:
	rm -rf $(VENV) var
