# Two commands set everything up and run: `make demo` and `make test` (see the README).
# Each creates or refreshes the environments it needs first; an environment is installed again
# only when what it was installed from changed (pyproject.toml, a requirements file), so a second
# run goes straight to its work. The pip commands below are the ones to use in your own environment.

PYTHON ?= python3
VENV := .venv
STAMPS := $(VENV)/.stamps
# the CPU wheel of torch; a range or a bare `torch` would pull a CUDA build of several GB
TORCH := torch==2.13.0
PYTHON_MODELS_REQUIREMENTS := ftprefix/assets/image/triton-python-models.txt
DEMO_ARGS ?=

.PHONY: demo test environments

demo: $(STAMPS)/dev
	$(VENV)/bin/ftprefix demo $(DEMO_ARGS)

# compileall first: the suite starts many Python processes (servers, their engine processes,
# commands), and where bytecode is not written on import (PYTHONDONTWRITEBYTECODE) each one would
# compile ftprefix again; it writes only what changed since the last run
test: environments
	$(VENV)/bin/python -m compileall -q ftprefix benchmarks tools > /dev/null
	$(VENV)/bin/ruff check . && $(VENV)/bin/python -m pytest -q

environments: $(STAMPS)/dev $(STAMPS)/triton-python-models $(STAMPS)/oldest

# the development environment: ftprefix with every extra, editable, and the test tools; the Triton
# server the demo and the tests start comes with nvidia-pytriton, for Linux only, so elsewhere this
# says so in one line instead of a failed pip install
$(STAMPS)/dev: pyproject.toml
	@test "$$(uname -s)" = Linux || { echo "make demo and make test need Linux (nvidia-pytriton ships \
	the Triton server they start for Linux alone), not $$(uname -s); here, pip install \
	'ftprefix[convert,openai]' gives the converter, verify, the client and the gateway" >&2; exit 2; }
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install $(TORCH) -e '.[all,dev]'
	mkdir -p $(STAMPS) && touch $@

# the packages of the GPU image's text models, where the tests run those models the way the image does
$(STAMPS)/triton-python-models: $(PYTHON_MODELS_REQUIREMENTS) | $(STAMPS)/dev
	$(VENV)/bin/pip install --upgrade --target $(VENV)/triton-python-models -r $(PYTHON_MODELS_REQUIREMENTS)
	touch $@

# the oldest supported Hugging Face stack, where the converter, verify and tokenizer tests run again
$(STAMPS)/oldest: pyproject.toml tests/oldest-supported.txt | $(STAMPS)/dev
	test -x $(VENV)/oldest/bin/python || $(PYTHON) -m venv $(VENV)/oldest
	$(VENV)/oldest/bin/pip install $(TORCH) -e '.[convert,verify]' pytest -r tests/oldest-supported.txt
	touch $@
