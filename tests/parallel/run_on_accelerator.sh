#!/usr/bin/env bash
# On a host with several accelerators (8 GPUs, or a TPU VM with 8 chips / cores): the 8-device mesh
# tests on the real devices, then SmolLM2's WikiText-2 perplexity (first 8 windows of 2048 tokens) on
# one device and on a data:4,model:2 mesh (data:D,model:2 with D = devices / 2 when not 8).
#   bash tests/parallel/run_on_accelerator.sh [out_dir]
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-.venv/bin/python}
OUT=${1:-${OUT:-/tmp/qjax_accel}}
mkdir -p "$OUT"
export PYTHONPATH=$PWD HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1} HF_DATASETS_OFFLINE=1 TRANSFORMERS_VERBOSITY=error
N=$($PY -c 'import jax; print(jax.device_count())')
$PY -c 'import jax; print(jax.devices())' | tee "$OUT/devices.txt"
echo "== 8-device tests on $N devices" | tee "$OUT/tests.log"
QJAX_TEST_MESH=1 $PY -m pytest -q -p no:cacheprovider tests/parallel/on_mesh --durations=10 2>&1 | tee -a "$OUT/tests.log"
MESH="data:$((N / 2)),model:2"
[ "$N" -lt 2 ] && MESH=""
echo "== perplexity, one device" | tee "$OUT/perplexity.log"
CUDA_VISIBLE_DEVICES=${ONE_DEVICE:-0} TPU_VISIBLE_CHIPS=${ONE_DEVICE:-0} TPU_PROCESS_BOUNDS=1,1,1 TPU_CHIPS_PER_PROCESS_BOUNDS=1,1,1 \
  $PY experiments/perplexity.py --config.max_windows=8 --config.results="$OUT/ppl_one.jsonl" 2>&1 | tee -a "$OUT/perplexity.log"
echo "== perplexity, mesh $MESH on $N devices" | tee -a "$OUT/perplexity.log"
$PY experiments/perplexity.py --config.max_windows=8 --config.mesh="$MESH" --config.results="$OUT/ppl_mesh.jsonl" 2>&1 | tee -a "$OUT/perplexity.log"
grep -h '"value"' "$OUT"/ppl_one.jsonl "$OUT"/ppl_mesh.jsonl | $PY -c 'import json,sys; v=[json.loads(l)["value"] for l in sys.stdin]; print("ppl one device / mesh:", v, "rel diff", abs(v[0]-v[1])/v[0])' | tee -a "$OUT/perplexity.log"
# RTN W4 g128 on the mesh: XLA's dequantizing path, then one Pallas kernel per device (QArray.mesh_axes)
for KERNELS in xla pallas; do
  echo "== perplexity, rtn:w4g128, mesh $MESH, QJAX_KERNELS=$KERNELS" | tee -a "$OUT/perplexity.log"
  QJAX_KERNELS=$KERNELS $PY experiments/perplexity.py --config.max_windows=8 --config.mesh="$MESH" --config.recipe=rtn:w4g128 \
    --config.results="$OUT/ppl_w4_$KERNELS.jsonl" 2>&1 | tee -a "$OUT/perplexity.log"
done
cat "$OUT"/ppl_w4_xla.jsonl "$OUT"/ppl_w4_pallas.jsonl | $PY -c 'import json,sys; r=[json.loads(l) for l in sys.stdin]; print("rtn:w4g128 ppl xla / pallas per device:", [x["value"] for x in r], "rel diff", abs(r[0]["value"]-r[1]["value"])/r[0]["value"], "seconds", [round(x["seconds"], 1) for x in r])' | tee -a "$OUT/perplexity.log"
