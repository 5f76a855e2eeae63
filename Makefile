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
# `make test`: one pytest-xdist worker per core (TEST_WORKERS=1: one process).
TEST_WORKERS ?= $(shell nproc 2>/dev/null || echo 2)
# `make test-fast`: the tests that depend on a file changed since CHANGED (git
# ref; tests/changed.py), without the slow ones (pytest marker, pytest.ini).
# One worker per core as in `make test` (FAST_WORKERS=1: one process): the
# node agent's tests wait on real processes, and two workers beat one even
# on a 100-test selection (measured: 20-22 s against 20-38 s).
CHANGED ?= HEAD
# SCOPE=direct: the unit tests of what changed (what their modules and test
# helpers import); SCOPE=all: every test that reaches a changed file.
SCOPE ?= direct
FAST ?= not slow and not scale
FAST_WORKERS ?= $(TEST_WORKERS)
# `make diff BASE=<git ref>`: offline diff of the working tree against a ref.
BASE ?=
# `make diff BASE=... REPORT=diff.md`: also write the Markdown report (PR comment).
REPORT ?=
# `make deploy STAGE=dev REQUIRE_APPROVAL=never`: CI only, after its approval gate.
REQUIRE_APPROVAL ?=
# `make deploy ... PREFLIGHT=done`: CI only, when an earlier step of the same
# job ran `make preflight` and left its checked cdk.out in place.
PREFLIGHT ?=
# Extra CDK context for every synth: `make synth CONTEXT="-c eks_public_access_cidrs=203.0.113.0/24"`.
# synth, cost, diff (both kinds), preflight, deploy and cdk pass it on.
CONTEXT ?=

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
# Bytecode goes to one cache outside the source tree (the Lambda and node
# agent folders are assets: nothing may appear in them), so repeated runs
# skip recompiling the project and pytest's rewritten test modules.
export PYTHONDONTWRITEBYTECODE :=
export PYTHONPYCACHEPREFIX := $(CURDIR)/$(VENV)/.pycache

CDK := cdk --no-notices
STAGE_CONTEXT := $(if $(STAGES),-c stages=$(STAGES),)
# The stage being deployed, diffed or destroyed, pinned to ACCOUNT if given.
ONE_STAGE := -c stages=$(STAGE) $(if $(ACCOUNT),-c account=$(ACCOUNT),)

.PHONY: help setup synth cdk acknowledgements iam-report test test-fast test-scale test-config-change bench bench-tests bench-drill bench-idle bench-preflight bench-serving bootstrap preflight deploy destroy diff cost drift smoke run refresh-amis refresh-models clean

help:
	@echo "make synth [STAGES=dev,prod]   synthesize offline, print a summary"
	@echo "make acknowledgements          synthesize, rewrite tests/unit/acknowledgements.txt (commit the diff)"
	@echo "make iam-report                acknowledgements per rule and stage, IAM statements on Resource: *"
	@echo "make test [ARGS=...]           the whole test suite on one worker per core, then a summary"
	@echo "make test-fast [CHANGED=HEAD]  the inner loop: the tests of the files changed since the git ref"
	@echo "                               CHANGED, none marked slow (CHANGED= : every test not marked slow)"
	@echo "make test-scale                a stage of 200 models through every gate (minutes; CI runs it)"
	@echo "make test-config-change        the suite minus snapshots, on the configs with the docs'"
	@echo "                               documented changes applied (tests/config_variants.py)"
	@echo "make bench                     synth wall-time benchmark"
	@echo "make bench-tests               make test three times (median wall, CPU) and make synth once"
	@echo "make bootstrap STAGE=dev       cdk bootstrap the stage's account/region (AWS credentials)"
	@echo "make bench-drill [ARGS=...]    runs drill: goodput, steps lost, notice to resumed (tiny and 1 GiB checkpoints)"
	@echo "make bench-idle                idle-shutdown sweep over 100/1,000/5,000 instances, import time"
	@echo "make bench-serving [ARGS=...]  serving at 1/50/200 models: synth time, resources per stack, make diff"
	@echo "make diff BASE=origin/main [STAGES=dev] [REPORT=diff.md]"
	@echo "                               offline diff vs a git ref + summary, stateful guard, cost delta"
	@echo "make diff STAGE=dev            cdk diff against the deployed stage (AWS credentials)"
	@echo "make cost [STAGES=dev]         monthly cost: always-on and max capacity, per stage"
	@echo "make drift STAGE=dev           CloudFormation drift detection on the stage (AWS credentials)"
	@echo "make run STAGE=dev ARGS=\"submit examples/runs/example-trainer.json\""
	@echo "                               training runs: submit SPEC | list | show ID | cancel ID | logs ID [--follow]"
	@echo "make refresh-amis [STAGE=dev]  re-pin the AMIs in ml_stacks/ami_pins.json from the public"
	@echo "                               parameters, print old -> new (AWS credentials; commit the diff)"
	@echo "make refresh-models STAGE=prod pin the newest Approved version of each registry model in"
	@echo "                               ml_stacks/model_pins.json, print old -> new (AWS credentials; commit the diff)"
	@echo "make preflight STAGE=dev       read-only checks of the account before a deploy (AWS credentials)"
	@echo "make bench-preflight           preflight of every stage on a fresh moto account, quota needs"
	@echo "make deploy STAGE=dev          preflight, then cdk deploy '<stage>/*' (AWS credentials)"
	@echo "make smoke STAGE=dev [ARGS=--wait-seconds 1800]"
	@echo "                               invoke every model of the deployed stage once (AWS credentials)"
	@echo "make destroy STAGE=dev         cdk destroy '<stage>/*' (prod needs FORCE=1)"
	@echo "make cdk ARGS=\"diff 'dev/*'\"    the pinned CDK CLI with the project's Node 22 and virtualenv"
	@echo "any synth, diff, deploy or cdk: CONTEXT=\"-c eks_public_access_cidrs=203.0.113.0/24\""

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
	@$(CHECK_STAGES)
	@rm -rf cdk.out
	@# --quiet still prints two lines of chatter on stderr; keep real warnings.
	@echo "cdk synth $(STAGE_CONTEXT)"
	@$(CDK) synth --quiet $(STAGE_CONTEXT) $(CONTEXT) 2>&1 >/dev/null \
	  | { grep -v -e '^Successfully synthesized' -e '^Supply a stack id' -e '^$$' >&2 || true; }
	@python scripts/synth_summary.py cdk.out

