"""GGUF files of every family llama.cpp defines, written as llama.cpp's converter writes them
(`gguf_convert`), read by qjax: logits equal transformers' (float32) on the original HF weights
within 1e-4 (F32 files); a Q8_0 file equals transformers reading the same GGUF; the reader rebuilds
the HF tensors exactly; bad files get one error naming the problem. OPT has no llama.cpp
architecture and so no GGUF form."""

from __future__ import annotations

import dataclasses

import gguf
import jax
import numpy as np
import pytest
import torch
from safetensors.numpy import load_file

from qjax.checkpoints import CheckpointError, load_gguf, load_hf_dir
from qjax.checkpoints.gguf_reader import hf_checkpoint
from qjax.models import forward

from family_tiny import VOCAB, save_family
from gguf_convert import convert

# family_tiny name -> config overrides where llama.cpp fixes what GGUF does not store: Gemma 2/3 scale
# queries by 1/sqrt(head_dim) (27B: hidden/heads) and put a global layer every 2nd / 6th layer;
# llama.cpp's Falcon has no linear biases.
GGUF_FAMILIES = {
    "mixtral": {}, "qwen3": {}, "gemma": {}, "gemma2": dict(query_pre_attn_scalar=16),
    "gemma3": dict(query_pre_attn_scalar=16, num_hidden_layers=6, layer_types=None), "phi3": {}, "stablelm": {},
    "gpt_neox": {}, "falcon": {}, "falcon_new": dict(bias=False), "bloom": {}, "qwen2_moe": {}, "qwen3_moe": {},
    "olmoe": {}, "mamba": {}, "stablelm_qk_parallel": {}, "phi3_longrope": {},
}
# Llama 3.1's RoPE scaling on the llama-architecture MoE: high-, in-between and low-frequency dims (wavelengths
# 6 and 21 | 63 and 199 | 628 .. 19869 for head_dim 16, theta 1e4), written as llama.cpp's rope_freqs tensor
LLAMA3_ROPE = {"rope_type": "llama3", "rope_theta": 10000.0, "factor": 4.0, "low_freq_factor": 1.0,
               "high_freq_factor": 8.0, "original_max_position_embeddings": 256}
# default suite: each of the converter's transforms once (Q/K permutation + stacked experts, the
# Gemma norm shift + soft-capping + sliding layers, per-head and grouped fused qkv + ALiBi, shared
# experts, Mamba's A and conv, stacked per-head q/k norms, LongRoPE factor tensors); the rest under -m slow
FAST = ("mixtral", "gemma2", "bloom", "falcon_new", "qwen2_moe", "mamba", "stablelm_qk_parallel", "phi3_longrope")


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    cache = {}

    def get(name):
        if name not in cache:
            directory = tmp_path_factory.mktemp(name)
            model = save_family(name, directory, **GGUF_FAMILIES[name])
            path = convert(directory, directory / "model.gguf", cfg=model.config)
            cache[name] = (directory, model, path)
        return cache[name]

    return get


def _tokens():
    return np.random.default_rng(0).integers(0, VOCAB, size=(2, 12)).astype(np.int32)


@pytest.mark.parametrize("name", [n if n in FAST else pytest.param(n, marks=pytest.mark.slow)
                                  for n in sorted(GGUF_FAMILIES)])
def test_gguf_logits_match_transformers(converted, name):
    directory, model, path = converted(name)
    config, params = load_gguf(path)
    tokens = _tokens() if name != "phi3_longrope" else np.tile(_tokens(), 2)  # 24 tokens: LongRoPE's long factors
    with torch.no_grad():
        expected = model(torch.from_numpy(tokens).long()).logits.numpy()
    logits, _ = forward(params, tokens, config)
    np.testing.assert_allclose(np.asarray(logits), expected, atol=1e-4, rtol=0)


@pytest.mark.parametrize("name", [n if n in FAST else pytest.param(n, marks=pytest.mark.slow)
                                  for n in sorted(GGUF_FAMILIES)])
