#!/usr/bin/env bash
# One prepared run for a lent GPU or TPU (about 5 minutes): the Pallas kernels natively against the
# XLA path (agreement column) and timed against bf16 (benchmarks/kernels.py), the Pallas tests, and
# the multi-device tests on 8 host devices. Output goes to stdout and to $OUT (default: results/accel).
#   bash benchmarks/accelerator_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=${OUT:-results/accel}
mkdir -p "$OUT"
export PYTHONPATH=$PWD XLA_PYTHON_CLIENT_PREALLOCATE=false TF_CPP_MIN_LOG_LEVEL=2
$PY -c 'import jax; print(jax.__version__, jax.devices())' | tee "$OUT/devices.txt"
echo "== kernels benchmark (native Pallas) =="
timeout 300 $PY benchmarks/kernels.py --reps=20 2>&1 | tee "$OUT/kernels.txt"
echo "== Pallas tests (interpret + lowering; seam under QJAX_KERNELS=auto) =="
timeout 240 $PY -m pytest -q -x tests/pallas -p no:cacheprovider 2>&1 | tail -15 | tee "$OUT/tests_pallas.txt"
N=$($PY -c 'import jax; print(jax.device_count())')
if [ "$N" -ge 8 ]; then
  echo "== 8-device tests on the $N accelerators (tests/parallel/run_on_accelerator.sh) =="
  timeout 300 bash tests/parallel/run_on_accelerator.sh "$OUT/parallel" 2>&1 | tail -20
else
  echo "== 8-device tests on 8 host devices ($N accelerator(s) here) =="
  QJAX_TEST_MESH=1 JAX_PLATFORMS=cpu QJAX_NATIVE=0 XLA_FLAGS=--xla_force_host_platform_device_count=8 \
    timeout 240 $PY -m pytest -q -x tests/parallel/on_mesh -p no:cacheprovider 2>&1 | tail -15 | tee "$OUT/tests_parallel.txt"
fi
