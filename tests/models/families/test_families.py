"""Every family against transformers on tiny random checkpoints: logits (float32, within 1e-4),
greedy decoding with the KV cache against `generate`, and the reader's errors for bad tensors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file, save_file

from qjax.checkpoints import CheckpointError, load_model
from qjax.eval.generate import generate_ids
from qjax.models import forward

from family_tiny import FAMILIES, VOCAB, save_family

# default suite: sliding + soft-capping + sandwich, ALiBi + fused per-head qkv, MoE, LongRoPE past its
# switch; the rest under -m slow
FAST_GENERATE = ("gemma2", "bloom", "mixtral", "phi3_longrope")


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    cache = {}

    def get(name):
        if name not in cache:
            directory = tmp_path_factory.mktemp(name)
            cache[name] = (directory, save_family(name, directory))
        return cache[name]

    return get


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_logits_match_transformers(saved, name):
    directory, model = saved(name)
    config, params, _ = load_model(str(directory))
    tokens = np.random.default_rng(0).integers(0, VOCAB, size=(2, 12)).astype(np.int32)
    with torch.no_grad():
        expected = model(torch.from_numpy(tokens).long()).logits.numpy()
    logits, _ = forward(params, tokens, config)
    np.testing.assert_allclose(np.asarray(logits), expected, atol=1e-4, rtol=0)


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n not in FAST_GENERATE else n
                                  for n in sorted(FAMILIES)])
def test_greedy_decoding_matches_generate(saved, name):
    directory, model = saved(name)
    config, params, _ = load_model(str(directory))
    prompts = [[5, 17, 3, 99, 42, 8, 61], [7, 7, 120, 1]]
    got = generate_ids(params, config, prompts, max_new_tokens=10, batch_size=2, prefill_chunk=16)
    model.generation_config.eos_token_id = None
    for prompt, out in zip(prompts, got):
        with torch.no_grad():
            ref = model.generate(torch.tensor([prompt]), max_new_tokens=10, do_sample=False, pad_token_id=0)
        assert out == ref[0, len(prompt):].tolist(), name


def _tensor_of(tensors: dict, *fragments: str) -> str:
    return next(k for k in sorted(tensors) if all(f in k for f in fragments) and "layers.1" not in k)


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_reader_errors_name_the_tensor(saved, tmp_path, name):
    directory, _ = saved(name)
    tensors = load_file(str(directory / "model.safetensors"))
    victim = _tensor_of(tensors, ".0.", "weight")  # a weight of the first block
    broken = tmp_path / "missing"
    broken.mkdir()
    (broken / "config.json").write_bytes((directory / "config.json").read_bytes())
    save_file({k: v for k, v in tensors.items() if k != victim}, str(broken / "model.safetensors"))
    with pytest.raises(CheckpointError, match=rf"is missing \(checkpoint tensor (.* or )?{victim}( or .*)?\)"):
        load_model(str(broken))
    save_file({**tensors, victim: np.concatenate([tensors[victim], tensors[victim]])},
              str(broken / "model.safetensors"))
    with pytest.raises(CheckpointError, match=rf"has shape .* but the config implies .*{victim}|{victim} has shape"):
        load_model(str(broken))
