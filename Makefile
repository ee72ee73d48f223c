# The two commands of the README. Each sets itself up on a fresh machine: it creates .venv if missing and installs
# the package (editable) with the development constraints, then runs.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed

.PHONY: demo test install clean

demo: $(INSTALLED)
	$(BIN)/python examples/demo.py --output_dir demo_output

test: $(INSTALLED)
	$(BIN)/python -m pytest

install: $(INSTALLED)

$(INSTALLED): setup.cfg pyproject.toml constraints-dev.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -c constraints-dev.txt -e ".[spconv,test]"
	touch $@

clean:
	rm -rf $(VENV) demo_output build *.egg-info
