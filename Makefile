# Two commands do all set-up: `make run` and `make test`. Both create .venv on first use.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed

.PHONY: run run-single test lint bench simulate clean

$(STAMP): pyproject.toml
	test -d $(VENV) || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/dsdn cluster up

run-single: $(STAMP)
	USE_MOCK_DA=true $(BIN)/dsdn-coordinator

test: $(STAMP)
	$(BIN)/pytest

simulate: $(STAMP)
	$(BIN)/dsdn simulate --seeds 0:10000

lint: $(STAMP)
	$(BIN)/ruff check .

bench: $(STAMP)
	$(BIN)/python -m bench.placement
	$(BIN)/python -m bench.replay
	$(BIN)/python -m bench.http
	$(BIN)/python -m bench.frost
	$(BIN)/python -m bench.peer
	$(BIN)/python -m bench.receipts
	$(BIN)/python -m bench.reconcile

clean:
	rm -rf $(VENV) .dsdn .pytest_cache
