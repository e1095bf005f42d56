# Two commands from a fresh clone:  make demo  |  make test
# Each creates .venv and installs what it needs the first time.
VENV ?= .venv
PYTHON := $(VENV)/bin/python
SYSTEM_PYTHON ?= python3

.PHONY: demo test test-fast clean

$(VENV)/.installed: requirements.txt requirements-dev.txt requirements-fid.txt requirements-kornia.txt requirements-secrecy.txt \
		requirements-diffusers.txt
	$(SYSTEM_PYTHON) -m venv $(VENV)
	$(PYTHON) -m pip install --quiet --upgrade pip
	$(PYTHON) -m pip install --quiet -r requirements-dev.txt
	touch $@

demo: $(VENV)/.installed
	$(PYTHON) demo.py --output_dir demo_output

test: $(VENV)/.installed
	$(PYTHON) -m pytest -q

test-fast: $(VENV)/.installed
	$(PYTHON) -m pytest -q -m "not slow"

clean:
	rm -rf demo_output .pytest_cache
