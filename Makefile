# ALICE: `make serve` runs the service on the demo model, `make test` runs the whole suite.
# Both set up .venv from the pinned requirements first.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
HOST   ?= 127.0.0.1
PORT   ?= 3000

.PHONY: serve test demo-model venv test-tools bento image clean

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

test: venv test-tools
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# Debian packages the tests drive: Chromium for the web page (never a downloaded browser),
# nginx as the TLS-terminating proxy in front of ALICE. CI runs as root.
TEST_TOOLS := chromium nginx
test-tools:
	@missing=""; for tool in $(TEST_TOOLS); do command -v $$tool >/dev/null 2>&1 || [ -x /usr/sbin/$$tool ] || missing="$$missing $$tool"; done; \
	if [ -n "$$missing" ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; fi

bento: demo-model
	$(BIN)/bentoml build

# bentoml#5566: containerize must run from a folder above its temporary build context.
image: bento
	cd / && $(CURDIR)/$(BIN)/bentoml containerize alice:latest -t alice:latest

clean:
	rm -rf $(VENV) .pytest_cache test-output
