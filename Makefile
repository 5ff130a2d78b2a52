# Two commands a newcomer needs: `make demo` and `make test`. Both create .venv and install on first use.
VENV   ?= .venv
PYTHON ?= python3
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.edgecls-installed

.PHONY: setup demo test bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[train,device,dev]'
	touch $@

setup: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/edgecls demo

test: $(STAMP)
	$(PY) -m pytest

bench: $(STAMP)
	$(PY) benchmarks/make_results.py

clean:
	rm -rf $(VENV) demo-out .pytest_cache