# The reviewed acknowledgement list (tests/unit/test_acknowledgements.py
# fails until it matches the synthesized app): regenerate, review, commit.
acknowledgements: synth
	python -m delivery.iam_report cdk.out --update

iam-report: synth
	python -m delivery.iam_report cdk.out

# The pinned CLI as the other targets run it (Node 22 and the virtualenv on
# PATH): `npx cdk` alone fails with "No module named 'aws_cdk'" outside the
# virtualenv. No credential check: some commands need none (ls, synth).
cdk: setup
	@test -n "$(ARGS)" || { echo "ARGS is required, e.g. make cdk ARGS=\"diff 'dev/*'\"" >&2; exit 2; }
	$(CDK) $(ARGS) $(CONTEXT)

# Workers share the run: everything that uses the session synthesis goes to
# one worker (tests/conftest.py), the rest to whichever is free. Snapshot
# updates run in one process: syrupy 4 deletes unused snapshots only there.
# $(call xdist,N): pytest's arguments for N workers (none for 0 or 1).
xdist = $(if $(filter-out 0 1,$(1)),$(if $(findstring --snapshot-update,$(ARGS)),,-n $(1) --dist loadgroup),)

test: export AWS_EC2_METADATA_DISABLED := true
test: setup
	python -m pytest $(call xdist,$(TEST_WORKERS)) --suite-summary -m 'not scale' $(ARGS)

# The claims that take minutes: a stage of 200 models passes every gate.
test-scale: export AWS_EC2_METADATA_DISABLED := true
test-scale: setup
	python -m pytest -m scale $(ARGS)

test-fast: export AWS_EC2_METADATA_DISABLED := true
# Property tests draw a tenth of their examples (tests/property_budget.py).
test-fast: export ML_TEST_FAST := 1
test-fast: setup
	python -m pytest $(call xdist,$(FAST_WORKERS)) -q \
	  -m '$(FAST)' $(if $(CHANGED),--changed '$(CHANGED)' --changed-scope '$(SCOPE)',) --suite-summary $(ARGS)

# Proof that a config change the README documents changes snapshots and
# nothing else: every other test, on the configs with those changes applied.
test-config-change: export AWS_EC2_METADATA_DISABLED := true
test-config-change: export ML_TEST_CONFIG_VARIANT := documented-changes
test-config-change: setup
	python -m pytest --ignore=tests/snapshot $(ARGS)

bench: export AWS_EC2_METADATA_DISABLED := true
bench: setup
	python bench/synth.py

bench-tests: export AWS_EC2_METADATA_DISABLED := true
bench-tests: setup
	python bench/test_suite.py $(ARGS)

bench-drill: export AWS_EC2_METADATA_DISABLED := true
bench-drill: setup
	python bench/drill.py $(ARGS)
bench-idle: setup
	python bench/idle_shutdown.py --moto $(ARGS)

bench-serving: export AWS_EC2_METADATA_DISABLED := true
bench-serving: setup
	python bench/serving_scale.py $(ARGS)

bench-preflight: export AWS_EC2_METADATA_DISABLED := true
bench-preflight: setup
	@rm -rf cdk.out
	$(CDK) synth --quiet > /dev/null
	python bench/preflight.py --assembly cdk.out

