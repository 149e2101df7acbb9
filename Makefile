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

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
