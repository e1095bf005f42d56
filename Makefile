# Two commands from a fresh clone:  make demo  |  make test
# Each creates .venv the first time; the demo installs the core requirements
# only, the tests add every optional extra they test.
VENV ?= .venv
PYTHON := $(VENV)/bin/python
SYSTEM_PYTHON ?= python3
EXTRAS := requirements-fid.txt requirements-kornia.txt requirements-secrecy.txt requirements-diffusers.txt \
	requirements-attacks.txt

.PHONY: demo test test-fast clean

$(VENV)/.core: requirements.txt
	$(SYSTEM_PYTHON) -m venv $(VENV)
	$(PYTHON) -m pip install --quiet --upgrade pip
	$(PYTHON) -m pip install --quiet -r requirements.txt
	touch $@

$(VENV)/.installed: $(VENV)/.core requirements-dev.txt $(EXTRAS)
	$(PYTHON) -m pip install --quiet -r requirements-dev.txt
	touch $@

demo: $(VENV)/.core
	$(PYTHON) demo.py --output_dir demo_output

test: $(VENV)/.installed
	$(PYTHON) -m pytest -q

test-fast: $(VENV)/.installed
	$(PYTHON) -m pytest -q -m "not slow"

clean:
	rm -rf demo_output .pytest_cache
