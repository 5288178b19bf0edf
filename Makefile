# attestgate — developer entry points.  `make help` lists them.
#
# `make setup` is idempotent and fast when already done:
#   1. apt packages: checked one by one with `dpkg -s`; `apt-get update` + install run only
#      when one is missing ($(SUDO) is empty for root, `sudo` otherwise);
#   2. .venv: created with the `python3` on PATH (>= 3.11 required), then
#      `pip install -e '.[client,test,bench]'`.  The stamp $(STAMP) records the install: it is redone
#      when pyproject.toml is newer than the stamp, and .venv is recreated from scratch when
#      its interpreter no longer runs (e.g. the Python it was made from was removed).

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help
.DELETE_ON_ERROR:

PYTHON ?= python3
VENV := .venv
VPY := $(VENV)/bin/python
STAMP := $(VENV)/.attestgate-setup.stamp
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)
APT_PACKAGES := redis-server swtpm swtpm-tools tpm2-tools libtss2-dev pkg-config gcc \
                python3-venv python3-dev gnutls-bin chromium chromium-driver
# Fallback check where there is no dpkg: one command per package above that has one.
APT_COMMANDS := redis-server swtpm swtpm_setup tpm2_startup pkg-config gcc certtool chromium \
                chromedriver

# A .venv whose interpreter does not run (or is older than 3.11) forces the stamp's recipe,
# which recreates it, even when the stamp looks up to date.
ifneq ($(wildcard $(VENV)),)
ifneq ($(shell $(VPY) -c 'import sys; print(int(sys.version_info >= (3, 11)))' 2>/dev/null),1)
$(STAMP): FORCE
endif
endif

# $(call timed,LABEL,COMMAND): run COMMAND, then print how long it took (also on failure).
timed = echo '==> $(1): $(2)'; TIMEFORMAT='<== $(1): %1Rs'; time $(2)

.PHONY: help setup system-packages test unit fuzz lint man demo bench run supervise clean FORCE

help:
	@echo 'make setup      install apt packages if missing, create .venv, pip install -e .[client,test,bench]'
	@echo 'make test       setup, then ruff, mypy and the whole pytest suite (what CI runs)'
	@echo 'make unit       pytest tests/unit only'
	@echo 'make fuzz       the fuzz targets only (ATTESTGATE_FUZZ_INPUTS per target, default 100000)'
	@echo 'make lint       ruff + mypy'
	@echo 'make man        regenerate man/attestgate.1 and man/attestgate-admin.1 from the parsers'
	@echo 'make demo       setup, then deploy/demo.sh'
	@echo 'make bench      setup, then python -m bench'
	@echo 'make run        start the stack with honcho (Procfile; .env if present)'
	@echo 'make supervise  start the stack under supervisord (deploy/supervisord.conf; .env if present)'
	@echo 'make clean      remove run/ (local Redis data and server home!) and caches; keeps .venv'

# ---- setup ---------------------------------------------------------------------------

setup: $(STAMP)

system-packages:
	@missing=""; \
	if command -v dpkg >/dev/null 2>&1; then \
	  for p in $(APT_PACKAGES); do \
	    dpkg -s "$$p" 2>/dev/null | grep -q '^Status: install ok installed' || missing="$$missing $$p"; \
	  done; \
	else \
	  for c in $(APT_COMMANDS); do \
	    command -v "$$c" >/dev/null 2>&1 || missing="$$missing $$c"; \
	  done; \
	  if [ -n "$$missing" ]; then \
	    echo "setup: no dpkg here and these commands are missing:$$missing" >&2; \
	    echo "setup: install the equivalents of: $(APT_PACKAGES)" >&2; exit 1; \
	  fi; \
	fi; \
	if [ -n "$$missing" ]; then \
	  echo "setup: installing apt packages:$$missing"; \
	  if [ -n "$(SUDO)" ] && ! command -v $(SUDO) >/dev/null 2>&1; then \
	    echo "setup: not root and no sudo; install as root:$$missing" >&2; exit 1; \
	  fi; \
	  $(SUDO) apt-get update -qq; \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive \
	    apt-get install -y --no-install-recommends $$missing; \
	fi

$(STAMP): pyproject.toml | system-packages
	@if ! command -v $(PYTHON) >/dev/null 2>&1; then \
	  echo "setup: '$(PYTHON)' is not on PATH; attestgate needs Python >= 3.11" >&2; exit 1; \
	fi; \
	if ! $(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then \
	  echo "setup: attestgate needs Python >= 3.11, but '$$(command -v $(PYTHON))' is" \
	       "$$($(PYTHON) -c 'import platform; print(platform.python_version())')" >&2; exit 1; \
	fi; \
	if [ -e $(VENV) ] && ! $(VPY) -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
	     >/dev/null 2>&1; then \
	  echo "setup: $(VENV) is broken or older than Python 3.11; recreating it"; \
	  rm -rf $(VENV); \
	fi; \
	if [ ! -e $(VENV) ]; then \
	  echo "setup: creating $(VENV) with $$(command -v $(PYTHON))"; \
	  $(PYTHON) -m venv $(VENV) || { rm -rf $(VENV); exit 1; }; \
	fi; \
	echo "setup: pip install -e '.[client,test,bench]' (tpm2-pytss builds from source the first time)"; \
	$(VPY) -m pip install --disable-pip-version-check --quiet -e '.[client,test,bench]'; \
	touch $@

FORCE:

# ---- checks --------------------------------------------------------------------------

test: setup
	@$(call timed,ruff,$(VENV)/bin/ruff check .)
	@$(call timed,mypy,$(VENV)/bin/mypy)
	@$(call timed,pytest,$(VENV)/bin/pytest -q)

unit:
	$(VENV)/bin/pytest -q tests/unit

# Also part of `make test`; run more with e.g. ATTESTGATE_FUZZ_INPUTS=1000000 ATTESTGATE_FUZZ_SEED=7.
fuzz:
	$(VENV)/bin/pytest -q -m fuzz

lint:
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

man:
	$(VPY) -m client.manpages man

# ---- running -------------------------------------------------------------------------

demo: setup
	bash deploy/demo.sh

bench: setup
	$(VPY) -m bench

run: setup
	mkdir -p run
	$(VENV)/bin/honcho start -f Procfile $(if $(wildcard .env),-e .env)

# supervisord creates no directories, and its children inherit its environment.
supervise: setup
	mkdir -p run/logs
	set -a; if [ -f .env ]; then . ./.env; fi; set +a; \
	exec $(VENV)/bin/supervisord -c deploy/supervisord.conf

clean:
	rm -rf run .pytest_cache .mypy_cache .ruff_cache .hypothesis build *.egg-info
	find . -path ./$(VENV) -prune -o -path ./.git -prune -o \
	  -type d -name __pycache__ -exec rm -rf {} +
