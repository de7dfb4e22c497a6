# Two commands set everything up on a fresh clone: `make demo` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
FMNIST := /usr/share/datasets/fashion-mnist

.PHONY: demo test lint bench data clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

# Offline default data: Debian's dataset-fashion-mnist (installed with apt when we are root).
data:
	@if [ ! -f $(FMNIST)/train-images-idx3-ubyte.gz ]; then \
	  if [ "$$(id -u)" = "0" ] && command -v apt-get >/dev/null; then \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist) >/dev/null \
	      || echo "warning: could not install dataset-fashion-mnist"; \
	  else \
	    echo "note: Fashion-MNIST not found under $(FMNIST); install the Debian package dataset-fashion-mnist"; \
	  fi; \
	fi

demo: $(VENV)/.installed data
	$(BIN)/prunelab demo

test: $(VENV)/.installed data
	$(BIN)/python -m pytest

lint: $(VENV)/.installed
	$(BIN)/ruff check prunelab tests bench

bench: $(VENV)/.installed data
	$(BIN)/python bench/masked_training.py
	$(BIN)/python bench/data_pipeline.py

clean:
	rm -rf $(VENV) build *.egg-info
