"""Peak host memory and time of loading a ~1B-parameter Llama checkpoint: qjax's streaming mesh
loader beside the previous whole-model loader, and beside reading the files once.

The script writes a synthetic checkpoint with TinyLlama-1.1B's shapes (vocab 32000, hidden 2048,
intermediate 5632, 32 heads, 4 KV heads, `--layers` layers, untied LM head), random bfloat16 weights,
split into `--shards` safetensors files with a model.safetensors.index.json, into `--workdir`
(default: a temporary directory, removed at the end). Then, each in a fresh subprocess with
`--devices` simulated CPU devices (so device buffers are host memory and count in the RSS):

* new: `qjax.checkpoints.mesh_loader.load_hf_dir_on_mesh` onto the `--mesh` mesh (default model:8,
  so each device holds 1/8 of every linear) in `--dtype`, its slices read by `reader_threads()`
  worker threads ahead of placement; new1: the same on one thread (`threads=1`);
* old (`--old`): what `load_model` did before this loader (`previous_loader`): every tensor read
  whole through safetensors into float32 numpy, the whole model collected, then `jnp.asarray` per
  leaf onto the default device, in `--dtype`;
* read: every file read once, in 64 MiB chunks, into a reused buffer (the I/O floor);
* memory: a new array of its own for every tensor (`aligned_empty`, pre-faulted), kept, nothing read:
  obtaining the memory the loaded model occupies, alone. On CPU devices every loader pays it (their
  buffers are host memory), so `memory x read` bounds from below the `x read` any loader can reach;
* alloc: every tensor's bytes read into a new array of its own, kept (`safetensors_stream.aligned_empty`,
  pre-faulted as the loader's are): the I/O plus obtaining the memory the loaded model occupies, the
  floor of any loader whose result lives in host memory (as CPU devices' buffers do). The new
  loader's time is printed against both floors.

Each reports its peak RSS (`getrusage` ru_maxrss, cross-checked with /proc's VmHWM; the driver that
forks them stays small, as Linux carries the parent's RSS at fork into the child's ru_maxrss), the
RSS after importing jax and qjax (before loading) and the wall time. Target of issue 18: the new loader's peak RSS <= 1.3x the model's bytes
in the target dtype, and its time <= 1.5x reading the files once. The files were just written, so
by default every loader reads them from the page cache (the read floor is then a memory copy);
with `--cold` each loader first evicts the checkpoint's files from the page cache
(`posix_fadvise(POSIX_FADV_DONTNEED)` on each file, after an fsync; no root needed, nothing else is
evicted), so every loader, the read floor included, reads from storage, as a first load does.

  .venv/bin/python benchmarks/load_memory.py                       # 22 layers (1.1B), new loader only
  .venv/bin/python benchmarks/load_memory.py --layers=4 --old      # old beside new (the old needs ~4x)
  .venv/bin/python benchmarks/load_memory.py --cold               # every loader reads from storage
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from absl import app, flags

_LAYERS = flags.DEFINE_integer("layers", 22, "decoder layers (TinyLlama-1.1B has 22)")
_SHARDS = flags.DEFINE_integer("shards", 4, "safetensors files")
_DTYPE = flags.DEFINE_enum("dtype", "bfloat16", ["bfloat16", "float32"], "target dtype of the loaded params")
_DEVICES = flags.DEFINE_integer("devices", 8, "simulated CPU devices of the loading process")
_MESH = flags.DEFINE_string("mesh", "model:8", "mesh of the new loader")
_OLD = flags.DEFINE_bool("old", False, "also run the previous whole-model loader (needs ~4x the model)")
_WORKDIR = flags.DEFINE_string("workdir", None, "where to write the checkpoint (default: a temp dir)")
_COLD = flags.DEFINE_bool("cold", False, "evict the checkpoint files from the page cache before each loader "
                          "(posix_fadvise DONTNEED), so every loader reads from storage")
_ROLE = flags.DEFINE_enum("role", "main", ["main", "write", "new", "new1", "old", "read", "memory", "alloc"],
                          "internal: subprocess role")

TINYLLAMA = dict(vocab_size=32000, hidden_size=2048, intermediate_size=5632, num_attention_heads=32,
                 num_key_value_heads=4, max_position_embeddings=2048, rms_norm_eps=1e-5, rope_theta=10000.0,
                 tie_word_embeddings=False, architectures=["LlamaForCausalLM"], model_type="llama",
                 torch_dtype="bfloat16")


def tensor_shapes(layers: int) -> dict[str, tuple]:
    """HF tensor name -> stored shape ((out, in) for linears) of the TinyLlama layout."""
    c = TINYLLAMA
    d, f, v = c["hidden_size"], c["intermediate_size"], c["vocab_size"]
    kv = d // c["num_attention_heads"] * c["num_key_value_heads"]
    shapes = {"model.embed_tokens.weight": (v, d)}
    for i in range(layers):
        p = f"model.layers.{i}."
        shapes.update({p + "input_layernorm.weight": (d,), p + "post_attention_layernorm.weight": (d,),
                       p + "self_attn.q_proj.weight": (d, d), p + "self_attn.k_proj.weight": (kv, d),
                       p + "self_attn.v_proj.weight": (kv, d), p + "self_attn.o_proj.weight": (d, d),
                       p + "mlp.gate_proj.weight": (f, d), p + "mlp.up_proj.weight": (f, d),
                       p + "mlp.down_proj.weight": (d, f)})
    shapes.update({"model.norm.weight": (d,), "lm_head.weight": (v, d)})
    return shapes


def write_checkpoint(folder: Path, layers: int, shards: int, seed: int = 0) -> int:
    """Writes config.json, `shards` safetensors files and the index, one tensor at a time (never the
    whole model in memory). Returns the bytes of tensor data."""
    import ml_dtypes

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps({**TINYLLAMA, "num_hidden_layers": layers}))
    shapes = tensor_shapes(layers)
    total = sum(int(np.prod(s)) * 2 for s in shapes.values())
    names, groups, acc = list(shapes), [[]], 0
    for name in names:  # contiguous groups of about total / shards bytes
        if acc >= total / shards * len(groups) and len(groups) < shards:
            groups.append([])
        groups[-1].append(name)
        acc += int(np.prod(shapes[name])) * 2
    rng = np.random.default_rng(seed)
    weight_map = {}
    for k, group in enumerate(groups):
        file = f"model-{k + 1:05d}-of-{len(groups):05d}.safetensors"
        header, offset = {}, 0
        for name in group:
            n = int(np.prod(shapes[name])) * 2
            header[name] = {"dtype": "BF16", "shape": list(shapes[name]), "data_offsets": [offset, offset + n]}
            offset += n
            weight_map[name] = file
        blob = json.dumps(header).encode()
        blob += b" " * (-len(blob) % 8)
        with open(folder / file, "wb") as f:
            f.write(len(blob).to_bytes(8, "little") + blob)
            for name in group:
                shape = shapes[name]
                if len(shape) == 1:
                    value = np.ones(shape, np.float32) + 0.01 * rng.standard_normal(shape, np.float32)
                else:
                    value = 0.02 * rng.standard_normal(shape, np.float32)
                f.write(value.astype(ml_dtypes.bfloat16).tobytes())
                del value
    (folder / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {"total_size": total}, "weight_map": weight_map}))
    return total


def previous_loader(folder: Path, dtype: str) -> dict:
    """qjax's HF loading before the mesh loader (kept here as the baseline): flat float32 numpy copy of
    every tensor (kernels transposed), then one device array per leaf."""
    import jax
    import jax.numpy as jnp
    from safetensors import safe_open

    from qjax.checkpoints.convert import build_params
    from qjax.checkpoints.hf_reader import family_of, map_tensor_names, read_config

    config = read_config(folder)
    family = family_of(json.loads((folder / "config.json").read_text()), folder)
    flat = {}
    for file in sorted(folder.glob("*.safetensors")):
        with safe_open(str(file), framework="flax") as f:
            for name, path in map_tensor_names(list(f.keys()), family, folder).items():
                w = np.asarray(f.get_tensor(name), np.float32)
                flat[path] = w.T if path.endswith("/kernel") else w
    params = build_params(flat, config, str(folder), family.hf_name)
    return jax.tree_util.tree_map(lambda x: jnp.asarray(x, dtype), params)


def _cpu_seconds() -> float:
    import resource

    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _rss_mib() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _status_mib(field: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def _current_rss_mib() -> float:
    return _status_mib("VmRSS")


def child(role: str, folder: Path) -> dict:
    """Runs one loader in this (fresh) process; returns its measurements."""
    if role == "write":
        return {"bytes": write_checkpoint(folder, _LAYERS.value, _SHARDS.value)}
    if role == "read":
        base = _current_rss_mib()
        buf = bytearray(64 << 20)
        start, cpu = time.perf_counter(), _cpu_seconds()
        for file in sorted(folder.glob("*.safetensors")):
            with open(file, "rb", buffering=0) as f:
                while f.readinto(buf):
                    pass
        return {"seconds": time.perf_counter() - start, "cpu_seconds": _cpu_seconds() - cpu, "base_rss_mib": base,
                "peak_rss_mib": _rss_mib(), "hwm_mib": _status_mib("VmHWM")}
    if role in ("memory", "alloc"):
        from qjax.checkpoints.safetensors_stream import aligned_empty, tensor_sources

        sources = sorted(tensor_sources(folder).values(), key=lambda t: (str(t.file), t.offset))
        base = _current_rss_mib()
        start, cpu = time.perf_counter(), _cpu_seconds()
        if role == "memory":
            kept = [aligned_empty((t.nbytes,), np.uint8) for t in sources]
            return {"seconds": time.perf_counter() - start, "cpu_seconds": _cpu_seconds() - cpu,
                    "base_rss_mib": base, "peak_rss_mib": _rss_mib(), "hwm_mib": _status_mib("VmHWM")}
        kept = []
        for file in sorted({t.file for t in sources}):
            with open(file, "rb", buffering=0) as f:
                for t in (t for t in sources if t.file == file):
                    kept.append(aligned_empty((t.nbytes,), np.uint8))
                    f.seek(t.offset)
                    f.readinto(kept[-1])
        return {"seconds": time.perf_counter() - start, "cpu_seconds": _cpu_seconds() - cpu, "base_rss_mib": base,
                "peak_rss_mib": _rss_mib(), "hwm_mib": _status_mib("VmHWM")}
    import jax
    import jax.numpy as jnp

    from qjax.checkpoints.mesh_loader import load_hf_dir_on_mesh, reader_threads
    from qjax.parallel import make_mesh

    jnp.zeros(1).block_until_ready()
    base = _current_rss_mib()
    start, cpu = time.perf_counter(), _cpu_seconds()
    if role in ("new", "new1"):
        threads = 1 if role == "new1" else None
        _, params = load_hf_dir_on_mesh(folder, make_mesh(_MESH.value), dtype=_DTYPE.value, threads=threads)
    else:
        params = previous_loader(folder, _DTYPE.value)
    jax.block_until_ready(params)
    seconds = time.perf_counter() - start
    leaves = jax.tree_util.tree_leaves(params)
    nbytes = sum(x.size * x.dtype.itemsize for x in leaves)
    return {"seconds": seconds, "cpu_seconds": _cpu_seconds() - cpu, "base_rss_mib": base, "peak_rss_mib": _rss_mib(), "param_bytes": nbytes,
            "devices": jax.device_count(), "end_rss_mib": _current_rss_mib(), "hwm_mib": _status_mib("VmHWM"),
            "threads": reader_threads()}


def evict(folder: Path) -> None:
    """Drops the checkpoint's files from the page cache (their pages are clean after the fsync)."""
    for file in sorted(folder.glob("*.safetensors")):
        fd = os.open(file, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def run_child(role: str, folder: Path) -> dict:
    if _COLD.value and role != "write":
        evict(folder)
    env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={_DEVICES.value}",
           "JAX_PLATFORMS": "cpu"}
    args = [sys.executable, __file__, f"--role={role}", f"--workdir={folder}", f"--dtype={_DTYPE.value}",
            f"--mesh={_MESH.value}", f"--devices={_DEVICES.value}", f"--layers={_LAYERS.value}",
            f"--shards={_SHARDS.value}"]
    proc = subprocess.run(args, env=env, capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(f"{role} loader failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv):
    del argv
    if _ROLE.value != "main":
        print(json.dumps(child(_ROLE.value, Path(_WORKDIR.value))))
        return
    tmp = None if _WORKDIR.value else tempfile.mkdtemp(prefix="qjax_load_memory_")
    folder = Path(_WORKDIR.value or tmp) / "ckpt"
    try:
        start = time.perf_counter()
        data_bytes = run_child("write", folder)["bytes"]  # in a child: this driver stays small
        params = data_bytes // 2
        model_bytes = params * (2 if _DTYPE.value == "bfloat16" else 4)
        print(f"checkpoint: {params / 1e9:.3f}B params, {data_bytes / 2**20:.0f} MiB bf16 in {_SHARDS.value} "
              f"files (written in {time.perf_counter() - start:.0f} s); model in {_DTYPE.value}: "
              f"{model_bytes / 2**20:.0f} MiB; {_DEVICES.value} CPU devices, mesh {_MESH.value}; files "
              f"{'evicted from the page cache before each loader (--cold)' if _COLD.value else 'in the page cache'}")
        read = run_child("read", folder)
        memory = run_child("memory", folder)
        alloc = run_child("alloc", folder)
        print(f"{'loader':<8} {'seconds':>8} {'x read':>7} {'x alloc':>8} {'CPU s':>7} {'peak RSS MiB':>13} {'x model':>8} "
              f"{'above imports MiB':>18} {'x model':>8} {'VmHWM MiB':>10}")
        for role, r in (("read", read), ("memory", memory), ("alloc", alloc)):
            print(f"{role:<8} {r['seconds']:>8.2f} {r['seconds'] / read['seconds']:>7.2f} "
                  f"{r['seconds'] / alloc['seconds']:>8.2f} {r['cpu_seconds']:>7.2f} "
                  f"{r['peak_rss_mib']:>13.0f} {'':>8} {'':>18} {'':>8} {r['hwm_mib']:>10.0f}")
        for role in (["old"] if _OLD.value else []) + ["new1", "new"]:
            r = run_child(role, folder)
            above = r["peak_rss_mib"] - r["base_rss_mib"]
            print(f"{role:<8} {r['seconds']:>8.2f} {r['seconds'] / read['seconds']:>7.2f} "
                  f"{r['seconds'] / alloc['seconds']:>8.2f} {r['cpu_seconds']:>7.2f} "
                  f"{r['peak_rss_mib']:>13.0f} "
                  f"{r['peak_rss_mib'] * 2**20 / model_bytes:>8.2f} {above:>18.0f} {above * 2**20 / model_bytes:>8.2f} "
                  f"{r['hwm_mib']:>10.0f}")
            assert r["param_bytes"] == model_bytes, (r["param_bytes"], model_bytes)
        print(f"new: {r['threads']} reader threads (reader_threads(): the usable cores, at most 8); new1: one")
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    app.run(main)
