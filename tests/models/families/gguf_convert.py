"""A saved tiny HF checkpoint -> a GGUF file, written the way llama.cpp's convert_hf_to_gguf.py
writes each architecture (independently of qjax's reader: tensor names from llama.cpp's own map in
the `gguf` package, `gguf.get_tensor_name_map`; the converter's transforms written out here).

Transforms per architecture (as the converter does them):
  llama (Llama, Mixtral): Q/K rows permuted for the interleaved RoPE; experts stacked (E, out, in);
  gemma*: every `*norm.weight` + 1, lm_head dropped (tied);
  gptneox, bloom: fused qkv rows per head [q, k, v] -> [all q | all k | all v]; bloom: output.weight
    copied from the embedding when the head is tied;
  falcon: fused qkv rows per KV group [q_0 .. q_{g-1}, k, v] -> [all q | all k | all v];
  qwen2moe / qwen3moe / olmoe: experts stacked (E, out, in);
  mamba: A = -exp(A_log), conv1d (C, 1, k) -> (C, k), lm_head dropped when equal to the embedding;
  stablelm: per-head q/k LayerNorms stacked (heads, head_dim);
  llama with llama3 RoPE scaling: the per-frequency divisors as tensor rope_freqs;
  phi3 LongRoPE: factors as tensors rope_factors_{long,short}, attn factor and original context as metadata.
Quantized files keep norms, MoE routers and rows that are no whole number of blocks in F32.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import gguf
import numpy as np
from safetensors.numpy import load_file

ARCH = {"LlamaForCausalLM": "llama", "MixtralForCausalLM": "llama", "Qwen3ForCausalLM": "qwen3",
        "GemmaForCausalLM": "gemma", "Gemma2ForCausalLM": "gemma2", "Gemma3ForCausalLM": "gemma3",
        "Phi3ForCausalLM": "phi3", "StableLmForCausalLM": "stablelm", "GPTNeoXForCausalLM": "gptneox",
        "FalconForCausalLM": "falcon", "BloomForCausalLM": "bloom", "Qwen2MoeForCausalLM": "qwen2moe",
        "Qwen3MoeForCausalLM": "qwen3moe", "OlmoeForCausalLM": "olmoe", "MambaForCausalLM": "mamba"}
_ARCH_ENUM = {name: arch for arch, name in gguf.MODEL_ARCH_NAMES.items()}


def _rope(cfg) -> dict:
    params = dict(cfg.rope_parameters or {}) if hasattr(cfg, "rope_parameters") else {}
    return params.get("full_attention", params)


def _permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """The converter's Q/K permutation (HF rotate-half rows -> llama.cpp's interleaved pairs)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _qkv_to_blocks(w: np.ndarray, kv_heads: int, group: int, head_dim: int) -> np.ndarray:
    """Rows per KV head [q_0 .. q_{group-1}, k, v] -> [all q | all k | all v]."""
    rest = w.shape[1:]
    w = w.reshape(kv_heads, group + 2, head_dim, *rest)
    return np.concatenate([w[:, :group].reshape(-1, *rest), w[:, group].reshape(-1, *rest),
                           w[:, group + 1].reshape(-1, *rest)])