def test_gguf_rebuilds_the_hf_tensors(converted, name):
    """Every converter transform undone: the HF tensors read back from the GGUF equal the saved
    safetensors (to float32 rounding of Gemma's norm + 1 and Mamba's -exp), and the params equal
    those the HF reader makes of the saved directory (the same layout, the same values)."""
    directory, _, path = converted(name)
    _, tensors = hf_checkpoint(path)
    original = load_file(str(directory / "model.safetensors"))
    tied_copies = set(tensors) - set(original)  # BLOOM's converter writes the tied head out
    assert tied_copies <= {"lm_head.weight"} and set(original) <= set(tensors)
    for key, value in original.items():
        np.testing.assert_allclose(tensors[key], value, rtol=1e-6, atol=1e-6, err_msg=key)
    hf_config, hf_params = load_hf_dir(directory)
    config, params = load_gguf(path)
    if tied_copies:  # the GGUF holds the head the HF checkpoint ties to the embedding
        assert hf_config.tie_word_embeddings and not config.tie_word_embeddings
        np.testing.assert_array_equal(params.pop("lm_head")["kernel"], np.asarray(hf_params["embed"]["embedding"]).T)
        config = dataclasses.replace(config, tie_word_embeddings=True)
    if getattr(config, "rope_scaling", None) and hf_config.rope_scaling:  # LongRoPE's attn factor: float32
        assert config.rope_scaling.attention_factor == pytest.approx(hf_config.rope_scaling.attention_factor, rel=1e-6)
        config = dataclasses.replace(config, rope_scaling=dataclasses.replace(
            config.rope_scaling, attention_factor=hf_config.rope_scaling.attention_factor))
    # the same config but for what this GGUF does not carry (token ids: no tokenizer written; Mamba's
    # context: the converter writes 2**20) or carries as float32 (eps)
    differ = {f.name for f in dataclasses.fields(config) if getattr(config, f.name) != getattr(hf_config, f.name)}
    assert differ <= {"bos_token_id", "eos_token_id", "max_position_embeddings", "rms_norm_eps"}, differ
    assert config.rms_norm_eps == pytest.approx(hf_config.rms_norm_eps, rel=1e-6)
    flat, hf_flat = (dict(jax.tree_util.tree_leaves_with_path(p)) for p in (params, hf_params))
    assert flat.keys() == hf_flat.keys()
    for key, value in hf_flat.items():
        np.testing.assert_allclose(flat[key], value, rtol=1e-6, atol=1e-6, err_msg=jax.tree_util.keystr(key))


@pytest.mark.parametrize("name, qtype", [("qwen3", gguf.GGMLQuantizationType.Q8_0),
                                         ("qwen3_moe", gguf.GGMLQuantizationType.Q4_0)])
def test_quantized_gguf_matches_transformers_reading_it(converted, tmp_path, name, qtype):
    """Q8_0 / Q4_0 weights (every 2-D and stacked-expert weight whose rows are whole blocks): qjax
    equals transformers + torch loading the same GGUF file (their own GGUF reader) within 1e-4, and
    differs from the float model."""
    from transformers import AutoModelForCausalLM

    directory, model, _ = converted(name)
    path = convert(directory, tmp_path / "quantized.gguf", cfg=model.config, qtype=qtype)
    types = {t.name: t.tensor_type for t in gguf.GGUFReader(str(path)).tensors}
    assert types["blk.0.attn_q.weight"] == qtype
    config, params = load_gguf(path)
    # transformers' GGUF reader does not map key_length to head_dim: the config comes from the
    # original model, every weight from the file (dequantized and renamed by transformers' own code)
    reference = AutoModelForCausalLM.from_pretrained(str(tmp_path), gguf_file=path.name, config=model.config,
                                                     dtype=torch.float32).eval()
    tokens = _tokens()
    with torch.no_grad():
        expected = reference(torch.from_numpy(tokens).long()).logits.numpy()
        float_logits = model(torch.from_numpy(tokens).long()).logits.numpy()
    logits = np.asarray(forward(params, tokens, config)[0])
    np.testing.assert_allclose(logits, expected, atol=1e-4, rtol=0)
    assert 1e-4 < np.abs(logits - float_logits).max() < 0.5


def test_older_converters_squeezed_tensors(converted, tmp_path):
    """Files from converters that squeezed every tensor (Qwen2-MoE's shared-expert gate as (hidden,))."""
    directory, model, _ = converted("qwen2_moe")
    path = convert(directory, tmp_path / "squeezed.gguf", cfg=model.config, squeeze=True)
    assert {t.name: len(t.shape) for t in gguf.GGUFReader(str(path)).tensors}["blk.0.ffn_gate_inp_shexp.weight"] == 1
    config, params = load_gguf(path)
    tokens = _tokens()
    with torch.no_grad():
        expected = model(torch.from_numpy(tokens).long()).logits.numpy()
    np.testing.assert_allclose(np.asarray(forward(params, tokens, config)[0]), expected, atol=1e-4, rtol=0)


def test_mixtral_with_one_tensor_per_expert(converted, tmp_path):
    """Mixtral GGUFs from before April 2024 hold blk.{i}.ffn_{gate,up,down}.{e}.weight, one per expert."""
    directory, model, _ = converted("mixtral")
    path = convert(directory, tmp_path / "per_expert.gguf", cfg=model.config, per_expert=True)
    names = {t.name for t in gguf.GGUFReader(str(path)).tensors}
    assert "blk.0.ffn_up.3.weight" in names and "blk.0.ffn_up_exps.weight" not in names
    config, params = load_gguf(path)
    tokens = _tokens()
    with torch.no_grad():
        expected = model(torch.from_numpy(tokens).long()).logits.numpy()
    np.testing.assert_allclose(np.asarray(forward(params, tokens, config)[0]), expected, atol=1e-4, rtol=0)


