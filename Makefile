# The two commands of the README: `make demo` and `make test`. Both install what they
# need on a fresh machine (Debian packages and a virtual environment) first.
VENV    ?= .venv
PY      := $(VENV)/bin/python
STAMP   := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: demo test install system-deps venv lint typecheck imports pytest bench clean \
	docs lock image-size fresh-clones

demo: system-deps venv
	$(VENV)/bin/shoal demo

test: system-deps venv lint typecheck imports pytest

install: system-deps venv

system-deps:
	@bash scripts/install-system-deps.sh

venv: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	@touch $(STAMP)

lint: venv
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/ruff format --check src tests bench

typecheck: venv
	$(VENV)/bin/mypy

imports: venv
	$(VENV)/bin/lint-imports

pytest: venv
	$(VENV)/bin/pytest $(PYTEST_ARGS)

# docs/config.md from the config classes (tests/test_configdoc.py fails when it is stale)
docs: venv
	$(PY) -m shoal.configdoc > docs/config.md

# requirements.lock: the runtime dependencies pinned with hashes, for the image
lock: venv
	$(VENV)/bin/pip-compile -q --generate-hashes --strip-extras --allow-unsafe \
		--no-emit-index-url --no-emit-find-links -o requirements.lock pyproject.toml

# what the Dockerfile adds to its base image, built into a directory and measured
image-size:
	@bash scripts/image-layer-size.sh

# `make test` in N fresh clones of HEAD, one after another (default 5)
fresh-clones:
	@bash scripts/test-fresh-clones.sh $(or $(N),5)

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis
