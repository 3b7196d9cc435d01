"""Pallas kernels against the bfloat16 matmul and the XLA dequantizing path, side by side in one run.

  .venv/bin/python benchmarks/kernels.py                     # on a GPU or TPU: SmolLM2 + Llama-2-7B shapes
  .venv/bin/python benchmarks/kernels.py --smoke             # CPU: interpret mode, tiny shapes (a test runs it)

For each weight shape (in, out) — SmolLM2-135M's (576x576, 576x1536, 1536x576) and Llama-2-7B's
(4096x4096, 4096x11008, 11008x4096) — and batch (1, 16, 256), it times (median of --reps, after a
compile-and-warm-up call, each a jitted function of x with the weight as an argument):
  bf16        x bf16 @ W bf16 (XLA)
  xla_w4      W4 g128 asymmetric QArray through the XLA dequantizing path (`qjax.ops.quantized.dequantized_matmul`)
  pallas_w4   the same QArray through `pallas_kernels.dequant_matmul` (via `qjax.ops.quantized.pallas_matmul`)
  xla_w8a8    W8 per channel with per-token int8 activations, simulated in float (fake quant + dequantize)
  pallas_w8a8 the same through the integer kernel `pallas_kernels.int8_matmul`
and, for decode attention over a KV4 cache (SmolLM2: 9 heads on 3 KV heads of 64; Llama-2-7B: 32 of
128; 2048 cached slots, batch 1 and 16):
  bf16_kv     `grouped_attention` over a bfloat16 cache
  xla_kv4     the packed KV4 cache decoded by XLA (`QuantKVSpec.read_layer`), then `grouped_attention`
  pallas_kv4  `pallas_kernels.quantized_kv_decode_attention` on the packed cache
and prints time, bytes moved (weight storage + x + y), achieved bandwidth and its share of the
device's peak (PEAK_BANDWIDTH by device kind; "n/a" for unknown devices and in interpret mode), and
each kernel's speed-up over bf16 and over its XLA twin, and its agreement with the twin (max
|difference| / max |twin|, the correctness check on real hardware).
"""

from __future__ import annotations

import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from qjax.formats import WeightQuantSpec
from qjax.ops import act_quant, kernels, kv_attention, quantized
from qjax.ops.attention import grouped_attention
from qjax.quant.kv import QuantKVSpec
from qjax.quant.rtn import quantize_rtn

_SMOKE = flags.DEFINE_bool("smoke", False, "CPU smoke run: interpret mode, tiny shapes, batch 1 and 16")
_REPS = flags.DEFINE_integer("reps", 20, "timed calls per measurement (median reported)")
_MODELS = flags.DEFINE_list("models", ["smollm2-135m", "llama-2-7b"], "shape sets to run")
_BATCHES = flags.DEFINE_list("batches", ["1", "16", "256"], "batch sizes (rows of x)")

SHAPES = {"smollm2-135m": [(576, 576), (576, 1536), (1536, 576)],
          "llama-2-7b": [(4096, 4096), (4096, 11008), (11008, 4096)],
          "smoke": [(256, 128)]}
KV_SHAPES = {"smollm2-135m": (9, 3, 64), "llama-2-7b": (32, 32, 128), "smoke": (4, 2, 64)}  # heads, KV heads, head_dim

# Peak HBM bandwidth (bytes/s) by `device.device_kind` (vendor data sheets).
PEAK_BANDWIDTH = {
    "NVIDIA H100 80GB HBM3": 3.35e12, "NVIDIA H100 PCIe": 2.0e12, "NVIDIA H100 NVL": 3.9e12,
    "NVIDIA H200": 4.8e12, "NVIDIA H200 NVL": 4.8e12, "NVIDIA A100-SXM4-80GB": 2.039e12,
    "NVIDIA A100-SXM4-40GB": 1.555e12, "NVIDIA A100-PCIE-40GB": 1.555e12, "NVIDIA A100 80GB PCIe": 1.935e12,
    "NVIDIA L4": 0.3e12, "NVIDIA A10G": 0.6e12, "NVIDIA GB200": 8.0e12, "NVIDIA B200": 8.0e12,
    "TPU v4": 1.2e12, "TPU v5 lite": 0.819e12, "TPU v5e": 0.819e12, "TPU v5p": 2.765e12, "TPU v5": 2.765e12,
    "TPU v6 lite": 1.64e12, "TPU v6e": 1.64e12,
}


