# ALICE: `make serve` runs the service on the demo model, `make test` runs the whole suite.
# Both set up .venv from the pinned requirements first.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
HOST   ?= 127.0.0.1
PORT   ?= 3000

.PHONY: serve test demo-model venv codegen-venv test-tools bento image clean

venv: $(VENV)/.installed

$(VENV)/.installed: requirements.txt requirements-dev.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	touch $@

demo-model: venv
	$(BIN)/alice models demo

serve: demo-model
	$(BIN)/bentoml serve service:Alice --host $(HOST) --port $(PORT)

# openapi-python-client (a test generates a client from the served OpenAPI document) pins an
# older typer than ALICE's CLI, so it gets a virtualenv of its own.
CODEGEN := .venv-codegen
codegen-venv: $(CODEGEN)/.installed

$(CODEGEN)/.installed: requirements-codegen.txt
	test -x $(CODEGEN)/bin/python || $(PYTHON) -m venv $(CODEGEN)
	$(CODEGEN)/bin/python -m pip install --quiet --disable-pip-version-check -r requirements-codegen.txt
	touch $@

test: venv codegen-venv test-tools
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# Debian packages the tests drive: Chromium for the web page (never a downloaded browser),
# nginx as the TLS-terminating proxy in front of ALICE, PostgreSQL as the job queue replicas
# share (its server's binaries live off PATH, in /usr/lib/postgresql/<version>/bin). CI runs as root.
TEST_TOOLS := chromium nginx postgresql
test-tools:
	@missing=""; for tool in $(TEST_TOOLS); do \
		if [ $$tool = postgresql ]; then found=$$(ls /usr/lib/postgresql/*/bin/postgres 2>/dev/null); \
		else found=$$(command -v $$tool || ls /usr/sbin/$$tool 2>/dev/null); fi; \
		[ -n "$$found" ] || missing="$$missing $$tool"; done; \
	if [ -n "$$missing" ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; fi

bento: demo-model
	$(BIN)/bentoml build

# bentoml#5566: containerize must run from a folder above its temporary build context.
image: bento
	cd / && $(CURDIR)/$(BIN)/bentoml containerize alice:latest -t alice:latest

clean:
	rm -rf $(VENV) .pytest_cache test-output