define require_stage
	@test -n "$(STAGE)" || { echo "STAGE is required, e.g. make $@ STAGE=dev" >&2; exit 2; }
endef
# A bad stage name, or missing, expired or wrong-account credentials, end in
# one line before the CDK CLI or AWS is called (delivery/stage_check.py).
CHECK_STAGES = python -m delivery.stage_check --stages '$(STAGES)'
CHECK_CREDENTIALS = python -m delivery.stage_check --stage '$(STAGE)' --account '$(ACCOUNT)' --credentials

bootstrap: setup
	$(require_stage)
	@$(CHECK_CREDENTIALS)
	$(CDK) bootstrap $(ONE_STAGE)

# Two diffs, chosen by variable: BASE (offline, a git ref vs the working
# tree, no credentials: the pull-request diff and its stateful guard) or
# STAGE (live, against the deployed stacks, needs credentials).
diff: setup
	@if [ -n "$(BASE)" ]; then \
	  $(CHECK_STAGES) && \
	  AWS_EC2_METADATA_DISABLED=true python -m delivery.offline_diff --base '$(BASE)' \
	    $(if $(STAGES),--stages '$(STAGES)',) $(if $(REPORT),--report '$(REPORT)',) \
	    $(if $(CONTEXT),--cdk-args '$(CONTEXT)',); \
	elif [ -n "$(STAGE)" ]; then \
	  $(CHECK_CREDENTIALS) && \
	  $(CDK) diff $(ONE_STAGE) $(CONTEXT) '$(STAGE)/*'; \
	else \
	  echo "make diff BASE=<git ref> (offline) or make diff STAGE=<stage> (deployed, credentials)" >&2; \
	  exit 2; \
	fi

cost: export AWS_EC2_METADATA_DISABLED := true
cost: setup
	@$(CHECK_STAGES)
	@rm -rf cdk.out
	$(CDK) synth --quiet $(STAGE_CONTEXT) $(CONTEXT) > /dev/null
	@python -m delivery.cost cdk.out

drift: setup
	$(require_stage)
	@python -m delivery.drift_cli --stage '$(STAGE)'

# Training runs of a deployed stage (AWS credentials): python -m ml_runs.
run: setup
	$(require_stage)
	@test -n "$(ARGS)" || { echo 'ARGS is required, e.g. make run STAGE=$(STAGE) ARGS="list"' >&2; exit 2; }
	python -m ml_runs --stage $(STAGE) $(ARGS)

# The only way the AMI pins change: a reviewed diff of ml_stacks/ami_pins.json.
refresh-amis: setup
	python -m delivery.refresh_amis $(if $(STAGE),--stage '$(STAGE)',)

# The only way a registry model's version changes: a reviewed diff of ml_stacks/model_pins.json.
refresh-models: setup
	$(require_stage)
	python -m delivery.refresh_models --stage '$(STAGE)' $(if $(ACCOUNT),--account '$(ACCOUNT)',)

# Synthesizes the stage into cdk.out and checks the account against it
# (read-only): `make deploy` then deploys exactly the assembly it checked.
preflight: setup
	$(require_stage)
	@$(CHECK_CREDENTIALS)
	@rm -rf cdk.out
	@echo "cdk synth $(ONE_STAGE) $(CONTEXT)"
	@$(CDK) synth --quiet $(ONE_STAGE) $(CONTEXT) 2>&1 >/dev/null \
	  | { grep -v -e '^Successfully synthesized' -e '^Supply a stack id' -e '^$$' >&2 || true; }
	python -m delivery.preflight --stage $(STAGE) --assembly cdk.out $(if $(ACCOUNT),--account $(ACCOUNT),)

deploy: setup
	$(require_stage)
	@if [ "$(PREFLIGHT)" = done ] && [ -f cdk.out/assembly-$(STAGE)/manifest.json ]; then \
	  echo "preflight: done by an earlier step (cdk.out)"; \
	  $(CHECK_CREDENTIALS); \
	else \
	  $(MAKE) --no-print-directory preflight STAGE='$(STAGE)' ACCOUNT='$(ACCOUNT)'; \
	fi
	$(CDK) deploy --app cdk.out '$(STAGE)/*' $(if $(REQUIRE_APPROVAL),--require-approval $(REQUIRE_APPROVAL),)

# One request per model of the deployed stage; waits out a scale-to-zero cold start.
smoke: setup
	$(require_stage)
	python -m delivery.smoke --stage $(STAGE) $(ARGS)

destroy: setup
	$(require_stage)
	@if [ "$(STAGE)" = prod ] && [ "$(FORCE)" != 1 ]; then \
	  echo "Refusing to destroy prod. Re-run with FORCE=1 if you really mean it." >&2; exit 2; fi
	@$(CHECK_CREDENTIALS)
	$(CDK) destroy $(ONE_STAGE) '$(STAGE)/*'

clean:
	rm -rf cdk.out .pytest_cache
