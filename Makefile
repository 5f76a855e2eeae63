# Every target sets itself up: a fresh clone needs only `make synth` / `make test`.
# Setup is skipped when current: the stamp files are named after a hash of the
# requirement files and the npm lockfile, so editing either re-runs setup.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
STAGES ?=
STAGE ?=
FORCE ?=
ARGS ?=
ACCOUNT ?=
# `make diff BASE=<git ref>`: offline diff of the working tree against a ref.
BASE ?=
# `make diff BASE=... REPORT=diff.md`: also write the Markdown report (PR comment).
REPORT ?=
# `make deploy STAGE=dev REQUIRE_APPROVAL=never`: CI only, after its approval gate.
REQUIRE_APPROVAL ?=

REQ_HASH := $(shell cat requirements.txt requirements-dev.txt | sha256sum | cut -c1-16)
NPM_HASH := $(shell cat package.json package-lock.json | sha256sum | cut -c1-16)
PY_STAMP := $(VENV)/.stamp-$(REQ_HASH)
NODE_STAMP := node_modules/.stamp-$(NPM_HASH)

# Project-local Node 22 and CDK CLI first, then the venv: jsii and `cdk` never
# see the machine's end-of-life Node 20.
export PATH := $(CURDIR)/node_modules/.bin:$(CURDIR)/$(VENV)/bin:$(PATH)
# Nothing but the package registries is reachable: no CLI telemetry, notices
# or version checks.
export CDK_DISABLE_CLI_TELEMETRY := true
export CDK_DISABLE_VERSION_CHECK := true
export PYTHONDONTWRITEBYTECODE := 1

CDK := cdk --no-notices
STAGE_CONTEXT := $(if $(STAGES),-c stages=$(STAGES),)
# The stage being deployed, diffed or destroyed, pinned to ACCOUNT if given.
ONE_STAGE := -c stages=$(STAGE) $(if $(ACCOUNT),-c account=$(ACCOUNT),)

.PHONY: help setup synth test bench bench-drill bench-idle bootstrap deploy destroy diff cost drift clean

help:
	@echo "make synth [STAGES=dev,prod]   synthesize offline, print a summary"
	@echo "make test                      the whole test suite"
	@echo "make bench                     synth wall-time benchmark"
	@echo "make bootstrap STAGE=dev       cdk bootstrap the stage's account/region (AWS credentials)"
	@echo "make bench-drill [ARGS=...]    runs drill: goodput, steps lost, notice to resumed (tiny and 1 GiB checkpoints)"
	@echo "make bench-idle                idle-shutdown sweep over 100/1,000/5,000 instances, import time"
	@echo "make diff BASE=origin/main [STAGES=dev] [REPORT=diff.md]"
	@echo "                               offline diff vs a git ref + summary, stateful guard, cost delta"
	@echo "make diff STAGE=dev            cdk diff against the deployed stage (AWS credentials)"
	@echo "make cost [STAGES=dev]         monthly cost: always-on and max capacity, per stage"
	@echo "make drift STAGE=dev           CloudFormation drift detection on the stage (AWS credentials)"
	@echo "make deploy STAGE=dev          cdk deploy '<stage>/*' (AWS credentials)"
	@echo "make destroy STAGE=dev         cdk destroy '<stage>/*' (prod needs FORCE=1)"

setup: $(PY_STAMP) $(NODE_STAMP)

$(PY_STAMP): requirements.txt requirements-dev.txt
	@test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	@rm -f $(VENV)/.stamp-* && touch $@

$(NODE_STAMP): package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	@touch $@

# Synth needs no credentials: on a machine without them, skip the instance
# metadata probe instead of waiting for it to time out.
synth: export AWS_EC2_METADATA_DISABLED := true
synth: setup
	@rm -rf cdk.out
	@# --quiet still prints two lines of chatter on stderr; keep real warnings.
	@echo "cdk synth $(STAGE_CONTEXT)"
	@$(CDK) synth --quiet $(STAGE_CONTEXT) 2>&1 >/dev/null \
	  | { grep -v -e '^Successfully synthesized' -e '^Supply a stack id' -e '^$$' >&2 || true; }
	@python scripts/synth_summary.py cdk.out

test: export AWS_EC2_METADATA_DISABLED := true
test: setup
	python -m pytest $(ARGS)

bench: export AWS_EC2_METADATA_DISABLED := true
bench: setup
	python bench/synth.py

bench-drill: export AWS_EC2_METADATA_DISABLED := true
bench-drill: setup
	python bench/drill.py $(ARGS)
bench-idle: setup
	python bench/idle_shutdown.py --moto $(ARGS)

define require_stage
	@test -n "$(STAGE)" || { echo "STAGE is required, e.g. make $@ STAGE=dev" >&2; exit 2; }
endef

bootstrap: setup
	$(require_stage)
	$(CDK) bootstrap $(ONE_STAGE)

# Two diffs, chosen by variable: BASE (offline, a git ref vs the working
# tree, no credentials: the pull-request diff and its stateful guard) or
# STAGE (live, against the deployed stacks, needs credentials).
diff: setup
	@if [ -n "$(BASE)" ]; then \
	  AWS_EC2_METADATA_DISABLED=true python -m delivery.offline_diff --base '$(BASE)' \
	    $(if $(STAGES),--stages '$(STAGES)',) $(if $(REPORT),--report '$(REPORT)',); \
	elif [ -n "$(STAGE)" ]; then \
	  $(CDK) diff $(ONE_STAGE) '$(STAGE)/*'; \
	else \
	  echo "make diff BASE=<git ref> (offline) or make diff STAGE=<stage> (deployed, credentials)" >&2; \
	  exit 2; \
	fi

cost: export AWS_EC2_METADATA_DISABLED := true
cost: setup
	@rm -rf cdk.out
	$(CDK) synth --quiet $(STAGE_CONTEXT) > /dev/null
	@python -m delivery.cost cdk.out

drift: setup
	$(require_stage)
	python -m delivery.drift_cli --stage $(STAGE)

deploy: setup
	$(require_stage)
	$(CDK) deploy $(ONE_STAGE) '$(STAGE)/*' $(if $(REQUIRE_APPROVAL),--require-approval $(REQUIRE_APPROVAL),)

destroy: setup
	$(require_stage)
	@if [ "$(STAGE)" = prod ] && [ "$(FORCE)" != 1 ]; then \
	  echo "Refusing to destroy prod. Re-run with FORCE=1 if you really mean it." >&2; exit 2; fi
	$(CDK) destroy $(ONE_STAGE) '$(STAGE)/*'

clean:
	rm -rf cdk.out .pytest_cache
