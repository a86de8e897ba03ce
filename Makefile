# The two commands a user needs are `make demo` and `make test` (see README.md).
# Everything else here is a step they call.
SHELL := /bin/bash
VENV ?= $(or $(MSV_CACHE),$(HOME)/.cache/modelservice)/venv
PY := $(VENV)/bin/python

.PHONY: demo test bootstrap cluster-build lint unit

bootstrap:
	@scripts/bootstrap

cluster-build: bootstrap
	@$(PY) -m localcluster build

lint: bootstrap
	@scripts/lint

## Sets everything up and runs every check and test (what CI runs).
test:
	@scripts/test

## Sets everything up and runs the demo end to end.
demo:
	@scripts/demo