def _metadata(writer: gguf.GGUFWriter, arch: str, cfg, raw: dict) -> None:
    w = writer
    if arch == "mamba":
        w.add_context_length(2 ** 20)
        w.add_embedding_length(cfg.hidden_size)
        w.add_feed_forward_length(0)
        w.add_head_count(0)
        w.add_block_count(cfg.num_hidden_layers)
        w.add_ssm_conv_kernel(cfg.conv_kernel)
        w.add_ssm_inner_size(cfg.intermediate_size)
        w.add_ssm_state_size(cfg.state_size)
        w.add_ssm_time_step_rank(cfg.time_step_rank)
        w.add_layer_norm_rms_eps(cfg.layer_norm_epsilon)
        w.add_ssm_dt_b_c_rms(False)
        return
    hidden, heads = cfg.hidden_size, cfg.num_attention_heads
    kv = getattr(cfg, "num_key_value_heads", None) or heads
    if arch == "falcon":
        kv = cfg.num_kv_heads if cfg.new_decoder_architecture else (1 if cfg.multi_query else heads)
    head_dim = getattr(cfg, "head_dim", None) or hidden // heads
    rope = _rope(cfg)
    w.add_context_length(getattr(cfg, "max_position_embeddings", 2048))
    w.add_embedding_length(hidden)
    w.add_block_count(cfg.num_hidden_layers)
    ff = getattr(cfg, "ffn_hidden_size", None) or getattr(cfg, "intermediate_size", None) or 4 * hidden
    w.add_feed_forward_length(ff)
    w.add_head_count(heads)
    w.add_head_count_kv(kv)
    if "rope_theta" in rope:
        w.add_rope_freq_base(rope["rope_theta"])
    if arch in ("stablelm", "gptneox", "falcon", "bloom"):
        w.add_layer_norm_eps(getattr(cfg, "layer_norm_eps", None) or cfg.layer_norm_epsilon)
    else:
        w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    if getattr(cfg, "head_dim", None):
        w.add_key_length(head_dim)
        w.add_value_length(head_dim)
    partial = rope.get("partial_rotary_factor", 1.0)
    if arch in ("llama", "phi3", "stablelm", "gptneox"):
        w.add_rope_dimension_count(int(partial * head_dim))
    if rope.get("rope_type") == "linear":
        w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        w.add_rope_scaling_factor(rope["factor"])
    if arch in ("stablelm", "gptneox"):
        w.add_parallel_residual(bool(cfg.use_parallel_residual))
    experts = getattr(cfg, "num_local_experts", None) or getattr(cfg, "num_experts", None)
    if experts:
        w.add_expert_count(experts)
        w.add_expert_used_count(cfg.num_experts_per_tok)
    if arch in ("qwen2moe", "qwen3moe"):
        w.add_expert_feed_forward_length(cfg.moe_intermediate_size)
        if getattr(cfg, "shared_expert_intermediate_size", None):
            w.add_expert_shared_feed_forward_length(cfg.shared_expert_intermediate_size)
    if arch == "olmoe" and cfg.clip_qkv is not None:
        w.add_clamp_kqv(cfg.clip_qkv)
    if arch == "gemma2":
        w.add_attn_logit_softcapping(cfg.attn_logit_softcapping)
        w.add_final_logit_softcapping(cfg.final_logit_softcapping)
        w.add_sliding_window(cfg.sliding_window)
    if arch == "gemma3":
        if cfg.final_logit_softcapping:
            w.add_final_logit_softcapping(cfg.final_logit_softcapping)
        w.add_sliding_window(cfg.sliding_window)
    if arch == "phi3" and cfg.sliding_window:
        w.add_sliding_window(cfg.sliding_window)
    if arch == "phi3" and rope.get("rope_type") == "longrope":
        original = rope.get("original_max_position_embeddings") or cfg.original_max_position_embeddings
        scale = cfg.max_position_embeddings / original
        w.add_rope_scaling_attn_factors(math.sqrt(1 + math.log(scale) / math.log(original)) if scale > 1 else 1.0)
        w.add_rope_scaling_orig_ctx_len(original)


