# The two commands of the README (make demo, make test), make test-fast, and the helpers they use. `.ci/run` runs
# `make test`.
PYTHON ?= python3
# The torch installed where none is: torch==2.13.0 from PyPI, which on Linux x86-64 is the CUDA build (several GB;
# it runs on a CPU too). For a small CPU-only build, first `pip install torch --index-url
# https://download.pytorch.org/whl/cpu`; on a GPU machine, first the CUDA build that matches its driver. An
# installed torch is left alone.
TORCH_SPEC ?= torch==2.13.0

.PHONY: demo test test-fast test-min install install-dev notebook lint benchmark

# Each install says what it installs before pip starts (downloads take minutes), and pip runs only when something
# is missing (utils.missing_requirements), so that `make demo` on a ready machine starts at once.
install:
	@$(PYTHON) -c "import torch" 2>/dev/null || { echo "make install: no torch here; pip install $(TORCH_SPEC) (on Linux x86-64 the CUDA build, several GB: minutes)"; $(PYTHON) -m pip install "$(TORCH_SPEC)"; }
	@$(call install_missing,requirements.txt)

install-dev: install
	@$(call install_missing,requirements-dev.txt)

define install_missing
$(PYTHON) -c "import sys, utils; m = utils.missing_requirements('$(1)'); print('make install: $(1): every requirement is installed' if not m else 'make install: pip install -r $(1), for ' + ', '.join(m) + ' (downloads may take minutes)'); sys.exit(bool(m))" || $(PYTHON) -m pip install -r $(1)
endef

## demo: the whole pipeline offline on the built-in demo world (about 8 minutes on a 2-core CPU)
demo: install
	HF_HUB_OFFLINE=1 $(PYTHON) demo.py

## test: lint, then the whole test suite (unit tests, end-to-end runs of each script, the notebook)
test: install-dev
	$(PYTHON) -m ruff check .
	HF_HUB_OFFLINE=1 $(PYTHON) -m pytest -q

## test-fast: the unit, parity and bad-input tests only (about a minute): the loop while editing
test-fast: install-dev
	HF_HUB_OFFLINE=1 $(PYTHON) -m pytest -q -m "not slow"

## test-min: the fast tests and FSDP2 through accelerate on requirements.txt's floors (requirements-min.txt: torch
## 2.11, transformers 5.17, accelerate 1.15, pyarrow 24), in a virtual environment .venv-min beside the system's
## packages. The first run downloads torch 2.11 (a CUDA build, about 3 GB with its libraries: 2 to 4 minutes).
test-min:
	@echo "make test-min: installing requirements-min.txt into .venv-min (first time: about 3 GB, minutes)"
	$(PYTHON) -m venv --system-site-packages .venv-min
	.venv-min/bin/python -m pip install -q -r requirements-min.txt
	.venv-min/bin/python -c "import torch, transformers, accelerate; print('test-min on torch', torch.__version__, \
		'transformers', transformers.__version__, 'accelerate', accelerate.__version__)"
	HF_HUB_OFFLINE=1 .venv-min/bin/python -m pytest -q -p no:cacheprovider -m "not slow"
	HF_HUB_OFFLINE=1 .venv-min/bin/python -m pytest -q -p no:cacheprovider tests/test_scale_out.py \
		-k "fsdp2_through and cpu_ram_efficient_loading"

## notebook: the walkthrough in JupyterLab (installs JupyterLab first where it is missing)
notebook: install
	@$(PYTHON) -c "import jupyterlab" 2>/dev/null || { echo "make notebook: pip install jupyterlab"; $(PYTHON) -m pip install jupyterlab; }
	$(PYTHON) -m jupyter lab notebooks/roberta_walkthrough.ipynb

## benchmark: one training step of our model against transformers' (CPU or GPU)
benchmark: install
	$(PYTHON) benchmarks/throughput.py
