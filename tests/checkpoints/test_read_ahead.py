"""The mesh loader's read-ahead (`mesh_loader.ReadAhead`, worker threads reading slices ahead of
their placement) gives the same parameters as reading on one thread, bit for bit, and both equal the
checkpoint's tensors as the `safetensors` package reads them (kernels transposed); a NaN found by a
worker, a shape that disagrees with config.json, or a tensor the config does not use behave as in
a one-thread load; reads never run more than the window ahead of placement."""

from __future__ import annotations

import json
import threading

import jax
import numpy as np
import pytest
import torch
import transformers
from safetensors.numpy import load_file, save_file

from qjax.checkpoints import CheckpointError
from qjax.checkpoints import mesh_loader
from qjax.checkpoints.mesh_loader import load_hf_dir_on_mesh
from qjax.checkpoints.safetensors_stream import TensorSource, tensor_sources

TINY = dict(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=3, num_attention_heads=4,
            num_key_value_heads=2, tie_word_embeddings=False)


@pytest.fixture()
def tiny_dir(tmp_path):
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**TINY)).to(torch.bfloat16)
    model.save_pretrained(tmp_path / "tiny", max_shard_size="20KB")  # several files and an index
    assert (tmp_path / "tiny" / "model.safetensors.index.json").is_file()
    return tmp_path / "tiny"


def _reference(directory) -> dict:
    """qjax path -> the stored tensor as float32, read by the safetensors package (kernels transposed)."""
    stored = {}
    for file in sorted(directory.glob("*.safetensors")):
        stored.update(load_file(str(file)))
    out = {"embed/embedding": stored["model.embed_tokens.weight"], "final_norm/scale": stored["model.norm.weight"],
           "lm_head/kernel": stored["lm_head.weight"].T}
    names = {"attn/q_proj": "self_attn.q_proj", "attn/k_proj": "self_attn.k_proj", "attn/v_proj": "self_attn.v_proj",
             "attn/o_proj": "self_attn.o_proj", "mlp/gate_proj": "mlp.gate_proj", "mlp/up_proj": "mlp.up_proj",
             "mlp/down_proj": "mlp.down_proj"}
    for i in range(TINY["num_hidden_layers"]):
        for ours, theirs in names.items():
            out[f"layers_{i}/{ours}/kernel"] = stored[f"model.layers.{i}.{theirs}.weight"].T
        out[f"layers_{i}/input_norm/scale"] = stored[f"model.layers.{i}.input_layernorm.weight"]
        out[f"layers_{i}/post_attn_norm/scale"] = stored[f"model.layers.{i}.post_attention_layernorm.weight"]
    return {k: np.asarray(v, np.float32) for k, v in out.items()}


def _flat(params) -> dict:
    return {"/".join(str(k.key) for k in path): np.asarray(leaf, np.float32)
            for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]}


@pytest.mark.parametrize("ahead_bytes", [1, 1 << 30])  # one placement at a time; everything at once
def test_threads_give_the_one_thread_params_and_the_stored_tensors(tiny_dir, monkeypatch, ahead_bytes):
    monkeypatch.setattr(mesh_loader, "READ_AHEAD_BYTES", ahead_bytes)
    seen = set()
    read_slices = TensorSource.read_slices

    def recording(self, *args, **kwargs):
        seen.add(threading.current_thread().name.split("_")[0])
        return read_slices(self, *args, **kwargs)

    monkeypatch.setattr(TensorSource, "read_slices", recording)
    _, one = load_hf_dir_on_mesh(tiny_dir, None, dtype="bfloat16", threads=1)
    assert seen == {"MainThread"}
    seen.clear()
    _, many = load_hf_dir_on_mesh(tiny_dir, None, dtype="bfloat16", threads=3)
    assert seen == {"qjax-load"}  # every read on a worker
    one, many, want = _flat(one), _flat(many), _reference(tiny_dir)
    assert set(one) == set(many) == set(want)
    for path in want:
        assert many[path].dtype == one[path].dtype
        np.testing.assert_array_equal(many[path], one[path], err_msg=path)
        np.testing.assert_array_equal(many[path], want[path], err_msg=path)  # bfloat16 -> float32 is exact


