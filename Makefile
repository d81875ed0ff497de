# Operator Console. `make run` and `make test` do all set-up from a fresh clone.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
AXE := tests/axe/node_modules/axe-core/axe.min.js
HOST ?= 127.0.0.1
PORT ?= 8000
# Demo callers talk to the embedded simulator; to a real upstream (OC_UPSTREAM_URL) they would
# run up its bill without end, so there are none unless DEMO_CALLERS asks.
DEMO_CALLERS ?= $(if $(OC_UPSTREAM_URL),0,3)
UPSTREAM := $(if $(OC_UPSTREAM_URL),upstream $(OC_UPSTREAM_URL),embedded simulator upstream)
# The address the start line shows: HOST, unless HOST is every interface (0.0.0.0, ::), which
# a browser may not ask for (the console answers 400 to a host DJANGO_ALLOWED_HOSTS does not
# name): then the first one host DJANGO_ALLOWED_HOSTS names (as the README says to set it
# with HOST=0.0.0.0), else 127.0.0.1.
comma := ,
NAMED_HOST := $(firstword $(filter-out .% *,$(subst $(comma), ,$(DJANGO_ALLOWED_HOSTS))))
SHOWN_HOST := $(if $(filter 0.0.0.0 :: [::],$(HOST)),$(or $(NAMED_HOST),127.0.0.1),$(HOST))

.PHONY: install system-deps run test bench lint migrate clean

install: $(STAMP)

$(STAMP): requirements.txt requirements-test.txt constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements-test.txt -c constraints.txt
	touch $(STAMP)

# axe-core for the accessibility browser test, as pinned by tests/axe/package-lock.json, into
# tests/axe/node_modules (git-ignored) with the machine's npm (Debian's, as root, when missing).
# Without npm the test is skipped, and with CI set that is an error, here and in the test.
$(AXE): tests/axe/package.json tests/axe/package-lock.json
	-bash scripts/install-system-deps.sh npm
	@if command -v npm >/dev/null; then \
	  npm ci --prefix tests/axe --no-audit --no-fund --loglevel=error && touch $@; \
	else echo "npm is missing: the accessibility test needs it for axe-core" >&2; test -z "$${CI:-}"; fi

migrate: install
	mkdir -p var
	$(BIN)/python manage.py migrate --noinput

# Daphne plus DEMO_CALLERS simulated callers (0 for none; 0 by default with OC_UPSTREAM_URL);
# Ctrl-C stops both.
# espeak-ng gives the simulator a voice (installed as root when missing; a tone otherwise).
# Phone calls: a development webhook secret is made once in var/webhook-secret (unless
# OPENAI_WEBHOOK_SECRET is set), so `manage.py simulate_sip_call` works beside it.
# Voice calls are recorded (OC_RECORD_AUDIO=false to stop it); recordings past
# OC_RECORDING_RETENTION_DAYS are deleted at each start, and so are sessions past
# OC_HISTORY_RETENTION_DAYS when it is set.
run: migrate
	@$(BIN)/python scripts/check_port.py $(HOST) $(PORT)
	-bash scripts/install-system-deps.sh espeak-ng
	@test -s var/webhook-secret || (umask 077 && $(BIN)/python -c "import base64, os; print('whsec_' + base64.b64encode(os.urandom(32)).decode())" > var/webhook-secret)
	$(BIN)/python manage.py ensure_demo_operator
	$(BIN)/python manage.py delete_old_recordings
	$(BIN)/python manage.py delete_old_sessions
	@echo "Console on http://$(SHOWN_HOST):$(PORT)/console/  (relay: ws://$(SHOWN_HOST):$(PORT)/v1/realtime, $(UPSTREAM))"
	@trap 'kill 0' EXIT; \
	$(BIN)/python manage.py demo_callers --count $(DEMO_CALLERS) --url ws://$(HOST):$(PORT)/v1 & \
	OC_RECORD_AUDIO=$${OC_RECORD_AUDIO:-true} OPENAI_WEBHOOK_SECRET=$${OPENAI_WEBHOOK_SECRET:-$$(cat var/webhook-secret)} $(BIN)/daphne -b $(HOST) -p $(PORT) operator_console.asgi:application

# Debian's chromium, redis-server, postgresql, espeak-ng and npm, installed when missing (as root).
system-deps:
	bash scripts/install-system-deps.sh

# The suite in TEST_WORKERS processes (pytest-xdist): most of its time is spent waiting on
# servers, not computing. A module's tests stay in one process (tests/conftest.py).
TEST_WORKERS ?= 2
test: install system-deps $(AXE)
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadgroup

bench: install
	$(BIN)/python -m bench.run

lint: install
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) var .pytest_cache .hypothesis