def peak_bandwidth(device) -> float | None:
    kind = device.device_kind
    if kind in PEAK_BANDWIDTH:
        return PEAK_BANDWIDTH[kind]
    matches = [v for k, v in PEAK_BANDWIDTH.items() if kind.startswith(k)]
    return matches[0] if matches else None


def timed(fn, *args, reps: int) -> float:
    """Median seconds of `fn(*args)` (jitted), after one compile-and-warm-up call."""
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def nbytes(tree) -> int:
    return sum(int(np.prod(a.shape)) * a.dtype.itemsize for a in jax.tree_util.tree_leaves(tree))


def kernel_platform() -> tuple[str, bool]:
    """(Pallas platform, interpret) for this backend: tpu / gpu natively, else the TPU variant interpreted."""
    backend = kernels.backend_platform()
    return (backend, False) if backend in ("tpu", "gpu") else ("tpu", True)


def measure(k: int, n: int, batch: int, reps: int, peak) -> list[dict]:
    rng = np.random.default_rng(0)
    w = jnp.asarray(rng.standard_normal((k, n)).astype(np.float32) * 0.02)
    w4 = quantize_rtn(w, WeightQuantSpec(4, 128 if k >= 128 else None, symmetric=False))
    w8 = quantize_rtn(w, WeightQuantSpec(8, None, symmetric=True))
    w_bf16 = w.astype(jnp.bfloat16)
    x = jnp.asarray(rng.standard_normal((batch, k)), jnp.bfloat16)
    platform, interpret = kernel_platform()
    a8 = act_quant.IntegerActivation(8)
    runs = {
        "bf16": (jax.jit(lambda x, w: jnp.dot(x, w, preferred_element_type=jnp.float32).astype(x.dtype)), w_bf16),
        "xla_w4": (jax.jit(quantized.dequantized_matmul), w4),
        "pallas_w4": (jax.jit(lambda x, qa: quantized.pallas_matmul(x, qa, platform=platform, interpret=interpret)), w4),
        "xla_w8a8": (jax.jit(lambda x, qa: quantized.dequantized_matmul(a8.fake_quant(x), qa)), w8),
        "pallas_w8a8": (jax.jit(lambda x, qa: quantized.pallas_integer_matmul(x, qa, bits=8, platform=platform,
                                                                               interpret=interpret)), w8),
    }
    rows, outputs = [], {}
    for name, (fn, weight) in runs.items():
        if name.startswith("pallas") and not quantized.pallas_applies(x, weight, platform):
            continue
        outputs[name] = np.asarray(fn(x, weight), np.float32)
        seconds = timed(fn, x, weight, reps=reps)
        moved = nbytes(weight) + nbytes(x) + batch * n * 2
        bw = moved / seconds
        rows.append(dict(shape=f"{k}x{n}", batch=batch, kernel=name, ms=seconds * 1e3, gbps=bw / 1e9,
                         peak=None if (peak is None or interpret) else bw / peak))
    base = {r["kernel"]: r["ms"] for r in rows}
    for r in rows:
        r["vs_bf16"] = base["bf16"] / r["ms"]
        twin = {"pallas_w4": "xla_w4", "pallas_w8a8": "xla_w8a8"}.get(r["kernel"])
        r["vs_xla"] = base[twin] / r["ms"] if twin in base else None
        # agreement with the XLA twin: max |difference| / max |twin output|
        r["err"] = (float(np.max(np.abs(outputs[r["kernel"]] - outputs[twin])) / np.max(np.abs(outputs[twin])))
                    if twin in outputs else None)
    return rows


