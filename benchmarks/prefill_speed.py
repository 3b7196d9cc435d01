"""Prefill throughput on SmolLM2-135M: qjax against transformers + torch in the same run.

Both score the same WikiText-2 windows of `--seqlen` tokens (batch 1, float32). Prints tokens/s of
each, their ratio, and qjax's achieved FLOP/s as a share of this machine's matmul peak, measured in
the same run with a large jnp matmul. FLOPs per window: 2 x (decoder linear + LM head parameters) per
token, plus causal attention 4 x position x hidden per layer (QK^T and PV).

  .venv/bin/python benchmarks/prefill_speed.py --windows=4 --repeats=3

QJAX_BLAS=mkl|openblas|none picks the BLAS behind qjax's many-row products (`qjax.native.blas`).
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from qjax.checkpoints import load_model, resolve
from qjax.data.corpus import load_windows
from qjax.models import forward
from qjax.ops.dense import cpu_kernels

_SEQLEN = flags.DEFINE_integer("seqlen", 2048, "tokens per window")
_WINDOWS = flags.DEFINE_integer("windows", 4, "windows timed per repeat")
_REPEATS = flags.DEFINE_integer("repeats", 3, "timed repeats; the best is reported")
_MATMUL = flags.DEFINE_integer("matmul_size", 4096, "side of the square matmul used to measure peak")


def matmul_peak_flops(n: int, repeats: int = 5) -> float:
    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    b = jax.random.normal(jax.random.key(1), (n, n), jnp.float32)
    f = jax.jit(jnp.matmul)
    f(a, b).block_until_ready()
    best = min(_timed(lambda: f(a, b).block_until_ready()) for _ in range(repeats))
    return 2 * n ** 3 / best


def prefill_flops(config, seqlen: int) -> float:
    d, f, layers = config.hidden_size, config.intermediate_size, config.num_layers
    linear = layers * (d * config.q_size + 2 * d * config.kv_size + config.q_size * d + 3 * d * f)
    head = d * config.vocab_size
    attention = layers * 4 * d * seqlen * (seqlen + 1) / 2  # sum over positions 1..seqlen
    return 2 * (linear + head) * seqlen + attention


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main(argv):
    del argv
    import torch
    from transformers import AutoModelForCausalLM

    config, params, tokenizer = load_model("smollm2-135m")
    windows = load_windows(tokenizer, "wikitext2", "test", _SEQLEN.value, _WINDOWS.value)
    gguf = resolve("smollm2-135m")
    torch_model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name,
                                                       torch_dtype=torch.float32).eval()

    def run_qjax():
        for w in windows:
            forward(params, jnp.asarray(w[None]), config)[0].block_until_ready()

    def run_torch():
        with torch.inference_mode():
            for w in windows:
                torch_model(torch.from_numpy(w[None]).long())

    run_qjax(), run_torch()  # compile / warm up
    # Interleaved repeats (qjax, torch, peak matmul; best of each): this shared machine's speed
    # drifts by up to ~10% over minutes, and interleaving exposes all three to the same drift.
    qjax_times, torch_times, peaks = [], [], []
    for _ in range(_REPEATS.value):
        qjax_times.append(_timed(run_qjax))
        torch_times.append(_timed(run_torch))
        peaks.append(matmul_peak_flops(_MATMUL.value))
    qjax_s, torch_s, peak = min(qjax_times), min(torch_times), max(peaks)
    tokens = windows.size
    flops = prefill_flops(config, _SEQLEN.value) * len(windows)
    kernels = cpu_kernels()
    print(f"threads: torch {torch.get_num_threads()}, jax devices {jax.devices()}; qjax CPU kernels "
          f"{kernels['native']}, BLAS for many-row products: {kernels['blas']} (QJAX_BLAS)")
    print(f"{len(windows)} windows x {_SEQLEN.value} tokens, best of {_REPEATS.value} interleaved repeats")
    print(f"qjax          {tokens / qjax_s:9.1f} tokens/s  {flops / qjax_s / 1e9:7.1f} GFLOP/s")
    print(f"transformers  {tokens / torch_s:9.1f} tokens/s  {flops / torch_s / 1e9:7.1f} GFLOP/s")
    print(f"ratio qjax/torch: {torch_s / qjax_s:.3f}")
    print(f"matmul peak ({_MATMUL.value}^3 f32): {peak / 1e9:.1f} GFLOP/s; qjax at "
          f"{100 * flops / qjax_s / peak:.1f}% of peak, torch at {100 * flops / torch_s / peak:.1f}%")


if __name__ == "__main__":
    app.run(main)
