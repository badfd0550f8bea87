# The two commands of the README: `make demo` (main job) and `make test` (tests).
# Each creates the environment .venv/ from nothing when it is missing, else reuses it.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
OUT ?= outputs

.PHONY: env demo test test-slow test-all lint bench docs clean

env: $(STAMP)

# torch and torchvision through plain pip (the CPU machines carry these wheels locally;
# backpack-for-pytorch needs torchvision, and PyPI's torchvision does not match every torch).
$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install --quiet -e ".[dev]" -c constraints.txt  # dev: hf and docs extras too
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m lapbo --output $(OUT)

test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -q

# Long-running tests (layerwise marglik parity of every backend, Ax analyses): CI runs them too.
test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow

test-all: $(STAMP)
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -q -m "slow or not slow"

lint: $(STAMP)
	$(VENV)/bin/ruff check .

bench: $(STAMP)
	$(PY) benchmarks/laplace_speed.py

# The documentation site (mkdocs.yml) into site/; --strict fails on broken links,
# references and docstrings. NO_MKDOCS_2_WARNING silences Material's end-of-life banner.
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --site-dir site

# .cache/ holds the laplace-torch 0.3 environment of benchmarks/laplace_speed.py.
clean:
	rm -rf $(VENV) $(OUT) site .cache .pytest_cache .ruff_cache
