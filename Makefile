# multiwan.linux — the two commands users need: `make demo` and `make test` (run as root).
SHELL := /bin/bash
.DEFAULT_GOAL := help
VENV := .venv
LAB ?= mwl
DEMO_TOPOLOGY ?= lab/topologies/two-sites.yml

.PHONY: help bootstrap test demo demo-down sanity lint unit clean

help:
	@echo "make demo   - bring up a two-site multi-ISP lab and show it"
	@echo "make test   - the whole test pipeline (unit, lab, sanity 2.19 + 2.21, lint, molecule)"
	@echo "make demo-down - remove the demo lab"

bootstrap:
	@scripts/bootstrap.sh

test: bootstrap
	@scripts/test.sh

demo: bootstrap
	@scripts/demo.sh $(LAB) $(DEMO_TOPOLOGY)

demo-down:
	@PYTHONPATH=lab $(VENV)/bin/python -m mwlab --lab $(LAB) down

sanity: bootstrap
	@scripts/sanity.sh .venv && scripts/sanity.sh .venv-2.19

lint: bootstrap
	@$(VENV)/bin/ansible-lint --profile production --offline

unit: bootstrap
	@$(VENV)/bin/python -m pytest -q tests/unit

clean:
	rm -rf .build
