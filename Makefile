# Everything installs into .venv. torch is installed first, pinned, from PyTorch's CPU wheel index:
# on a stock Linux index torch==2.13.0 resolves to the multi-GB CUDA build. Where that index cannot
# be reached (an offline mirror that already holds the CPU wheel), the plain pinned install is used.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
TORCH_INDEX ?= https://download.pytorch.org/whl/cpu

.PHONY: install demo test test-fast bench clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet torch==2.13.0 --index-url $(TORCH_INDEX) --retries 1 --timeout 20 \
		|| $(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -c constraints.txt -e '.[compress,test,sweep,vela]'
	touch $(STAMP)

demo: install
	$(BIN)/tinyprune demo

# two xdist workers, one per core; whole modules per worker, so a module's fixtures are built once
test: install
	$(BIN)/python -m pytest -q -n 2 --dist loadfile

test-fast: install
	$(BIN)/python -m pytest -q -m "not slow"

# The criteria benchmark of RESULTS.md (about an hour on 2 cores); the others are listed there.
bench: install
	$(BIN)/python -m benchmarks.criteria_bench --model lenet5 --dataset mnist --criteria flow,l1,taylor,mi,random

clean:
	rm -rf $(VENV) tinyprune-out .pytest_cache