def _rewrite(directory, change):
    """Applies change(name, array) -> array to every stored tensor, file by file."""
    for file in sorted(directory.glob("*.safetensors")):
        tensors = load_file(str(file))
        save_file({k: change(k, v) for k, v in tensors.items()}, str(file), metadata={"format": "pt"})


def test_a_nan_found_by_a_worker_is_one_clear_error(tiny_dir):
    def poison(name, value):
        if name == "model.layers.2.mlp.down_proj.weight":
            value = value.copy()
            value[3, 7] = np.nan
        return value

    _rewrite(tiny_dir, poison)
    before = threading.active_count()
    with pytest.raises(CheckpointError, match=r"tensor model\.layers\.2\.mlp\.down_proj\.weight contains NaN or Inf"):
        load_hf_dir_on_mesh(tiny_dir, None, dtype="bfloat16", threads=4)
    assert threading.active_count() == before  # the workers are gone


def test_a_shape_that_disagrees_with_the_config_is_reported_though_reads_started(tiny_dir):
    path = tiny_dir / "config.json"
    raw = json.loads(path.read_text())
    path.write_text(json.dumps({**raw, "intermediate_size": 40}))
    with pytest.raises(CheckpointError, match=r"tensor for layers_0/mlp/down_proj/kernel has shape \(48, 32\), but the "
                                              r"config implies \(40, 32\) \(checkpoint tensor model\.layers\.0\.mlp"):
        load_hf_dir_on_mesh(tiny_dir, None, dtype="float32", threads=2)


def test_tensors_the_config_does_not_use_are_left_out(tiny_dir):
    path = tiny_dir / "config.json"
    raw = json.loads(path.read_text())
    path.write_text(json.dumps({**raw, "num_hidden_layers": 2, "tie_word_embeddings": True}))  # layer 2, LM head unused
    _, params = load_hf_dir_on_mesh(tiny_dir, None, dtype="float32", threads=2)
    got, want = _flat(params), _reference(tiny_dir)
    assert "lm_head/kernel" not in got and not any(p.startswith("layers_2/") for p in got)
    for p, value in got.items():
        np.testing.assert_array_equal(value, want[p], err_msg=p)
    assert params["embed"]["embedding"].dtype == np.float32  # stored bfloat16, loaded as asked


@pytest.mark.parametrize("ahead_bytes", [1, 3000, 1 << 30])
def test_reads_run_at_most_the_window_ahead_of_placement(tmp_path, ahead_bytes):
    """When a placement's read starts, the placements before it that are read or being read and not
    yet placed hold less than `ahead_bytes` (or there are none): the window bounds the host memory
    in flight to `ahead_bytes` plus one placement."""
    rng = np.random.default_rng(0)
    shapes = [(8, 16), (40, 16), (4, 16), (64, 16), (16, 16), (2, 16), (32, 16)]
    save_file({f"t{i}": rng.standard_normal(s).astype(np.float32) for i, s in enumerate(shapes)},
              str(tmp_path / "x.safetensors"))
    sources = tensor_sources(tmp_path)
    placements = [mesh_loader.Placement(sources[f"t{i}"], s, None, np.dtype(np.float32), False)
                  for i, s in enumerate(shapes)]
    lock, placed, seen = threading.Lock(), [], []
    for k, p in enumerate(placements):
        def read_all(p=p, k=k, read=p.read_all):
            with lock:  # bytes of the placements submitted before this one and not yet placed
                seen.append(sum(q.nbytes for q in placements[len(placed):k]))
            read()
        p.read_all = read_all
    stored = load_file(str(tmp_path / "x.safetensors"))
    with mesh_loader.ReadAhead(placements, 3, ahead_bytes) as reads:
        for k, array in enumerate(reads):
            np.testing.assert_array_equal(np.asarray(array), stored[f"t{k}"])
            with lock:
                placed.append(k)
    assert len(seen) == len(shapes)
    assert all(s == 0 or s < ahead_bytes for s in seen), seen
    if ahead_bytes == 1:
        assert max(seen) == 0  # one placement at a time
    if ahead_bytes == 1 << 30:
        assert max(seen) > 0  # everything may be read at once
