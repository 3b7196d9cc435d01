"""Decode and prefill speed, weight and KV bytes of SmolLM2-135M under float, W8A8, W4A16 and KV4,
against this machine's memory bandwidth and against transformers' `generate`, all in one run.

  nice -n 10 .venv/bin/python benchmarks/decode_speed.py --prompt_tokens=128 --new_tokens=64

1. Memory bandwidth: the best of several in-place copies (x + 1, x donated) of a large float32 array
   (bytes read + written / s); the read bandwidth: the best of several sums of the same array (bytes
   read / s, what streaming weights can reach: on a 2-core VM it can be far below the copy figure);
   and XLA's matvec ceiling: every float weight of the model streamed through one batch-1 matvec
   (kernels x (1, in) @ W, the tied embedding W @ h as the LM head does), all in one compiled call,
   with nothing else of a decode step, in XLA's own dot (not the native kernel that decoding uses).
2. Per setting (`qjax.eval.efficiency.measure_efficiency`, batch 1, random prompt of prompt_tokens):
   weight bytes, KV bytes, prefill tokens/s, decode tokens/s. The batch-1 decode limit is
   bandwidth / bytes read per step, where a step reads every weight (the tied embedding too: it is
   the LM head) and the whole preallocated KV cache (attention covers every slot); it is reported
   for the copy bandwidth and for the read bandwidth.
3. End to end on one WikiText-2 prompt: `qjax.eval.generate.generate_ids` under every setting (tokens/s
   and how many greedy tokens agree with the first setting's, e.g. KV4 against float), and
   transformers' `generate` (torch float32, greedy, exactly new_tokens tokens), each timed after a
   warm-up run; the ratio is qjax's first setting (float) over transformers.
"""

from __future__ import annotations

import json
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from qjax.checkpoints import load_model, resolve
from qjax.eval.efficiency import measure_efficiency
from qjax.eval.generate import generate_ids
from qjax.data.corpus import load_windows
from qjax.quant.activations import apply_setting, parse_setting

_PROMPT = flags.DEFINE_integer("prompt_tokens", 128, "prompt length (tokens)")
_NEW = flags.DEFINE_integer("new_tokens", 64, "tokens generated")
_SETTINGS = flags.DEFINE_list("settings", ["float", "W8A8", "W4A16", "KV4"], "settings to time")
_REPEATS = flags.DEFINE_integer("repeats", 3, "timed repeats; the best is reported")
_COPY_MB = flags.DEFINE_integer("copy_mb", 1024, "size of the array copied to measure bandwidth")
_HF = flags.DEFINE_bool("transformers", True, "also time transformers' generate")
_JSON = flags.DEFINE_string("json", None, "write the results as JSON to this path")
_TORCH_THREADS = flags.DEFINE_integer("torch_threads", 0, "torch intra-op threads (0: torch's default)")
_DTYPE = flags.DEFINE_enum("compute_dtype", "float32", ["float32", "bfloat16"], "qjax compute dtype")