def test_llama3_rope_freqs(tmp_path):
    """A Llama-3.1-style file (rope_freqs divisors) reads back as llama3 RoPE scaling: logits equal
    transformers', and the recovered scaling gives the file's divisors."""
    model = save_family("mixtral", tmp_path, rope_parameters=LLAMA3_ROPE)
    path = convert(tmp_path, tmp_path / "llama3.gguf", cfg=model.config)
    assert "rope_freqs.weight" in {t.name for t in gguf.GGUFReader(str(path)).tensors}
    config, params = load_gguf(path)
    assert config.rope_scaling.rope_type == "llama3" and config.rope_scaling.factor == 4.0
    tokens = _tokens()
    with torch.no_grad():
        expected = model(torch.from_numpy(tokens).long()).logits.numpy()
    np.testing.assert_allclose(np.asarray(forward(params, tokens, config)[0]), expected, atol=1e-4, rtol=0)


@pytest.mark.parametrize("theta, factor, low, high, original, in_between", [
    (5e5, 8.0, 1.0, 4.0, 8192, 6),    # Llama 3.1 8B's (head_dim 128)
    (1e4, 4.0, 1.0, 4.0, 1000, 1),
    (1e4, 2.0, 1.0, 1.0001, 300, 0),  # the zones meet
])
def test_llama3_scaling_recovered_from_divisors(theta, factor, low, high, original, in_between):
    """llama3_scaling finds a rope_scaling whose frequencies are the divisors' (transformers' rule as reference)."""
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS
    from transformers import LlamaConfig

    from qjax.checkpoints.gguf_families import llama3_scaling

    dim = 128 if theta == 5e5 else 16
    def inv_freq(params):
        cfg = LlamaConfig(hidden_size=dim * 4, num_attention_heads=4, head_dim=dim, rope_parameters=params)
        return ROPE_INIT_FUNCTIONS["llama3"](cfg, "cpu")[0].double().numpy()

    plain = 1.0 / theta ** (np.arange(0, dim, 2, dtype=np.float64) / dim)
    wavelen = 2 * np.pi / plain
    assert ((wavelen >= original / high) & (wavelen <= original / low)).sum() == in_between
    truth = {"rope_type": "llama3", "rope_theta": theta, "factor": factor, "low_freq_factor": low,
             "high_freq_factor": high, "original_max_position_embeddings": original}
    divisors = (plain / inv_freq(truth)).astype(np.float32)
    recovered = llama3_scaling(divisors, theta, dim, "test")
    np.testing.assert_allclose(plain / inv_freq({**recovered, "rope_theta": theta}), divisors, rtol=1e-5)


def test_unknown_architecture_is_named(tmp_path):
    path = tmp_path / "opt.gguf"
    writer = gguf.GGUFWriter(str(path), "opt")
    writer.add_block_count(1)
    writer.add_tensor("token_embd.weight", np.zeros((8, 4), np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(CheckpointError, match=r"opt.gguf: unknown GGUF architecture 'opt' \(OPT has no llama.cpp"):
        load_gguf(path)


@pytest.mark.parametrize("name, victim", [("gemma2", "blk.0.attn_k.weight"),
                                          ("mixtral", "blk.1.ffn_down_exps.weight"),
                                          ("bloom", "blk.0.attn_qkv.bias")])
def test_missing_tensor_is_named(converted, tmp_path, name, victim):
    directory, model, _ = converted(name)
    path = convert(directory, tmp_path / "broken.gguf", cfg=model.config, drop=(victim,))
    with pytest.raises(CheckpointError, match=rf"broken.gguf: tensor for layers_\d/\S+ is missing "
                                              rf"\(checkpoint tensor {victim.replace('.', '[.]')}(\[0\])?( or \S+)?\)"):
        load_gguf(path)


@pytest.mark.parametrize("extra, message", [
    ("blk.0.attn_q_norm.weight", "is not used by the MixtralForCausalLM model its metadata describes"),
    ("blk.0.ffn_extra.weight", "is not part of the llama layout"),
    ("rope_freqs.weight", r"has 64 entries, the rotary dim 16 needs 8")])
def test_foreign_tensor_is_named(converted, tmp_path, extra, message):
    """A tensor the reader would not use (a q-norm in a model without q/k norms, an unknown name,
    RoPE factors it does not apply) is an error naming it, not silently ignored."""
    directory, model, path = converted("mixtral")
    reader = gguf.GGUFReader(str(path))
    out = tmp_path / "extra.gguf"
    writer = gguf.GGUFWriter(str(out), "llama")
    for key in ("llama.block_count", "llama.embedding_length", "llama.feed_forward_length",
                "llama.attention.head_count", "llama.attention.head_count_kv", "llama.expert_count",
                "llama.expert_used_count"):
        writer.add_uint32(key, int(reader.fields[key].contents()))
    writer.add_float32("llama.attention.layer_norm_rms_epsilon", 1e-5)
    for tensor in reader.tensors:
        writer.add_tensor(tensor.name, np.asarray(tensor.data).reshape(tuple(reversed(tensor.shape.tolist()))))
    writer.add_tensor(extra, np.ones(64, np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(CheckpointError, match=rf"extra.gguf: tensor {extra} {message}"):
        load_gguf(out)
