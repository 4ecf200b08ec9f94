# Two commands do all the set-up on a fresh machine (README):
#   make demo   installs everything, then runs the offline demo pipeline on Fashion-MNIST
#   make test   installs everything (with the test references), then runs the test suite
# Each step is idempotent: a second `make demo` reuses the venv and resumes/skips finished stages.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
WORKDIR ?= runs/demo
CONFIG ?= configs/vit.py:demo
FMNIST_DIR := /usr/share/datasets/fashion-mnist
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

# Keep glibc from returning large buffers to the OS: XLA:CPU otherwise page-faults them back in on
# every execution, which makes large ops about 3x slower.
export MALLOC_MMAP_MAX_ := 0
export MALLOC_TRIM_THRESHOLD_ := 100000000000

.PHONY: demo test install install-test data clean

demo: install data
	$(PY) -m cu_jax.main --config=$(CONFIG) --workdir=$(WORKDIR)

test: install-test data
	$(PY) -m pytest tests

install: $(VENV)/.installed
install-test: $(VENV)/.installed-test

$(VENV)/.installed: pyproject.toml
	[ -x $(PY) ] || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e .
	touch $@

# torch==2.13.0 is a CPU wheel on these machines; installing it before captum keeps a newer
# (CUDA) torch out.
$(VENV)/.installed-test: $(VENV)/.installed
	$(PY) -m pip install -q "torch==2.13.0"
	$(PY) -m pip install -q -e ".[test]"
	touch $@

data:
	@if [ ! -f $(FMNIST_DIR)/train-images-idx3-ubyte.gz ]; then \
	  $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq dataset-fashion-mnist; \
	fi

clean:
	rm -rf $(VENV) runs
