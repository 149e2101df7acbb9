# podvm-bootstrap: the two commands of the README, and their helpers (README.md "Other make targets").
VENV ?= .venv
PYTEST_ARGS ?=

.PHONY: deps lint test test-unit image image-disk demo demo-vm bench deb man clean

deps:
	./scripts/host-deps.sh

# ruff (lint, import order) on the package and the tests, then mypy on the
# package (strict on the pure core); configured in pyproject.toml.
lint: deps
	$(VENV)/bin/ruff check podvm_bootstrap tests
	$(VENV)/bin/mypy

test: deps lint
	$(VENV)/bin/python -m pytest -q $(PYTEST_ARGS)

test-unit: deps
	$(VENV)/bin/python -m pytest -q -m "not vm" $(PYTEST_ARGS)

# The pod VM image (test bed: stand-in components), cached under $(PODVM_CACHE)
# (default /var/cache/podvm-bootstrap) by the hash of its inputs.
image: deps
	$(VENV)/bin/python image/build.py

# The same image as a bootable disk (raw and qcow2, dm-verity store, Debian's
# cloud kernel), cached beside it (docs/image-building.md "The pod VM as a disk").
image-disk: deps
	$(VENV)/bin/python image/disk.py

# Builds the image, boots it with sample user-data (an override of the
# forwarder's image), shows status, units and start order, then shuts it down.
demo: deps
	$(VENV)/bin/python image/demo.py

# Boots the disk under QEMU like the adaptor's libvirt provider (cidata, vTPM),
# shows the console, mounts, status, start order and the measured launch.
demo-vm: deps
	$(VENV)/bin/python image/demo_vm.py

# Benchmarks in the booted pod VM test bed (docs/benchmarks.md): prints one
# table and writes bench/results/latest.md and latest.json (about 15 minutes),
# the cost of measured launch (bench/measure_cost.py, swtpm) as its last section.
bench: deps
	$(VENV)/bin/python bench/run.py

# The Debian package (dpkg-buildpackage + debhelper + pybuild), written to
# dist/podvm-bootstrap_<version>_all.deb (docs/image-building.md "1. The package").
deb: deps
	./scripts/build-deb.sh

# The man pages alone, into build/man (podvm-bootstrap.8 from the command line
# parser, the baked files' section 5 pages from the docs; scripts/build-man.py).
man: deps
	$(VENV)/bin/python scripts/build-man.py build/man

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache
