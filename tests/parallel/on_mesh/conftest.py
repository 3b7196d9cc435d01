"""Fixtures of the 8-device tests: a tiny random Llama written as a sharded bf16 HF checkpoint."""

from __future__ import annotations

from pathlib import Path

import jax
import numpy as np
import pytest

TINY = dict(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=256, tie_word_embeddings=False)


HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(items):
    if jax.device_count() < 8:  # only this folder's tests (the hook sees the whole session's items)
        skip = pytest.mark.skip(reason=f"needs 8 devices, found {jax.device_count()}")
        for item in items:
            if HERE in Path(str(item.fspath)).resolve().parents:
                item.add_marker(skip)


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    """A tiny LlamaForCausalLM saved in bfloat16 over several safetensors shards (with an index)."""
    import torch
    import transformers

    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**TINY)).to(torch.bfloat16)
    with torch.no_grad():  # larger than the 0.02 init, so the logits differ visibly between tokens
        for p in model.parameters():
            if p.ndim == 2:
                p.mul_(5)
    path = tmp_path_factory.mktemp("tiny") / "ckpt"
    model.save_pretrained(path, max_shard_size="100KB", safe_serialization=True)
    assert (path / "model.safetensors.index.json").is_file()
    return path


@pytest.fixture(scope="session")
def tiny(tiny_dir):
    """(config, float32 params on the default device)."""
    from qjax.checkpoints.mesh_loader import load_hf_dir_on_mesh

    return load_hf_dir_on_mesh(tiny_dir, None, dtype="float32")


@pytest.fixture(scope="session")
def mesh42():
    from qjax.parallel import make_mesh

    return make_mesh("data:4,model:2")


def random_tokens(shape, vocab, seed=0):
    return np.random.default_rng(seed).integers(0, vocab, size=shape).astype(np.int32)
