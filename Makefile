# Two commands on a fresh machine with nothing but Python:
#   make demo   synthetic vessel dataset, end to end
#   make test   install with the dev extra and run the test suite
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_CPU_VERSION ?= 2.13.0
DEMO_DIR ?= $(CURDIR)/demo_data
DEMO_ID ?= 501
DEMO_CASES ?= 12
PYTEST_ARGS ?=

.PHONY: install install-dev demo test lint clean-demo

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

# A torch that is already in the venv (e.g. a CUDA build a GPU user installed) is kept. Otherwise the
# pinned CPU build is installed *before* the project, so no dependency resolution can pull CUDA wheels.
$(VENV)/.torch: | $(PY)
	@$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install --quiet torch==$(TORCH_CPU_VERSION)
	@$(PY) -c "import torch; print('torch', torch.__version__, 'cuda' if torch.cuda.is_available() else 'cpu')"
	@touch $@

$(VENV)/.installed: pyproject.toml $(VENV)/.torch
	$(PY) -m pip install --quiet -e .
	@touch $@

$(VENV)/.installed-dev: pyproject.toml $(VENV)/.torch
	$(PY) -m pip install --quiet -e ".[dev]"
	@touch $@

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

test: $(VENV)/.installed-dev
	$(PY) -m pytest $(PYTEST_ARGS)

lint: $(VENV)/.installed-dev
	$(VENV)/bin/ruff check vessel_seg tests benchmarks

demo: $(VENV)/.installed
	VS_RAW=$(DEMO_DIR)/raw VS_PREPROCESSED=$(DEMO_DIR)/preprocessed VS_RESULTS=$(DEMO_DIR)/results \
	  $(PY) -m vessel_seg.demo --dataset $(DEMO_ID) --cases $(DEMO_CASES)

clean-demo:
	rm -rf $(DEMO_DIR)
