# make demo  — set up .venv if missing, run the main job (rllc demo: ≤ 45 min on 2 CPUs)
# make test  — set up .venv if missing, lint, run the whole test suite (what CI runs)
# make bench — install the bench extra, run benchmarks/chains.py and vs_devinterp.py (quick)
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: setup demo test lint bench clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	# torch first: 2.13.0 is the CPU wheel; other specs can pull a multi-GB CUDA build
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -c constraints.txt -e ".[serve,tune,test]"
	touch $(STAMP)

setup: $(STAMP)

demo: setup
	$(BIN)/rllc demo --out rllc-demo

test: setup lint
	$(BIN)/pytest

lint: setup
	$(BIN)/ruff check .

# the bench extra (devinterp, transformer-lens) is for benchmarks/vs_devinterp.py only
bench: setup
	$(BIN)/pip install --quiet -c constraints.txt -e ".[bench]"
	$(BIN)/python benchmarks/chains.py
	$(BIN)/python benchmarks/vs_devinterp.py --draws 8 --repeats 3

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
