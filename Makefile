# Two commands do all set-up on a fresh machine:  `make demo`  and  `make test`.
# TORCH selects the torch install: the CPU wheel of this machine kind by default; any torch>=2.1 works
# elsewhere (e.g. `make test TORCH=torch`).
PYTHON ?= python3
VENV   ?= .venv
TORCH  ?= torch==2.13.0
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: setup demo test bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -c constraints.txt -e '.[test]'
	touch $(STAMP)

demo: setup
	ROBUSTSIM_OFFLINE=1 $(VENV)/bin/robustsim compare examples/ref.png examples/x0.png examples/x1.png

test: setup
	HF_HUB_OFFLINE=1 ROBUSTSIM_OFFLINE=1 $(PY) -m pytest -q -n 2 --dist loadfile

bench: setup
	$(PY) benchmarks/run_all.py

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info
