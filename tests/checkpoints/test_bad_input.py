"""Bad checkpoints give one clear CheckpointError naming the file and the problem."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
import transformers

from qjax.checkpoints import CheckpointError, load_gguf, load_model

TINY = dict(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=1,
            num_attention_heads=4, num_key_value_heads=2)


@pytest.fixture()
def tiny_dir(tmp_path):
    torch.manual_seed(0)
    transformers.LlamaForCausalLM(transformers.LlamaConfig(**TINY)).save_pretrained(tmp_path / "tiny")
    return tmp_path / "tiny"


def _edit_config(directory, **changes):
    path = directory / "config.json"
    raw = json.loads(path.read_text())
    raw.update(changes)
    path.write_text(json.dumps(raw))


def test_unknown_architecture(tiny_dir):
    _edit_config(tiny_dir, architectures=["RwkvForCausalLM"], model_type="rwkv")
    with pytest.raises(CheckpointError, match=r"config.json: unknown architecture .*Rwkv"):
        load_model(str(tiny_dir))


def test_missing_path():
    with pytest.raises(CheckpointError, match="no such file or directory"):
        load_model("./does/not/exist")


def test_missing_safetensors(tiny_dir):
    (tiny_dir / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"no \*\.safetensors files"):
        load_model(str(tiny_dir))


def test_truncated_safetensors(tiny_dir):
    path = tiny_dir / "model.safetensors"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CheckpointError, match=r"model.safetensors: not a readable safetensors file"):
        load_model(str(tiny_dir))


def test_corrupt_safetensors_header(tiny_dir):
    path = tiny_dir / "model.safetensors"
    data = bytearray(path.read_bytes())
    data[8:40] = b"\xff" * 32
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"model.safetensors: not a readable safetensors file"):
        load_model(str(tiny_dir))


def test_shape_disagrees_with_config(tiny_dir):
    _edit_config(tiny_dir, intermediate_size=50)
    with pytest.raises(CheckpointError, match=r"mlp/down_proj/kernel has shape \(48, 32\), but the config implies \(50, 32\)"):
        load_model(str(tiny_dir))


def test_tokenizer_larger_than_embedding(tiny_dir, smollm2_gguf):
    from transformers import AutoTokenizer

    # SmolLM2's 49152-token tokenizer beside a 64-row embedding
    AutoTokenizer.from_pretrained(str(smollm2_gguf.parent), gguf_file=smollm2_gguf.name).save_pretrained(tiny_dir)
    with pytest.raises(CheckpointError, match=r"tokenizer has 49152 tokens but the embedding has only 64 rows"):
        load_model(str(tiny_dir))


def test_truncated_gguf(tmp_path, smollm2_gguf):
    path = tmp_path / "cut.gguf"
    with open(smollm2_gguf, "rb") as src:
        path.write_bytes(src.read(1_000_000))
    with pytest.raises(CheckpointError, match=r"cut.gguf: not a readable GGUF file"):
        load_gguf(path)


def test_corrupt_gguf_magic(tmp_path, smollm2_gguf):
    path = tmp_path / "bad.gguf"
    with open(smollm2_gguf, "rb") as src:
        path.write_bytes(b"XXXX" + src.read(4096)[4:])
    with pytest.raises(CheckpointError, match=r"bad.gguf: not a readable GGUF file"):
        load_gguf(path)


def test_gguf_loader_matches_gguf_dequantize_and_unpermutes_q(smollm2_gguf, smollm2):
    """Q rows come back in HF order: re-applying llama.cpp's permutation gives the file's rows."""
    import gguf

    config, params, _ = smollm2
    reader = gguf.GGUFReader(str(smollm2_gguf))
    tensor = next(t for t in reader.tensors if t.name == "blk.0.attn_q.weight")
    file_rows = gguf.quants.dequantize(tensor.data, tensor.tensor_type).reshape(576, 576)
    ours = np.asarray(params["layers_0"]["attn"]["q_proj"]["kernel"]).T  # (out, in) HF order
    n = config.num_heads
    repermuted = ours.reshape(n, 2, ours.shape[0] // n // 2, -1).swapaxes(1, 2).reshape(ours.shape)
    np.testing.assert_array_equal(repermuted, file_rows)
    assert not np.array_equal(ours, file_rows)
