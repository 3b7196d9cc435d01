"""What llama.cpp's converter (convert_hf_to_gguf.py) does to each family, undone: GGUF metadata ->
the Hugging Face config.json fields, GGUF tensors -> the HF tensors they were made from.

A GGUF file is read as the HF checkpoint it was converted from, and that checkpoint is then read the
HF way (`hf_families`), so a family's parts and tensor layout are declared once. Per architecture
(`general.architecture`) a `GGUFArch` holds:

  hf_config(meta) -> config.json fields (with `architectures`, the key of `hf_families.FAMILIES`);
  top / layer: (GGUF name, HF name) pairs; layer names follow `blk.{i}.` and the HF layer prefix;
    `{e}` in an HF name marks a stacked expert tensor (GGUF (n_expert, out, in)) that is split into
    one HF tensor per expert;
  undo(hf_name, array, meta) -> the array as HF stored it;
  config_tensors: tensors that hold configuration (Llama 3's rope_freqs, Phi-3's LongRoPE factors),
    read into the config by hf_config (`Meta.read`), not into params;
  per_expert: (GGUF, HF) layer names with `{e}` for files with one tensor per expert.

The converter's transforms undone here:
  llama (Llama, Mistral, Mixtral): Q/K rows permuted for llama.cpp's interleaved RoPE;
  gemma, gemma2, gemma3: every `*norm.weight` stored as 1 + w (Gemma's RMSNorm scales by 1 + w);
  gptneox, bloom: the fused qkv rows (per head [q, k, v]) regrouped to [all q | all k | all v];
  falcon: the same for its grouped layout (per KV head [q_0 .. q_{g-1}, k, v]);
  mamba: A_log stored as A = -exp(A_log); the depthwise conv (C, 1, k) squeezed to (C, k);
  MoE (Mixtral, Qwen2/3-MoE, OLMoE): per-expert weights stacked as ffn_{gate,up,down}_exps (Mixtral
    files from before April 2024: one tensor per expert, ffn_{gate,up,down}.{e});
  stablelm: StableLM 2's per-head q/k LayerNorms stacked as attn_{q,k}_norm (heads, head_dim);
  llama: Llama 3's RoPE scaling written as per-frequency divisors, tensor rope_freqs (the llama3
    rope_scaling that gives them is recovered, `llama3_scaling`);
  phi3: LongRoPE's factors written as tensors rope_factors_{long,short} (read back into the config,
    and then applied as transformers does: the long factors for sequences past the original context;
    llama.cpp picks them by its context size instead).
What GGUF does not store comes from llama.cpp's own rules for the architecture: the Gemma 2/3
query scale (1/sqrt(head_dim), 1/sqrt(hidden/heads) for the 27B sizes), their sliding-window layer
patterns (every 2nd / 6th layer global), Gemma 3's local RoPE base (10000, unscaled), the MoE
renormalisation of the top-k weights (llama (Mixtral) and qwen3moe: yes; qwen2moe and olmoe: no).
GPT-NeoX's and Falcon's MLPs use the exact GELU of their HF configs (llama.cpp computes the tanh
approximation). A tied LM head is a file without `output.weight`.

OPT has no llama.cpp architecture, so there is no GGUF form of it to read.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional

import numpy as np

from qjax.checkpoints.errors import CheckpointError


@dataclasses.dataclass(frozen=True)
class Meta:
    """A GGUF file's metadata (key -> value), its tensor names and shapes ((out, in) order), its path,
    and `read`: tensor name -> float32 values, for the tensors that are configuration."""

    arch: str
    fields: dict
    shapes: dict
    source: str
    read: Optional[Callable[[str], np.ndarray]] = None

    def get(self, key: str, default: Any = None) -> Any:
        """`{arch}.{key}` (or `key` itself when it starts with `general.` / `tokenizer.`)."""
        full = key if key.startswith(("general.", "tokenizer.")) else f"{self.arch}.{key}"
        value = self.fields.get(full)
        return default if value is None else value

    def need(self, key: str) -> Any:
        value = self.get(key)
        if value is None:
            raise CheckpointError(f"{self.source}: GGUF metadata {self.arch}.{key} is missing")
        return value

    def has(self, name: str) -> bool:
        return name in self.shapes

    @property
    def num_layers(self) -> int:
        return int(self.need("block_count"))

    @property
    def vocab_size(self) -> int:
        if "token_embd.weight" not in self.shapes:
            raise CheckpointError(f"{self.source}: tensor token_embd.weight is missing")
        return int(self.shapes["token_embd.weight"][0])

    def eps(self) -> float:
        value = self.get("attention.layer_norm_rms_epsilon", self.get("attention.layer_norm_epsilon"))
        if value is None:
            raise CheckpointError(f"{self.source}: GGUF metadata {self.arch}.attention.layer_norm_rms_epsilon "
                                  f"(or layer_norm_epsilon) is missing")
        return float(value)


# ------------------------------------------------------------------------------------------------
# Inverse tensor transforms

def unpermute_rope_rows(w: np.ndarray, n_head: int) -> np.ndarray:
    """Undoes llama.cpp's convert-time permutation of Q/K rows (interleaved -> HF rotate-half).

    w: (n_head * head_dim, ...) rows in torch (out, in) layout (a bias: (n_head * head_dim,)).
    """
    rows = w.shape[0]
    return w.reshape(n_head, rows // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def qkv_rows_to_grouped(w: np.ndarray, kv_heads: int, group: int, head_dim: int) -> np.ndarray:
    """Rows [all q | all k | all v] -> per KV head [q_0 .. q_{group-1}, k, v] (each head_dim rows):
    the inverse of `hf_families.grouped_qkv_rows` (GPT-NeoX and BLOOM: group 1, kv_heads = heads)."""
    rest = w.shape[1:]
    q_rows = kv_heads * group * head_dim
    kv_rows = kv_heads * head_dim
    if w.shape[0] != q_rows + 2 * kv_rows:
        raise ValueError(f"{w.shape[0]} rows, expected {q_rows + 2 * kv_rows}")
    q = w[:q_rows].reshape(kv_heads, group, head_dim, *rest)
    k = w[q_rows:q_rows + kv_rows].reshape(kv_heads, 1, head_dim, *rest)
    v = w[q_rows + kv_rows:].reshape(kv_heads, 1, head_dim, *rest)
    return np.concatenate([q, k, v], axis=1).reshape(w.shape)


def _undo_llama(hf: str, w: np.ndarray, meta: Meta) -> np.ndarray:
    if hf.endswith(("self_attn.q_proj.weight", "self_attn.q_proj.bias")):
        return unpermute_rope_rows(w, int(meta.need("attention.head_count")))
    if hf.endswith(("self_attn.k_proj.weight", "self_attn.k_proj.bias")):
        heads = int(meta.need("attention.head_count"))
        return unpermute_rope_rows(w, int(meta.get("attention.head_count_kv", heads)))
    return w


def _undo_gemma(hf: str, w: np.ndarray, meta: Meta) -> np.ndarray:
    return w - np.float32(1.0) if hf.endswith("norm.weight") else w


def _undo_per_head_qkv(hf: str, w: np.ndarray, meta: Meta) -> np.ndarray:
    if "query_key_value" not in hf:
        return w
    heads = int(meta.need("attention.head_count"))
    kv = int(meta.get("attention.head_count_kv", heads))
    head_dim = int(meta.need("embedding_length")) // heads
    return qkv_rows_to_grouped(w, kv, heads // kv, head_dim)


def _undo_mamba(hf: str, w: np.ndarray, meta: Meta) -> np.ndarray:
    if hf.endswith("mixer.A_log"):
        if np.any(w >= 0):
            raise ValueError("A = -exp(A_log) must be negative")
        return np.log(-w)
    if hf.endswith("mixer.conv1d.weight") and w.ndim == 2:
        return w[:, None, :]
    return w


def _undo_qwen2_moe(hf: str, w: np.ndarray, meta: Meta) -> np.ndarray:
    """Older converters squeezed every tensor: the shared-expert gate (1, hidden) came out (hidden,)."""
    return w[None, :] if hf.endswith("shared_expert_gate.weight") and w.ndim == 1 else w


def _no_undo(hf: str, w: np.ndarray, meta: Meta) -> np.ndarray:
    return w


# ------------------------------------------------------------------------------------------------
# Tensor name tables (GGUF suffix after blk.{i}. -> HF name after the layer prefix)

def _pairs(gguf: str, hf: str, suffixes=("weight", "bias")) -> tuple:
    return tuple((f"{gguf}.{s}", f"{hf}.{s}") for s in suffixes)


_LLAMA_TOP = (("token_embd.weight", "model.embed_tokens.weight"), *_pairs("output_norm", "model.norm"),
              ("output.weight", "lm_head.weight"))
_LLAMA_ATTN = (*_pairs("attn_norm", "input_layernorm"),
               *(pair for g, h in (("attn_q", "q"), ("attn_k", "k"), ("attn_v", "v"), ("attn_output", "o"),
                                   ("attn_qkv", "qkv"))
                 for pair in _pairs(g, f"self_attn.{h}_proj")),
               ("attn_q_norm.weight", "self_attn.q_norm.weight"), ("attn_k_norm.weight", "self_attn.k_norm.weight"))
_DENSE_MLP = tuple((f"ffn_{p}.weight", f"mlp.{p}_proj.weight") for p in ("gate", "up", "down"))
_LLAMA_LAYER = _LLAMA_ATTN + (*_pairs("ffn_norm", "post_attention_layernorm"),) + _DENSE_MLP
_GEMMA2_LAYER = _LLAMA_ATTN + _DENSE_MLP + (
    ("post_attention_norm.weight", "post_attention_layernorm.weight"),
    ("ffn_norm.weight", "pre_feedforward_layernorm.weight"),
    ("post_ffw_norm.weight", "post_feedforward_layernorm.weight"))
_PHI3_LAYER = _LLAMA_ATTN + (("ffn_norm.weight", "post_attention_layernorm.weight"),
                             ("ffn_up.weight", "mlp.gate_up_proj.weight"), ("ffn_down.weight", "mlp.down_proj.weight"))
_QWEN_MOE_LAYER = _LLAMA_LAYER + (
    ("ffn_gate_inp.weight", "mlp.gate.weight"),
    *((f"ffn_{p}_exps.weight", f"mlp.experts.{{e}}.{p}_proj.weight") for p in ("gate", "up", "down")),
    *((f"ffn_{p}_shexp.weight", f"mlp.shared_expert.{p}_proj.weight") for p in ("gate", "up", "down")),
    ("ffn_gate_inp_shexp.weight", "mlp.shared_expert_gate.weight"))
_MIXTRAL_LAYER = _LLAMA_LAYER + (
    ("ffn_gate_inp.weight", "block_sparse_moe.gate.weight"),
    *((f"ffn_{p}_exps.weight", f"block_sparse_moe.experts.{{e}}.{w}.weight")
      for p, w in (("gate", "w1"), ("up", "w3"), ("down", "w2"))))
# StableLM 2's q/k LayerNorms, one per head, stacked by the converter as (heads, head_dim)
_STABLELM_LAYER = tuple(
    pair for pair in _LLAMA_LAYER if pair[0] not in ("attn_q_norm.weight", "attn_k_norm.weight")) + tuple(
    (f"attn_{p}_norm.weight", f"self_attn.{p}_layernorm.norms.{{e}}.weight") for p in "qk")
_NEOX_LAYER = (*_pairs("attn_norm", "input_layernorm"), *_pairs("ffn_norm", "post_attention_layernorm"),
               *_pairs("attn_qkv", "attention.query_key_value"), *_pairs("attn_output", "attention.dense"),
               *_pairs("ffn_up", "mlp.dense_h_to_4h"), *_pairs("ffn_down", "mlp.dense_4h_to_h"))
_BLOOM_LAYER = (*_pairs("attn_norm", "input_layernorm"), *_pairs("ffn_norm", "post_attention_layernorm"),
                *_pairs("attn_qkv", "self_attention.query_key_value"), *_pairs("attn_output", "self_attention.dense"),
                *_pairs("ffn_up", "mlp.dense_h_to_4h"), *_pairs("ffn_down", "mlp.dense_4h_to_h"))
_FALCON_TAIL = (*_pairs("attn_qkv", "self_attention.query_key_value"), *_pairs("attn_output", "self_attention.dense"),
                *_pairs("ffn_up", "mlp.dense_h_to_4h"), *_pairs("ffn_down", "mlp.dense_4h_to_h"))
_MAMBA_LAYER = (("attn_norm.weight", "norm.weight"),
                *(pair for g, h in (("ssm_in", "in_proj"), ("ssm_conv1d", "conv1d"), ("ssm_x", "x_proj"),
                                    ("ssm_dt", "dt_proj"), ("ssm_out", "out_proj"))
                  for pair in _pairs(g, f"mixer.{h}")),
                ("ssm_a", "mixer.A_log"), ("ssm_d", "mixer.D"))


# ------------------------------------------------------------------------------------------------
# Metadata -> config.json fields

def _attention_fields(meta: Meta) -> dict:
    """The fields every attention family's config.json has, from the common GGUF keys."""
    hidden = int(meta.need("embedding_length"))
    heads = int(meta.need("attention.head_count"))
    head_dim = int(meta.get("attention.key_length", hidden // heads))
    out = {"vocab_size": meta.vocab_size, "hidden_size": hidden, "num_hidden_layers": meta.num_layers,
           "intermediate_size": int(meta.need("feed_forward_length")), "num_attention_heads": heads,
           "num_key_value_heads": int(meta.get("attention.head_count_kv", heads)), "head_dim": head_dim,
           "max_position_embeddings": int(meta.get("context_length", 2048)),
           "rope_theta": float(meta.get("rope.freq_base", 10000.0)),
           "tie_word_embeddings": not meta.has("output.weight"),
           "bos_token_id": meta.get("tokenizer.ggml.bos_token_id"),
           "eos_token_id": meta.get("tokenizer.ggml.eos_token_id")}
    rope_dims = meta.get("rope.dimension_count")
    if rope_dims is not None and int(rope_dims) != head_dim:
        out["partial_rotary_factor"] = int(rope_dims) / head_dim
    scaling = meta.get("rope.scaling.type")
    if scaling == "linear":
        out["rope_scaling"] = {"rope_type": "linear", "factor": float(meta.need("rope.scaling.factor"))}
    elif scaling not in (None, "none"):
        raise CheckpointError(f"{meta.source}: unsupported rope scaling type {scaling!r} (supported: linear)")
    if meta.has("rope_freqs.weight"):
        if meta.arch not in ("llama", "mistral"):
            raise CheckpointError(f"{meta.source}: tensor rope_freqs.weight (RoPE frequency factors) is only read "
                                  f"for llama files")
        out["rope_scaling"] = llama3_scaling(meta.read("rope_freqs.weight"), out["rope_theta"],
                                             int(rope_dims or head_dim), meta.source)
    return out


def llama3_scaling(factors: np.ndarray, theta: float, dim: int, source: str) -> Optional[dict]:
    """The llama3 `rope_scaling` whose per-frequency divisors are `factors` (llama.cpp's
    rope_freqs tensor, (dim // 2,)): None when they are all 1.

    Llama 3's rule divides the inverse frequency of wavelength w by 1 (w < high_wavelen), by
    `factor` (w > low_wavelen), else by 1 / ((1 - s) / factor + s) with s = a / w - b linear in 1 / w.
    factor is the largest divisor; (a, b) are fitted on the in-between wavelengths (or, with fewer
    than two of them, placed in the gaps between the zones: any such choice gives the same
    frequencies). Only (a, b) matter, so original_max_position_embeddings is set to 8192 and the
    low / high freq factors follow. `check_llama3_scaling` verifies the result against the tensor.
    """
    f = np.asarray(factors, np.float64).reshape(-1)
    if f.size != dim // 2:
        raise CheckpointError(f"{source}: tensor rope_freqs.weight has {f.size} entries, the rotary dim {dim} needs "
                              f"{dim // 2}")
    if np.allclose(f, 1.0, rtol=0, atol=1e-6):
        return None
    wavelen = 2 * np.pi * theta ** (np.arange(0, dim, 2, dtype=np.float64) / dim)
    factor = float(f.max())
    high, low = np.isclose(f, 1.0, rtol=1e-6), np.isclose(f, factor, rtol=1e-6)
    medium = ~high & ~low
    if factor <= 1.0 or not low.any():
        raise CheckpointError(f"{source}: tensor rope_freqs.weight does not follow llama3 RoPE scaling "
                              f"(no frequency divided by the full factor)")
    s = (1 / f - 1 / factor) / (1 - 1 / factor)  # 1 on high-frequency dims, 0 on low ones
    inv_w = 1 / wavelen
    if medium.sum() >= 2:
        a, minus_b = np.polyfit(inv_w[medium], s[medium], 1)
        b = -minus_b
    elif medium.any():  # one: s = 1 at a wavelength between the high zone and it
        w_m = float(wavelen[medium][0])
        w_1 = np.sqrt(wavelen[high].max() * w_m) if high.any() else w_m / 2
        a = (1 - float(s[medium][0])) / (1 / w_1 - 1 / w_m)
        b = a / w_1 - 1
    else:  # none: s = 1 and s = 0 at the thirds (log scale) of the gap between the zones
        short, long_ = wavelen[high].max(initial=wavelen.min() / 4), wavelen[low].min()
        w_1, w_0 = short ** (2 / 3) * long_ ** (1 / 3), short ** (1 / 3) * long_ ** (2 / 3)
        a = 1 / (1 / w_1 - 1 / w_0)
        b = a / w_0
    original = 8192
    width = original / a  # high_freq_factor - low_freq_factor
    return {"rope_type": "llama3", "factor": factor, "low_freq_factor": float(b * width),
            "high_freq_factor": float(b * width + width), "original_max_position_embeddings": original}


def check_llama3_scaling(config, factors: np.ndarray, source: str) -> None:
    """The config's scaled RoPE frequencies divide the plain ones by `factors` (rope_freqs), to
    float32 precision; else CheckpointError."""
    from qjax.models.rope import inverse_frequencies

    plain = 1.0 / (config.rope_theta ** (np.arange(0, config.rotary_dim, 2, dtype=np.float64) / config.rotary_dim))
    got = plain / inverse_frequencies(config)
    if not np.allclose(got, np.asarray(factors, np.float64).reshape(-1), rtol=1e-5, atol=0):
        raise CheckpointError(f"{source}: tensor rope_freqs.weight does not follow llama3 RoPE scaling "
                              f"(factors {np.asarray(factors).tolist()})")


def _moe_fields(meta: Meta) -> dict:
    """Experts, top-k, and the layers without a router (dense MLP layers) as mlp_only_layers."""
    dense = [i for i in range(meta.num_layers)
             if not meta.has(f"blk.{i}.ffn_gate_inp.weight") and meta.has(f"blk.{i}.ffn_down.weight")]
    return {"num_experts": int(meta.need("expert_count")), "num_experts_per_tok": int(meta.need("expert_used_count")),
            "mlp_only_layers": dense}


def _llama(meta: Meta) -> dict:
    out = {**_attention_fields(meta), "rms_norm_eps": meta.eps(), "attention_bias": meta.has("blk.0.attn_q.bias")}
    if int(meta.get("expert_count", 0) or 0):
        return {**out, **_moe_fields(meta), "architectures": ["MixtralForCausalLM"],
                "num_local_experts": int(meta.need("expert_count"))}
    if meta.arch == "mistral":
        return {**out, "architectures": ["MistralForCausalLM"], "sliding_window": meta.get("attention.sliding_window")}
    return {**out, "architectures": ["LlamaForCausalLM"]}


def _qwen(hf_class: str) -> Callable[[Meta], dict]:
    def fields(meta: Meta) -> dict:
        return {**_attention_fields(meta), "rms_norm_eps": meta.eps(), "architectures": [hf_class]}

    return fields


def _qwen_moe(hf_class: str, norm_topk_prob: bool) -> Callable[[Meta], dict]:
    def fields(meta: Meta) -> dict:
        has_shared = any(meta.has(f"blk.{i}.ffn_up_shexp.weight") for i in range(meta.num_layers))
        return {**_attention_fields(meta), **_moe_fields(meta), "rms_norm_eps": meta.eps(),
                "architectures": [hf_class], "norm_topk_prob": norm_topk_prob,
                "moe_intermediate_size": int(meta.need("expert_feed_forward_length")),
                "shared_expert_intermediate_size":
                    int(meta.need("expert_shared_feed_forward_length")) if has_shared else 0,
                "qkv_bias": meta.has("blk.0.attn_q.bias")}

    return fields


def _olmoe(meta: Meta) -> dict:
    return {**_attention_fields(meta), **_moe_fields(meta), "rms_norm_eps": meta.eps(),
            "architectures": ["OlmoeForCausalLM"], "norm_topk_prob": False,
            "clip_qkv": meta.get("attention.clamp_kqv"), "attention_bias": meta.has("blk.0.attn_q.bias")}


def _gemma_query_pre_attn_scalar(base: dict, size_27b_layers: int) -> int:
    """llama.cpp's rule: queries scaled by 1/sqrt(hidden/heads) for the 27B models (known by their
    layer count), else by 1/sqrt(head_dim)."""
    if base["num_hidden_layers"] == size_27b_layers:
        return base["hidden_size"] // base["num_attention_heads"]
    return base["head_dim"]


def _swa_layer_types(layers: int, pattern: int) -> list:
    """llama.cpp's swa pattern n: layer i slides unless (i + 1) % n == 0."""
    return ["full_attention" if (i + 1) % pattern == 0 else "sliding_attention" for i in range(layers)]


def _gemma(meta: Meta) -> dict:
    return {**_attention_fields(meta), "rms_norm_eps": meta.eps(), "architectures": ["GemmaForCausalLM"],
            "hidden_activation": "gelu_pytorch_tanh"}


def _gemma2(meta: Meta) -> dict:
    base = _attention_fields(meta)
    return {**base, "rms_norm_eps": meta.eps(), "architectures": ["Gemma2ForCausalLM"],
            "hidden_activation": "gelu_pytorch_tanh",
            "query_pre_attn_scalar": _gemma_query_pre_attn_scalar(base, 46),
            "attn_logit_softcapping": meta.get("attn_logit_softcapping"),
            "final_logit_softcapping": meta.get("final_logit_softcapping"),
            "sliding_window": meta.get("attention.sliding_window"),
            "layer_types": _swa_layer_types(base["num_hidden_layers"], 2)}


def _gemma3(meta: Meta) -> dict:
    base = _attention_fields(meta)
    window = meta.get("attention.sliding_window")
    layers = base["num_hidden_layers"]
    return {**base, "rms_norm_eps": meta.eps(), "architectures": ["Gemma3ForCausalLM"],
            "hidden_activation": "gelu_pytorch_tanh",
            "query_pre_attn_scalar": _gemma_query_pre_attn_scalar(base, 62),
            "final_logit_softcapping": meta.get("final_logit_softcapping"),
            "sliding_window": window or None, "rope_local_base_freq": 10000.0,
            "layer_types": _swa_layer_types(layers, 6) if window else ["full_attention"] * layers}


def _phi3(meta: Meta) -> dict:
    out = {**_attention_fields(meta), "rms_norm_eps": meta.eps(), "architectures": ["Phi3ForCausalLM"],
           "sliding_window": meta.get("attention.sliding_window") or None}
    if meta.has("rope_factors_long.weight"):  # LongRoPE: the factors are tensors, the rest metadata
        original = int(meta.need("rope.scaling.original_context_length"))
        out["rope_scaling"] = {
            "rope_type": "longrope", "original_max_position_embeddings": original,
            "factor": out["max_position_embeddings"] / original,
            "attention_factor": float(meta.get("rope.scaling.attn_factor", 1.0)),
            "long_factor": [float(f) for f in meta.read("rope_factors_long.weight")],
            "short_factor": [float(f) for f in meta.read("rope_factors_short.weight")]}
    return out


def _stablelm(meta: Meta) -> dict:
    parallel = meta.get("use_parallel_residual")
    return {**_attention_fields(meta), "layer_norm_eps": meta.eps(), "architectures": ["StableLmForCausalLM"],
            "use_qkv_bias": meta.has("blk.0.attn_q.bias"), "qk_layernorm": meta.has("blk.0.attn_q_norm.weight"),
            "use_parallel_residual": bool(parallel) if parallel is not None else not meta.has("blk.0.ffn_norm.weight")}


def _gptneox(meta: Meta) -> dict:
    return {**_attention_fields(meta), "layer_norm_eps": meta.eps(), "architectures": ["GPTNeoXForCausalLM"],
            "hidden_act": "gelu", "use_parallel_residual": bool(meta.get("use_parallel_residual", True)),
            "attention_bias": meta.has("blk.0.attn_qkv.bias")}


def _falcon(meta: Meta) -> dict:
    base = _attention_fields(meta)
    kv, two_norms = base["num_key_value_heads"], meta.has("blk.0.attn_norm_2.weight")
    new_arch = two_norms or kv not in (1, base["num_attention_heads"])
    return {**base, "layer_norm_epsilon": meta.eps(), "architectures": ["FalconForCausalLM"], "activation": "gelu",
            "ffn_hidden_size": base["intermediate_size"], "num_kv_heads": kv, "new_decoder_architecture": new_arch,
            "multi_query": kv == 1, "num_ln_in_parallel_attn": 2 if two_norms else 1, "parallel_attn": True,
            "bias": meta.has("blk.0.attn_qkv.bias"), "alibi": False}


def _bloom(meta: Meta) -> dict:
    return {**_attention_fields(meta), "layer_norm_epsilon": meta.eps(), "architectures": ["BloomForCausalLM"]}


def _mamba(meta: Meta) -> dict:
    if meta.get("ssm.dt_b_c_rms"):
        raise CheckpointError(f"{meta.source}: Mamba with RMS-normed dt/B/C (Falcon-Mamba) is not supported")
    return {"architectures": ["MambaForCausalLM"], "vocab_size": meta.vocab_size,
            "hidden_size": int(meta.need("embedding_length")), "intermediate_size": int(meta.need("ssm.inner_size")),
            "num_hidden_layers": meta.num_layers, "state_size": int(meta.need("ssm.state_size")),
            "conv_kernel": int(meta.need("ssm.conv_kernel")), "time_step_rank": int(meta.need("ssm.time_step_rank")),
            "layer_norm_epsilon": meta.eps(), "use_bias": meta.has("blk.0.ssm_in.bias"),
            "use_conv_bias": meta.has("blk.0.ssm_conv1d.bias"), "tie_word_embeddings": not meta.has("output.weight"),
            "bos_token_id": meta.get("tokenizer.ggml.bos_token_id"),
            "eos_token_id": meta.get("tokenizer.ggml.eos_token_id")}


@dataclasses.dataclass(frozen=True)
class GGUFArch:
    """One llama.cpp architecture as its converter writes it (module docstring)."""

    hf_config: Callable[[Meta], dict]
    top: tuple
    layer: tuple
    hf_layer_prefix: str = "model.layers.{i}."
    undo: Callable[[str, np.ndarray, Meta], np.ndarray] = _no_undo
    layer_fn: Optional[Callable[[Meta], tuple]] = None  # a layer table that depends on the file
    config_tensors: tuple = ()  # tensors read into the config (hf_config), not into params
    per_expert: tuple = ()  # (GGUF, HF) layer names with {e}: one tensor per expert (older files)

    def layer_table(self, meta: Meta) -> tuple:
        return self.layer_fn(meta) if self.layer_fn else self.layer


def _falcon_layer(meta: Meta) -> tuple:
    if meta.has("blk.0.attn_norm_2.weight"):  # Falcon-40B's two norms: llama.cpp's attn_norm feeds the MLP
        return (*_pairs("attn_norm", "ln_mlp"), *_pairs("attn_norm_2", "ln_attn"), *_FALCON_TAIL)
    return (*_pairs("attn_norm", "input_layernorm"), *_FALCON_TAIL)


_BLOOM_TOP = (("token_embd.weight", "transformer.word_embeddings.weight"),
              *_pairs("token_embd_norm", "transformer.word_embeddings_layernorm"),
              *_pairs("output_norm", "transformer.ln_f"), ("output.weight", "lm_head.weight"))

ARCHITECTURES = {
    "llama": GGUFArch(_llama, _LLAMA_TOP, _MIXTRAL_LAYER, undo=_undo_llama, config_tensors=("rope_freqs.weight",),
                      per_expert=tuple(
        (f"ffn_{p}.{{e}}.weight", f"block_sparse_moe.experts.{{e}}.{w}.weight")
        for p, w in (("gate", "w1"), ("up", "w3"), ("down", "w2")))),
    "mistral": GGUFArch(_llama, _LLAMA_TOP, _LLAMA_LAYER, undo=_undo_llama, config_tensors=("rope_freqs.weight",)),
    "qwen2": GGUFArch(_qwen("Qwen2ForCausalLM"), _LLAMA_TOP, _LLAMA_LAYER),
    "qwen3": GGUFArch(_qwen("Qwen3ForCausalLM"), _LLAMA_TOP, _LLAMA_LAYER),
    "qwen2moe": GGUFArch(_qwen_moe("Qwen2MoeForCausalLM", False), _LLAMA_TOP, _QWEN_MOE_LAYER, undo=_undo_qwen2_moe),
    "qwen3moe": GGUFArch(_qwen_moe("Qwen3MoeForCausalLM", True), _LLAMA_TOP, _QWEN_MOE_LAYER),
    "olmoe": GGUFArch(_olmoe, _LLAMA_TOP, _QWEN_MOE_LAYER),
    "gemma": GGUFArch(_gemma, _LLAMA_TOP, _LLAMA_LAYER, undo=_undo_gemma),
    "gemma2": GGUFArch(_gemma2, _LLAMA_TOP, _GEMMA2_LAYER, undo=_undo_gemma),
    "gemma3": GGUFArch(_gemma3, _LLAMA_TOP, _GEMMA2_LAYER, undo=_undo_gemma),
    "phi3": GGUFArch(_phi3, _LLAMA_TOP, _PHI3_LAYER,
                     config_tensors=("rope_factors_long.weight", "rope_factors_short.weight")),
    "stablelm": GGUFArch(_stablelm, _LLAMA_TOP, _STABLELM_LAYER),
    "gptneox": GGUFArch(_gptneox, (("token_embd.weight", "gpt_neox.embed_in.weight"),
                                   *_pairs("output_norm", "gpt_neox.final_layer_norm"),
                                   ("output.weight", "embed_out.weight")),
                        _NEOX_LAYER, hf_layer_prefix="gpt_neox.layers.{i}.", undo=_undo_per_head_qkv),
    "falcon": GGUFArch(_falcon, (("token_embd.weight", "transformer.word_embeddings.weight"),
                                 *_pairs("output_norm", "transformer.ln_f"), ("output.weight", "lm_head.weight")),
                       (), hf_layer_prefix="transformer.h.{i}.", undo=_undo_per_head_qkv, layer_fn=_falcon_layer),
    "bloom": GGUFArch(_bloom, _BLOOM_TOP, _BLOOM_LAYER, hf_layer_prefix="transformer.h.{i}.",
                      undo=_undo_per_head_qkv),
    "mamba": GGUFArch(_mamba, (("token_embd.weight", "backbone.embeddings.weight"),
                               ("output_norm.weight", "backbone.norm_f.weight"), ("output.weight", "lm_head.weight")),
                      _MAMBA_LAYER, hf_layer_prefix="backbone.layers.{i}.", undo=_undo_mamba),
}


def arch_of(meta_arch: Optional[str], source: str) -> GGUFArch:
    if meta_arch not in ARCHITECTURES:
        extra = " (OPT has no llama.cpp architecture)" if meta_arch == "opt" else ""
        raise CheckpointError(f"{source}: unknown GGUF architecture {meta_arch!r}{extra}; supported GGUF "
                              f"architectures: {sorted(ARCHITECTURES)}")
    return ARCHITECTURES[meta_arch]


def hf_names(arch: GGUFArch, meta: Meta) -> dict[str, tuple[str, bool]]:
    """GGUF tensor name -> (HF name, stacked experts) for every tensor name this file may hold."""
    out = {g: (h, False) for g, h in arch.top}
    table = arch.layer_table(meta)
    experts = int(meta.get("expert_count", 0) or 0)
    for i in range(meta.num_layers):
        prefix = arch.hf_layer_prefix.format(i=i)
        for g, h in table:
            out[f"blk.{i}.{g}"] = (prefix + h, "{e}" in h)
        for g, h in arch.per_expert:
            for e in range(experts):
                out[f"blk.{i}.{g.format(e=e)}"] = (prefix + h.format(e=e), False)
    return out