def _tensors(arch: str, cfg, tensors: dict[str, np.ndarray]):
    """(HF-side name, array) pairs after the converter's transforms, in file order."""
    heads = getattr(cfg, "num_attention_heads", 0)
    kv = getattr(cfg, "num_key_value_heads", None) or heads
    stacked: dict = {}
    for name in tensors:
        w = tensors[name]
        if arch.startswith("gemma"):
            if name == "lm_head.weight":
                continue
            if name.endswith("norm.weight"):
                w = w + np.float32(1.0)
        if arch == "llama" and name.endswith(("q_proj.weight", "q_proj.bias")):
            w = _permute(w, heads)
        if arch == "llama" and name.endswith(("k_proj.weight", "k_proj.bias")):
            w = _permute(w, kv)
        if arch in ("gptneox", "bloom") and "query_key_value" in name:
            w = _qkv_to_blocks(w, heads, 1, cfg.hidden_size // heads)
        if arch == "falcon" and "query_key_value" in name:
            fkv = cfg.num_kv_heads if cfg.new_decoder_architecture else (1 if cfg.multi_query else heads)
            w = _qkv_to_blocks(w, fkv, heads // fkv, cfg.hidden_size // heads)
        if arch == "mamba":
            if name.endswith("A_log"):
                w = -np.exp(w)
            if name.endswith("conv1d.weight"):
                w = w.squeeze()
            if name == "lm_head.weight" and np.array_equal(w, tensors["backbone.embeddings.weight"]):
                continue
        parts = name.split(".")
        group = next((i for i, p in enumerate(parts[:-1])
                      if p in ("experts", "norms") and parts[i + 1].isdigit()), None)
        if group is not None:  # experts (MoE) and per-head norms (StableLM 2) stacked per layer and kind
            key = ".".join(parts[:group] + parts[group + 2:]) if parts[group] == "norms" else ".".join(
                parts[:group + 1] + parts[group + 2:])
            count = ((heads if "q_layernorm" in name else kv) if parts[group] == "norms"
                     else getattr(cfg, "num_local_experts", None) or cfg.num_experts)
            stacked.setdefault(key, {})[int(parts[group + 1])] = w
            if len(stacked[key]) == count:
                yield key, np.stack([stacked[key][i] for i in range(count)])
            continue
        yield name, w
    if arch == "bloom" and "lm_head.weight" not in tensors:
        yield "lm_head.weight", tensors["transformer.word_embeddings.weight"]
    rope = _rope(cfg)
    if arch == "llama" and rope.get("rope_type") == "llama3":  # per-frequency divisors, as the converter computes them
        dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
        freqs = 1.0 / (np.float32(rope["rope_theta"]) ** (np.arange(0, dim, 2, dtype=np.float32) / np.float32(dim)))
        old_len = rope["original_max_position_embeddings"]
        low_wavelen, high_wavelen = old_len / rope["low_freq_factor"], old_len / rope["high_freq_factor"]
        divisors = []
        for freq in freqs:
            wavelen = 2 * math.pi / freq
            if wavelen < high_wavelen:
                divisors.append(1.0)
            elif wavelen > low_wavelen:
                divisors.append(rope["factor"])
            else:
                smooth = ((old_len / wavelen - rope["low_freq_factor"])
                          / (rope["high_freq_factor"] - rope["low_freq_factor"]))
                divisors.append(1 / ((1 - smooth) / rope["factor"] + smooth))
        yield "rope_freqs", np.asarray(divisors, np.float32)
    if arch == "phi3" and rope.get("rope_type") == "longrope":
        yield "rope_factors_long", np.asarray(rope["long_factor"], np.float32)
        yield "rope_factors_short", np.asarray(rope["short_factor"], np.float32)


def convert(directory, out_path, *, cfg, qtype: gguf.GGMLQuantizationType = gguf.GGMLQuantizationType.F32,
            drop: tuple = (), squeeze: bool = False, per_expert: bool = False) -> Path:
    """Writes `directory`'s checkpoint (HF config object `cfg`) as a GGUF file at `out_path`;
    2-D and 3-D weights as `qtype` (norms, biases and 1-D tensors stay F32, as the converter keeps
    them); GGUF tensors named in `drop` are left out; `squeeze`: size-1 dims dropped, as older
    converters wrote every tensor; `per_expert`: one tensor per expert `blk.{i}.ffn_{gate,up,down}.{e}`, as
    llama.cpp wrote Mixtral before stacking them (April 2024)."""
    directory, out_path = Path(directory), Path(out_path)
    raw = json.loads((directory / "config.json").read_text())
    arch = ARCH[raw["architectures"][0]]
    tensors = load_file(str(directory / "model.safetensors"))
    names = gguf.get_tensor_name_map(_ARCH_ENUM[arch], cfg.num_hidden_layers)
    writer = gguf.GGUFWriter(str(out_path), arch)
    _metadata(writer, arch, cfg, raw)
    writer.add_file_type({gguf.GGMLQuantizationType.F32: gguf.LlamaFileType.ALL_F32,
                          gguf.GGMLQuantizationType.Q8_0: gguf.LlamaFileType.MOSTLY_Q8_0,
                          gguf.GGMLQuantizationType.Q4_0: gguf.LlamaFileType.MOSTLY_Q4_0}[qtype])
    for hf_name, w in _tensors(arch, cfg, tensors):
        if per_expert and ".experts." in hf_name:
            kind = {"w1": "gate", "w3": "up", "w2": "down"}[hf_name.split(".")[-2]]
            layer = hf_name.split(".")[2]
            for e, we in enumerate(w):
                writer.add_tensor(f"blk.{layer}.ffn_{kind}.{e}.weight", np.ascontiguousarray(we, np.float32))
            continue
        if arch == "bloom":  # the converter drops BLOOM's "transformer." prefix before mapping names
            hf_name = hf_name.removeprefix("transformer.")
        name = hf_name + ".weight" if hf_name.startswith("rope_") else names.get_name(
            hf_name, try_suffixes=(".weight", ".bias"))
        assert name is not None, f"llama.cpp's tensor map has no name for {hf_name}"
        if name in drop:
            continue
        w = np.ascontiguousarray(w.squeeze() if squeeze else w, np.float32)
        block = gguf.GGML_QUANT_SIZES[qtype][0]
        if (qtype != gguf.GGMLQuantizationType.F32 and w.ndim >= 2 and w.shape[-1] % block == 0
                and not name.endswith(("_norm.weight", "_inp.weight"))):  # else F32, as llama.cpp falls back
            writer.add_tensor(name, gguf.quants.quantize(w, qtype), raw_dtype=qtype)
        else:
            writer.add_tensor(name, w)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return out_path