def measure_kv(heads: int, kv_heads: int, head_dim: int, slots: int, batch: int, reps: int, peak) -> list[dict]:
    rng = np.random.default_rng(1)
    spec = QuantKVSpec(4, 32)
    shape = (batch, slots, kv_heads, head_dim)
    k = jnp.asarray(rng.standard_normal(shape), jnp.bfloat16)
    v = jnp.asarray(rng.standard_normal(shape), jnp.bfloat16)
    layer = spec.write_layer(spec.init_layer(batch, slots, kv_heads, head_dim, jnp.bfloat16), k, v, 0)
    q = jnp.asarray(rng.standard_normal((batch, 1, heads, head_dim)), jnp.bfloat16)
    mask = jnp.ones((batch, 1, 1, slots), bool)
    platform, interpret = kernel_platform()
    mode = "interpret" if interpret else platform
    runs = {
        "bf16_kv": (jax.jit(grouped_attention), (q, k, v, mask)),
        "xla_kv4": (jax.jit(lambda q, layer, mask: grouped_attention(q, *spec.read_layer(layer, q.dtype), mask)),
                    (q, layer, mask)),
    }
    with kernels.use_kernels(mode):
        fn = jax.jit(lambda q, layer, mask: kv_attention.quantized_cache_attention(q, layer, spec, mask, slots))
        if fn.eval_shape(q, layer, mask) is not None:
            runs["pallas_kv4"] = (fn, (q, layer, mask))
        rows, outputs = [], {}
        for name, (f, args) in runs.items():
            outputs[name] = np.asarray(f(*args), np.float32)
            seconds = timed(f, *args, reps=reps)
            moved = nbytes(args) + nbytes(q)
            rows.append(dict(shape=f"kv{heads}/{kv_heads}x{head_dim}", batch=batch, kernel=name, ms=seconds * 1e3,
                             gbps=moved / seconds / 1e9, peak=None if (peak is None or interpret) else moved / seconds / peak))
    base = {r["kernel"]: r["ms"] for r in rows}
    for r in rows:
        r["vs_bf16"] = base["bf16_kv"] / r["ms"]
        twin = "xla_kv4" if r["kernel"] == "pallas_kv4" else None
        r["vs_xla"] = base[twin] / r["ms"] if twin else None
        r["err"] = (float(np.max(np.abs(outputs[r["kernel"]] - outputs[twin])) / np.max(np.abs(outputs[twin])))
                    if twin else None)
    return rows


def print_row(r):
    pk = "n/a" if r["peak"] is None else f"{100 * r['peak']:.0f}"
    vx = "" if r["vs_xla"] is None else f"{r['vs_xla']:.2f}"
    err = "" if r["err"] is None else f"{r['err']:.1e}"
    print(f"{r['shape']:>12} {r['batch']:>5} {r['kernel']:>12} {r['ms']:>9.3f} {r['gbps']:>8.1f} "
          f"{pk:>6} {r['vs_bf16']:>7.2f} {vx:>6} {err:>8}")


def main(_):
    device = jax.devices()[0]
    peak = peak_bandwidth(device)
    platform, interpret = kernel_platform()
    models = ["smoke"] if _SMOKE.value else _MODELS.value
    batches = [1, 16] if _SMOKE.value else [int(b) for b in _BATCHES.value]
    reps = 2 if _SMOKE.value else _REPS.value
    print(f"device: {device.device_kind} | Pallas platform: {platform}{' (interpret)' if interpret else ''} | "
          f"peak bandwidth: {'unknown' if peak is None else f'{peak / 1e12:.2f} TB/s'}")
    print(f"{'shape':>12} {'batch':>5} {'kernel':>12} {'ms':>9} {'GB/s':>8} {'%peak':>6} {'x bf16':>7} {'x xla':>6} {'err':>8}")
    for model in models:
        for k, n in SHAPES[model]:
            for batch in batches:
                for r in measure(k, n, batch, reps, peak):
                    print_row(r)
        slots = 64 if _SMOKE.value else 2048
        for batch in ([1] if _SMOKE.value else [1, 16]):
            for r in measure_kv(*KV_SHAPES[model], slots, batch, reps, peak):
                print_row(r)


if __name__ == "__main__":
    app.run(main)
