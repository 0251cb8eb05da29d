# The two commands of the README: `make run` and `make test`. Both set up
# everything from nothing (a venv in .venv with the pinned packages).
PYTHON  ?= python3
VENV    := .venv
PY      := $(VENV)/bin/python
STAMP   := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)
STORAGE ?= config

.PHONY: run test bench sysdeps-test clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	rm -f $(VENV)/.installed-*
	touch $@

## make run [STORAGE=local|s3]: the whole cluster on 127.0.0.1, Ctrl-C stops it
run: $(STAMP)
	$(PY) -m cluster run --storage $(STORAGE)

## make test: every test, against real processes and a real SeaweedFS
test: $(STAMP) sysdeps-test
	$(PY) -m pytest -q

## Debian packages the tests need, installed when we are root and they are missing
sysdeps-test:
	@sh tests/sysdeps.sh

## make bench: the benchmarks; figures printed and merged into bench/results/latest.json
bench: $(STAMP)
	$(PY) -m bench

clean:
	rm -rf $(VENV) var .pytest_cache