def memory_bandwidth(megabytes: int, repeats: int = 5) -> float:
    """Bytes/s of copying a large float32 array into an existing buffer (x + 1 with x donated: every
    byte read and written once, no fresh allocation whose page faults would be timed too)."""
    step = jax.jit(lambda a: a + 1.0, donate_argnums=0)
    x = step(jnp.zeros((megabytes * 2 ** 20 // 4,), jnp.float32))
    x.block_until_ready()
    nbytes = x.nbytes
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        x = step(x)
        x.block_until_ready()
        best = min(best, time.perf_counter() - start)
    return 2 * nbytes / best


def read_bandwidth(megabytes: int, repeats: int = 5) -> float:
    """Bytes/s of summing a large float32 array: every byte read once, nothing written."""
    total = jax.jit(jnp.sum)
    x = jnp.ones((megabytes * 2 ** 20 // 4,), jnp.float32)
    total(x).block_until_ready()
    best = min(_timed(lambda: total(x).block_until_ready()) for _ in range(repeats))
    return x.nbytes / best


def matvec_bandwidth(params, repeats: int = 5) -> float:
    """Bytes/s of streaming every 2-D float weight of `params` through one batch-1 matvec (module
    docstring, step 1)."""
    mats = [w for w in jax.tree_util.tree_leaves(params) if getattr(w, "ndim", 0) == 2]
    vocab_rows = [w.shape[0] == params["embed"]["embedding"].shape[0] for w in mats]  # (vocab, hidden)
    xs = [jax.random.normal(jax.random.key(i), (1, w.shape[1] if rows else w.shape[0]), w.dtype)
          for i, (w, rows) in enumerate(zip(mats, vocab_rows))]

    @jax.jit
    def step(mats, xs):
        return [w @ x[0] if rows else x @ w for w, x, rows in zip(mats, xs, vocab_rows)]

    jax.block_until_ready(step(mats, xs))
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(step(mats, xs))
        best = min(best, time.perf_counter() - start)
    return sum(w.nbytes for w in mats) / best


def main(argv):
    del argv
    config, params, tokenizer = load_model("smollm2-135m")
    bandwidth = memory_bandwidth(_COPY_MB.value)
    reading = read_bandwidth(_COPY_MB.value)
    print(f"device {jax.devices()[0].device_kind}; memory bandwidth: copy {bandwidth / 1e9:.2f} GB/s, "
          f"read {reading / 1e9:.2f} GB/s ({100 * reading / bandwidth:.1f}% of copy)")
    matvec = matvec_bandwidth(params)
    print(f"XLA matvec ceiling (every weight through one batch-1 XLA matvec): {matvec / 1e9:.2f} GB/s = "
          f"{100 * matvec / bandwidth:.1f}% of the copy bandwidth")
    results = {"bandwidth_bytes_per_s": bandwidth, "read_bandwidth_bytes_per_s": reading,
               "matvec_bytes_per_s": matvec, "settings": {}}
    head = (f"{'setting':<8} {'weights MB':>10} {'KV MB':>7} {'prefill tok/s':>13} {'decode tok/s':>12} "
            f"{'limit tok/s':>11} {'of limit':>8} {'read limit':>10} {'of read':>7}")
    print(head)
    for name in _SETTINGS.value:
        qparams, runtime, state = apply_setting(params, config, parse_setting(name), compute_dtype=_DTYPE.value)
        e = measure_efficiency(qparams, config, prompt_tokens=_PROMPT.value, new_tokens=_NEW.value,
                               batch_size=1, runtime=runtime, runtime_state=state, repeats=_REPEATS.value)
        step_bytes = e["weight_bytes"] + e["kv_bytes"]
        limit, read_limit = bandwidth / step_bytes, reading / step_bytes
        e["decode_limit_tokens_per_s"] = limit
        e["decode_share_of_limit"] = e["decode_tokens_per_s"] / limit
        e["decode_read_limit_tokens_per_s"] = read_limit
        e["decode_share_of_read_limit"] = e["decode_tokens_per_s"] / read_limit
        results["settings"][name] = e
        print(f"{name:<8} {e['weight_bytes'] / 2**20:>10.1f} {e['kv_bytes'] / 2**20:>7.2f} "
              f"{e['prefill_tokens_per_s']:>13.1f} {e['decode_tokens_per_s']:>12.1f} {limit:>11.1f} "
              f"{100 * e['decode_share_of_limit']:>7.1f}% {read_limit:>10.1f} "
              f"{100 * e['decode_share_of_read_limit']:>6.1f}%", flush=True)

    prompt = [int(t) for t in load_windows(tokenizer, "wikitext2", "test", _PROMPT.value, 1)[0]]
    n = _NEW.value
    print(f"end to end (generate_ids), {len(prompt)}-token WikiText-2 prompt + {n} new tokens, batch 1:")
    results["end_to_end"] = {}
    float_tokens = None
    for name in _SETTINGS.value:
        qparams, runtime, state = apply_setting(params, config, parse_setting(name), compute_dtype=_DTYPE.value)

        def run_qjax():
            return generate_ids(qparams, config, [prompt], max_new_tokens=n, batch_size=1, runtime=runtime,
                                runtime_state=state)[0]

        tokens = run_qjax()  # compile
        seconds = min(_timed(run_qjax) for _ in range(_REPEATS.value))
        float_tokens = tokens if float_tokens is None else float_tokens
        agree = next((i for i, (a, b) in enumerate(zip(tokens, float_tokens)) if a != b), n)
        results["end_to_end"][name] = {"tokens_per_s": n / seconds, "tokens_equal_to_first_setting": agree}
        print(f"  qjax {name:<8} {n / seconds:8.1f} tokens/s; first {agree}/{n} tokens equal to "
              f"{_SETTINGS.value[0]}'s", flush=True)
    qjax_s = n / results["end_to_end"][_SETTINGS.value[0]]["tokens_per_s"]
    if _HF.value:
        import torch
        from transformers import AutoModelForCausalLM

        if _TORCH_THREADS.value:
            torch.set_num_threads(_TORCH_THREADS.value)
        gguf = resolve("smollm2-135m")
        model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name,
                                                     dtype=torch.float32).eval()
        ids = torch.tensor([prompt])

        def run_hf():
            with torch.inference_mode():
                out = model.generate(ids, max_new_tokens=n, min_new_tokens=n, do_sample=False,
                                     pad_token_id=tokenizer.pad_token_id)
            assert out.shape[1] == len(prompt) + n
            return out[0, len(prompt):].tolist()

        hf_tokens = run_hf()  # warm-up
        hf_s = min(_timed(run_hf) for _ in range(_REPEATS.value))
        same = float_tokens == hf_tokens
        results["transformers"] = {"tokens_per_s": n / hf_s, "qjax_over_transformers": hf_s / qjax_s,
                                   "torch_threads": torch.get_num_threads(), "same_tokens": same}
        print(f"  transformers float32 {n / hf_s:8.1f} tokens/s  (torch threads {torch.get_num_threads()})")
        print(f"  ratio qjax {_SETTINGS.value[0]} / transformers: {hf_s / qjax_s:.2f}; identical tokens: {same}")
    if _JSON.value:
        with open(_JSON.value, "w") as f:
            json.dump(results, f, indent=1, default=str)


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


if __name__ == "__main__":
    app.run(main)
