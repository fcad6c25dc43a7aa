# ALICE: `make serve` runs the service on the demo model, `make test` runs the whole suite.
# Both set up .venv from the pinned requirements first.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
HOST   ?= 127.0.0.1
PORT   ?= 3000

.PHONY: serve test demo-model venv browser bento image clean

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

test: venv browser
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# The web page's tests drive Debian's Chromium (never a downloaded browser); CI runs as root.
browser:
	@command -v chromium >/dev/null 2>&1 || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }

bento: demo-model
	$(BIN)/bentoml build

# bentoml#5566: containerize must run from a folder above its temporary build context.
image: bento
	cd / && $(CURDIR)/$(BIN)/bentoml containerize alice:latest -t alice:latest

clean:
	rm -rf $(VENV) .pytest_cache test-output
