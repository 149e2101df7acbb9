# podvm-bootstrap: the two commands of the README, and their helpers.
VENV ?= .venv
PYTEST_ARGS ?=

.PHONY: deps test test-unit demo bench clean

deps:
	./scripts/host-deps.sh

test: deps
	$(VENV)/bin/python -m pytest -q $(PYTEST_ARGS)

test-unit: deps
	$(VENV)/bin/python -m pytest -q -m "not vm" $(PYTEST_ARGS)

# Benchmarks in the booted pod VM test bed (README "Benchmarks"): prints one
# table and writes bench/results/latest.md and latest.json (about 15 minutes).
bench: deps
	$(VENV)/bin/python bench/run.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
