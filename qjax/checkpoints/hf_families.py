"""Per-family knowledge of Hugging Face checkpoints: config.json -> `ModelConfig` (the parts the
family declares) and HF tensor names -> qjax parameter paths.

A `Family` lists its tensors as (HF name pattern, qjax path) pairs: top-level ones after the
family's prefix is stripped, and layer ones after `<layers>.<i>.`; `{e}` in a pattern stands for an
expert index. 2-D weights are transposed to (in, out) kernels; fused q/k/v tensors whose rows are
grouped per KV head (GPT-NeoX, BLOOM, Falcon) are reordered to [q | k | v] rows first.
"""

from __future__ import annotations

import dataclasses
import math
import re
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from qjax.checkpoints.errors import CheckpointError
from qjax.models.config import RopeScaling
from qjax.models.mamba import MambaConfig

_ACTIVATIONS = {"silu": "silu", "swish": "silu", "gelu": "gelu", "gelu_pytorch_tanh": "gelu_tanh",
                "gelu_new": "gelu_tanh", "gelu_fast": "gelu_tanh", "relu": "relu"}


def grouped_qkv_rows(w: np.ndarray, kv_heads: int, group: int, head_dim: int) -> np.ndarray:
    """Rows (out, ...) laid out per KV head as [q_0 .. q_{group-1}, k, v] (each head_dim rows) ->
    [all q | all k | all v]; group = num_heads / kv_heads (GPT-NeoX and BLOOM: kv_heads = heads,
    group 1; Falcon's new decoder architecture: grouped)."""
    rest = w.shape[1:]
    w = w.reshape(kv_heads, group + 2, head_dim, *rest)
    return np.concatenate([w[:, :group].reshape(-1, *rest), w[:, group].reshape(-1, *rest),
                           w[:, group + 1].reshape(-1, *rest)])


@dataclasses.dataclass(frozen=True)
class Family:
    """How one HF architecture is read.

    architecture: the qjax name (ModelConfig.architecture). parts: raw config.json -> the
    ModelConfig fields that are not read the common way (`common_fields`), or that override them.
    prefixes: stripped from tensor names (first match). layers: the container of the blocks
    ("layers", "h"). top, layer: (HF pattern, qjax path) pairs. qkv: raw config -> the row reorder
    of fused q/k/v tensors (None: already [q | k | v]). text_config: for a multimodal checkpoint,
    the config key of its text model (`model_config`); only the text model is read, tensors outside
    the prefixes (a vision tower, a multimodal projector) are ignored.
    """

    architecture: str
    parts: Callable[[dict], dict]
    top: tuple
    layer: tuple
    prefixes: tuple = ("model.",)
    layers: str = "layers"
    qkv: Optional[Callable[[dict, dict], Callable[[np.ndarray], np.ndarray]]] = None
    make_config: Optional[Callable[[dict, Path], object]] = None  # a config other than ModelConfig
    text_config: Optional[str] = None  # the key of a nested text-model config (multimodal checkpoints)

    def model_config(self, raw: dict) -> dict:
        """The config.json dict that describes the decoder: `raw` itself, or for a multimodal
        checkpoint its `text_config` (with the top level's architectures and tie_word_embeddings)."""
        if self.text_config is None:
            return raw
        text = dict(raw.get(self.text_config) or {})
        for key in ("architectures", "tie_word_embeddings"):
            if key in raw:
                text[key] = raw[key]
        return text

    def tensor_fixes(self, raw: dict, fields: dict) -> Callable[[str], Optional[Callable[[np.ndarray], np.ndarray]]]:
        """qjax path -> the change a stored tensor needs before the (out, in) -> (in, out) transpose
        (None: none): fused q/k/v rows reordered (`qkv`), torch's depthwise conv (C, 1, k) -> (C, k)."""
        reorder = self.qkv(raw, fields) if self.qkv else None

        def fix_for(path: str):
            if reorder is not None and "/qkv_proj/" in path:
                return reorder
            if path.endswith("conv1d/kernel"):
                return lambda w: w[:, 0, :] if w.ndim == 3 else w
            return None

        return fix_for

    def compiled(self):
        def pattern(p):
            return re.compile(re.escape(p).replace(re.escape("{e}"), r"(\d+)"))

        return [(pattern(p), q) for p, q in self.top], [(pattern(p), q) for p, q in self.layer]

    def hf_name(self, path: str) -> str:
        """The HF tensor name(s) that hold qjax parameter `path` (for error messages; alternatives
        joined by " or ")."""
        m = re.fullmatch(r"layers_(\d+)/(.+)", path)
        table = self.layer if m else self.top
        rest = m.group(2) if m else path
        names = []
        for hf, q in table:
            e = re.fullmatch(re.escape(q).replace(re.escape("{e}"), r"(\d+)"), rest)
            if e:
                name = hf.replace("{e}", e.group(1)) if e.groups() else hf
                if m:
                    name = f"{self.prefixes[0]}{self.layers}.{m.group(1)}.{name}"
                elif not name.startswith(("lm_head", "embed_out")):
                    name = self.prefixes[0] + name
                names.append(name)
        return " or ".join(names) or path


def rope_fields(raw: dict, path: Path, *, parameters: Optional[dict] = None) -> dict:
    """rope_theta, rope_scaling, rotary_fraction from config.json (old keys or `rope_parameters`)."""
    params = parameters if parameters is not None else (raw.get("rope_parameters") or {})
    scaling_raw = raw.get("rope_scaling") or params
    theta = raw.get("rope_theta") or params.get("rope_theta") or raw.get("rotary_emb_base") or 10000.0
    fraction = params.get("partial_rotary_factor") or raw.get("partial_rotary_factor") or raw.get("rotary_pct") or 1.0
    return {"rope_theta": float(theta), "rope_scaling": rope_scaling(scaling_raw, path, raw),
            "rotary_fraction": float(fraction)}


def rope_scaling(raw: dict | None, path: Path, config: Optional[dict] = None) -> RopeScaling | None:
    """The RopeScaling of a `rope_scaling` / `rope_parameters` dict (None: plain RoPE); config: the
    whole config.json, where longrope's max / original_max_position_embeddings may sit."""
    if not raw:
        return None
    kind = raw.get("rope_type", raw.get("type"))
    if kind in (None, "default"):
        return None
    if kind == "linear":
        return RopeScaling("linear", float(raw["factor"]))
    if kind == "llama3":
        return RopeScaling("llama3", float(raw["factor"]), float(raw["low_freq_factor"]),
                           float(raw["high_freq_factor"]), int(raw["original_max_position_embeddings"]))
    if kind == "longrope":
        return longrope_scaling(raw, config or {}, path)
    raise CheckpointError(f"{path}: unsupported rope_scaling type {kind!r} (supported: linear, llama3, longrope)")


def longrope_scaling(raw: dict, config: dict, path: Path) -> RopeScaling:
    """LongRoPE (Phi-3 128k, Phi-3.5) as transformers' `_compute_longrope_parameters` reads it:
    original_max_position_embeddings from the scaling dict or the config; factor from the dict, else
    max_position_embeddings / original; attention_factor from the dict, else sqrt(1 + ln(factor) /
    ln(original)) when factor > 1 (else 1)."""
    original = raw.get("original_max_position_embeddings") or config.get("original_max_position_embeddings")
    if not original:
        raise CheckpointError(f"{path}: longrope rope scaling needs original_max_position_embeddings")
    factor = raw.get("factor") or config.get("max_position_embeddings", original) / original
    attention = raw.get("attention_factor")
    if attention is None:
        attention = math.sqrt(1 + math.log(factor) / math.log(original)) if factor > 1.0 else 1.0
    try:
        return RopeScaling("longrope", float(factor), original_max_position_embeddings=int(original),
                           short_factor=tuple(float(f) for f in raw["short_factor"]),
                           long_factor=tuple(float(f) for f in raw["long_factor"]), attention_factor=float(attention))
    except KeyError as e:
        raise CheckpointError(f"{path}: longrope rope scaling lacks {e.args[0]!r}") from e


def activation_of(raw: dict, path: Path, *keys: str) -> str:
    for key in keys:
        if raw.get(key):
            name = raw[key]
            if name not in _ACTIVATIONS:
                raise CheckpointError(f"{path}: unsupported activation {key}={name!r}; supported: {sorted(_ACTIVATIONS)}")
            return _ACTIVATIONS[name]
    return "silu"


def layer_types(raw: dict) -> Optional[tuple]:
    types = raw.get("layer_types")
    if not types:
        return None
    return tuple("sliding" if t == "sliding_attention" else "full" for t in types)


# ------------------------------------------------------------------------------------------------
# Tensor tables

_LLAMA_TOP = (("embed_tokens.weight", "embed/embedding"), ("norm.weight", "final_norm/scale"),
              ("norm.bias", "final_norm/bias"), ("lm_head.weight", "lm_head/kernel"))
_LLAMA_ATTN = tuple((f"self_attn.{p}_proj.{w}", f"attn/{p}_proj/{'kernel' if w == 'weight' else 'bias'}")
                    for p in ("q", "k", "v", "o", "qkv") for w in ("weight", "bias"))
_LLAMA_LAYER = (("input_layernorm.weight", "input_norm/scale"), ("input_layernorm.bias", "input_norm/bias"),
                *((f"self_attn.{p}_layernorm.norms.{{e}}.weight", f"attn/{p}_norm/heads_{{e}}/scale") for p in "qk"),
                ("post_attention_layernorm.weight", "post_attn_norm/scale"),
                ("post_attention_layernorm.bias", "post_attn_norm/bias"),
                ("self_attn.q_norm.weight", "attn/q_norm/scale"), ("self_attn.k_norm.weight", "attn/k_norm/scale"),
                *_LLAMA_ATTN,
                *((f"mlp.{p}_proj.weight", f"mlp/{p}_proj/kernel") for p in ("gate", "up", "down", "gate_up")))
_GEMMA2_LAYER = tuple((hf, q) for hf, q in _LLAMA_LAYER if not hf.startswith("post_attention")) + (
    ("post_attention_layernorm.weight", "attn_output_norm/scale"),
    ("pre_feedforward_layernorm.weight", "post_attn_norm/scale"),
    ("post_feedforward_layernorm.weight", "mlp_output_norm/scale"))
_EXPERTS = tuple((f"mlp.experts.{{e}}.{p}_proj.weight", f"moe/experts_{{e}}/{p}_proj/kernel")
                 for p in ("gate", "up", "down"))
_QWEN_MOE_LAYER = _LLAMA_LAYER + _EXPERTS + (
    ("mlp.gate.weight", "moe/router/kernel"), ("mlp.shared_expert_gate.weight", "moe/shared_expert_gate/kernel"),
    *((f"mlp.shared_expert.{p}_proj.weight", f"moe/shared_expert/{p}_proj/kernel") for p in ("gate", "up", "down")))
_MIXTRAL_LAYER = _LLAMA_LAYER + (
    ("block_sparse_moe.gate.weight", "moe/router/kernel"),
    *((f"block_sparse_moe.experts.{{e}}.{w}.weight", f"moe/experts_{{e}}/{p}_proj/kernel")
      for w, p in (("w1", "gate"), ("w3", "up"), ("w2", "down"))))


def _norm_pair(hf: str, q: str) -> tuple:
    return ((f"{hf}.weight", f"{q}/scale"), (f"{hf}.bias", f"{q}/bias"))


def _linear_pair(hf: str, q: str) -> tuple:
    return ((f"{hf}.weight", f"{q}/kernel"), (f"{hf}.bias", f"{q}/bias"))


_NEOX_LAYER = (*_norm_pair("input_layernorm", "input_norm"), *_norm_pair("post_attention_layernorm", "post_attn_norm"),
               *_linear_pair("attention.query_key_value", "attn/qkv_proj"), *_linear_pair("attention.dense", "attn/o_proj"),
               *_linear_pair("mlp.dense_h_to_4h", "mlp/up_proj"), *_linear_pair("mlp.dense_4h_to_h", "mlp/down_proj"))
_FALCON_LAYER = (*_norm_pair("input_layernorm", "input_norm"), *_norm_pair("ln_attn", "input_norm"),
                 *_norm_pair("ln_mlp", "post_attn_norm"), *_norm_pair("post_attention_layernorm", "post_attn_norm"),
                 *_linear_pair("self_attention.query_key_value", "attn/qkv_proj"),
                 *_linear_pair("self_attention.dense", "attn/o_proj"),
                 *_linear_pair("mlp.dense_h_to_4h", "mlp/up_proj"), *_linear_pair("mlp.dense_4h_to_h", "mlp/down_proj"))
_BLOOM_TOP = (("word_embeddings.weight", "embed/embedding"), *_norm_pair("word_embeddings_layernorm", "embed_norm"),
              *_norm_pair("ln_f", "final_norm"), ("lm_head.weight", "lm_head/kernel"))
_OPT_LAYER = (*_norm_pair("self_attn_layer_norm", "input_norm"), *_norm_pair("final_layer_norm", "post_attn_norm"),
              *(pair for p in ("q", "k", "v") for pair in _linear_pair(f"self_attn.{p}_proj", f"attn/{p}_proj")),
              *_linear_pair("self_attn.out_proj", "attn/o_proj"), *_linear_pair("fc1", "mlp/up_proj"),
              *_linear_pair("fc2", "mlp/down_proj"))


# ------------------------------------------------------------------------------------------------
# Parts by family (each gets raw config.json and its path)

def _llama(raw, path):
    return {}


def _mistral(raw, path):
    return {"sliding_window": raw.get("sliding_window")}


def _qwen2(raw, path):
    window = raw.get("sliding_window") if raw.get("use_sliding_window") else None
    return {"attention_bias": True, "sliding_window": window}


def _qwen3(raw, path):
    window = raw.get("sliding_window") if raw.get("use_sliding_window") else None
    return {"qk_norm": "head", "sliding_window": window}


def _gemma_common(raw, path):
    return {"norm": "rms_one_plus", "activation": activation_of(raw, path, "hidden_activation", "hidden_act"),
            "embed_scale": True, "tie_word_embeddings": bool(raw.get("tie_word_embeddings", True))}


def _gemma(raw, path):
    return _gemma_common(raw, path)


def _gemma2(raw, path):
    return {**_gemma_common(raw, path), "residual": "sandwich",
            "query_scale": float(raw["query_pre_attn_scalar"]) ** -0.5,
            "attn_softcap": raw.get("attn_logit_softcapping"), "final_softcap": raw.get("final_logit_softcapping"),
            "sliding_window": raw.get("sliding_window"), "layer_types": layer_types(raw)}


def _gemma3(raw, path):
    out = _gemma2(raw, path)
    params = raw.get("rope_parameters") or {}
    if "full_attention" in params:  # transformers >= 5: one set per layer type
        out.update(rope_fields(raw, path, parameters=params["full_attention"]))
        out["local_rope_theta"] = float((params.get("sliding_attention") or {}).get("rope_theta", 10000.0))
    else:
        out["local_rope_theta"] = float(raw.get("rope_local_base_freq", 10000.0))
    if out["layer_types"] is None:
        pattern = int(raw.get("sliding_window_pattern", 6))
        out["layer_types"] = tuple("full" if (i + 1) % pattern == 0 else "sliding"
                                   for i in range(raw["num_hidden_layers"]))
    return {**out, "qk_norm": "head"}


def _phi3(raw, path):
    return {"fused_qkv": True, "fused_gate_up": True, "sliding_window": raw.get("sliding_window")}


def _stablelm(raw, path):
    parallel = bool(raw.get("use_parallel_residual"))
    return {"norm": "layer", "rms_norm_eps": float(raw.get("layer_norm_eps", 1e-5)),
            "attention_bias": bool(raw.get("use_qkv_bias", False)),
            "qk_norm": "per_head" if raw.get("qk_layernorm") else None,
            "residual": "parallel" if parallel else "sequential", "parallel_shared_norm": parallel}


def _gpt_neox(raw, path):
    return {"norm": "layer", "rms_norm_eps": float(raw.get("layer_norm_eps", 1e-5)), "mlp": "plain",
            "activation": activation_of(raw, path, "hidden_act"), "fused_qkv": True,
            "attention_bias": bool(raw.get("attention_bias", True)), "o_bias": bool(raw.get("attention_bias", True)),
            "mlp_bias": True, "residual": "parallel" if raw.get("use_parallel_residual", True) else "sequential"}


def _falcon_kv_heads(raw) -> int:
    if raw.get("new_decoder_architecture"):
        return int(raw.get("num_kv_heads") or raw["num_attention_heads"])
    return 1 if raw.get("multi_query", True) else int(raw["num_attention_heads"])


def _falcon(raw, path):
    hidden, heads = raw["hidden_size"], raw["num_attention_heads"]
    alibi = bool(raw.get("alibi"))  # falcon-rw: ALiBi as BLOOM's, added before the 1/sqrt(head_dim) scale
    new_arch = bool(raw.get("new_decoder_architecture"))
    parallel = new_arch or bool(raw.get("parallel_attn", True))
    two_norms = new_arch and (raw.get("num_ln_in_parallel_attn") or 2) == 2
    bias = bool(raw.get("bias", False))
    return {"norm": "layer", "rms_norm_eps": float(raw.get("layer_norm_epsilon", 1e-5)), "mlp": "plain",
            "activation": activation_of(raw, path, "activation"), "fused_qkv": True, "attention_bias": bias,
            "o_bias": bias, "mlp_bias": bias, "num_kv_heads": _falcon_kv_heads(raw),
            "intermediate_size": int(raw.get("ffn_hidden_size") or 4 * hidden), "head_dim": hidden // heads,
            "num_layers": raw["num_hidden_layers"], "num_heads": heads,
            "residual": "parallel" if parallel else "sequential", "parallel_shared_norm": parallel and not two_norms,
            "positional": "alibi" if alibi else "rope", "alibi_scale": (hidden // heads) ** -0.5 if alibi else 1.0,
            "tie_word_embeddings": bool(raw.get("tie_word_embeddings", True))}


def _falcon_qkv(raw, fields):
    heads, kvh, hd = fields["num_heads"], fields["num_kv_heads"], fields["head_dim"]
    if raw.get("new_decoder_architecture") or kvh == heads:
        return lambda w: grouped_qkv_rows(w, kvh, heads // kvh, hd)
    return None  # multi-query: [q heads | k | v] already


def _per_head_qkv(raw, fields):
    heads, hd = fields["num_heads"], fields["head_dim"]
    return lambda w: grouped_qkv_rows(w, heads, 1, hd)


def _opt(raw, path):
    pre_norm = bool(raw.get("do_layer_norm_before", True))  # False: opt-350m's post-norm blocks
    embed_dim = raw.get("word_embed_proj_dim") or raw["hidden_size"]
    bias = bool(raw.get("enable_bias", True))
    return {"residual": "sequential" if pre_norm else "post",
            "final_norm": pre_norm and not raw.get("_remove_final_layer_norm", False),
            "embed_proj_dim": None if embed_dim == raw["hidden_size"] else int(embed_dim),
            "norm": "layer", "rms_norm_eps": 1e-5, "mlp": "plain",
            "activation": activation_of(raw, path, "activation_function"), "attention_bias": bias, "o_bias": bias,
            "mlp_bias": bias, "positional": "learned", "position_offset": 2, "intermediate_size": raw["ffn_dim"],
            "tie_word_embeddings": bool(raw.get("tie_word_embeddings", True))}


def _bloom(raw, path):
    hidden = raw.get("hidden_size") or raw["n_embed"]
    heads = raw.get("n_head") or raw["num_attention_heads"]
    if raw.get("apply_residual_connection_post_layernorm"):
        raise CheckpointError(f"{path}: BLOOM with apply_residual_connection_post_layernorm is not supported")
    return {"norm": "layer", "rms_norm_eps": float(raw.get("layer_norm_epsilon", 1e-5)), "mlp": "plain",
            "activation": "gelu_tanh", "fused_qkv": True, "attention_bias": True, "o_bias": True, "mlp_bias": True,
            "positional": "alibi", "embed_norm": True, "hidden_size": hidden, "num_heads": heads,
            "num_kv_heads": heads, "head_dim": hidden // heads, "intermediate_size": 4 * hidden,
            "num_layers": raw.get("n_layer") or raw["num_hidden_layers"],
            "tie_word_embeddings": bool(raw.get("tie_word_embeddings", True))}


def _moe_fields(raw, path, *, experts_key=("num_experts", "num_local_experts")) -> dict:
    experts = next((raw[k] for k in experts_key if raw.get(k)), 0)
    layers = raw["num_hidden_layers"]
    step = int(raw.get("decoder_sparse_step", 1) or 1)
    dense = tuple(sorted(set(raw.get("mlp_only_layers") or []) | {i for i in range(layers) if (i + 1) % step}))
    return {"num_experts": int(experts), "num_experts_per_tok": int(raw["num_experts_per_tok"]),
            "moe_intermediate_size": int(raw.get("moe_intermediate_size") or raw["intermediate_size"]),
            "norm_topk_prob": bool(raw.get("norm_topk_prob", False)), "dense_layers": dense}


def _mixtral(raw, path):
    return {**_mistral(raw, path), **_moe_fields(raw, path), "norm_topk_prob": True,
            "moe_intermediate_size": int(raw["intermediate_size"])}


def _qwen2_moe(raw, path):
    return {**_qwen2(raw, path), **_moe_fields(raw, path),
            "shared_expert_size": int(raw.get("shared_expert_intermediate_size") or 0),
            "attention_bias": bool(raw.get("qkv_bias", True))}


def _qwen3_moe(raw, path):
    return {**_qwen3(raw, path), **_moe_fields(raw, path)}


def _olmoe(raw, path):
    return {**_moe_fields(raw, path), "qk_norm": "full", "clip_qkv": raw.get("clip_qkv"),
            "moe_intermediate_size": int(raw["intermediate_size"]),  # OLMoE's experts have the dense width
            "attention_bias": bool(raw.get("attention_bias", False))}


def _mamba_config(raw, path):
    hidden = raw["hidden_size"]
    eos = raw.get("eos_token_id")
    return MambaConfig(
        vocab_size=raw["vocab_size"], hidden_size=hidden,
        intermediate_size=int(raw.get("intermediate_size") or raw.get("expand", 2) * hidden),
        num_layers=raw["num_hidden_layers"], state_size=int(raw.get("state_size", 16)),
        conv_kernel=int(raw.get("conv_kernel", 4)),
        dt_rank=int(raw["time_step_rank"]) if raw.get("time_step_rank") not in (None, "auto") else -(-hidden // 16),
        rms_norm_eps=float(raw.get("layer_norm_epsilon", 1e-5)), use_bias=bool(raw.get("use_bias", False)),
        use_conv_bias=bool(raw.get("use_conv_bias", True)),
        tie_word_embeddings=bool(raw.get("tie_word_embeddings", True)), bos_token_id=raw.get("bos_token_id"),
        eos_token_id=eos[0] if isinstance(eos, list) else eos)


_MAMBA_LAYER = (("norm.weight", "input_norm/scale"),
                *(pair for p in ("in_proj", "x_proj", "dt_proj", "out_proj", "conv1d")
                  for pair in _linear_pair(f"mixer.{p}", f"mixer/{p}")),
                ("mixer.A_log", "mixer/A_log"), ("mixer.D", "mixer/D"))

FAMILIES = {
    "LlamaForCausalLM": Family("llama", _llama, _LLAMA_TOP, _LLAMA_LAYER),
    "MistralForCausalLM": Family("mistral", _mistral, _LLAMA_TOP, _LLAMA_LAYER),
    "Qwen2ForCausalLM": Family("qwen2", _qwen2, _LLAMA_TOP, _LLAMA_LAYER),
    "Qwen3ForCausalLM": Family("qwen3", _qwen3, _LLAMA_TOP, _LLAMA_LAYER),
    "GemmaForCausalLM": Family("gemma", _gemma, _LLAMA_TOP, _LLAMA_LAYER),
    "Gemma2ForCausalLM": Family("gemma2", _gemma2, _LLAMA_TOP, _GEMMA2_LAYER),
    "Gemma3ForCausalLM": Family("gemma3", _gemma3, _LLAMA_TOP, _GEMMA2_LAYER),
    # transformers saves the text model as language_model.model.* (older hub files: the same; newer
    # ones: model.language_model.*); the vision tower and projector are not read
    "Gemma3ForConditionalGeneration": Family(
        "gemma3", _gemma3, _LLAMA_TOP, _GEMMA2_LAYER,
        prefixes=("language_model.model.", "model.language_model.", "language_model."), text_config="text_config"),
    "Phi3ForCausalLM": Family("phi3", _phi3, _LLAMA_TOP, _LLAMA_LAYER),
    "StableLmForCausalLM": Family("stablelm", _stablelm, _LLAMA_TOP, _LLAMA_LAYER),
    "GPTNeoXForCausalLM": Family(
        "gpt_neox", _gpt_neox, (("embed_in.weight", "embed/embedding"), *_norm_pair("final_layer_norm", "final_norm"),
                                ("embed_out.weight", "lm_head/kernel")),
        _NEOX_LAYER, prefixes=("gpt_neox.",), qkv=_per_head_qkv),
    "FalconForCausalLM": Family(
        "falcon", _falcon, (("word_embeddings.weight", "embed/embedding"), *_norm_pair("ln_f", "final_norm"),
                            ("lm_head.weight", "lm_head/kernel")),
        _FALCON_LAYER, prefixes=("transformer.",), layers="h", qkv=_falcon_qkv),
    "OPTForCausalLM": Family(
        "opt", _opt, (("embed_tokens.weight", "embed/embedding"), ("embed_positions.weight", "pos_embed/embedding"),
                      *_norm_pair("final_layer_norm", "final_norm"), ("lm_head.weight", "lm_head/kernel"),
                      ("project_in.weight", "project_in/kernel"), ("project_out.weight", "project_out/kernel")),
        _OPT_LAYER, prefixes=("model.decoder.", "decoder.")),
    "BloomForCausalLM": Family("bloom", _bloom, _BLOOM_TOP, _NEOX_LAYER[:4] + (
        *_linear_pair("self_attention.query_key_value", "attn/qkv_proj"),
        *_linear_pair("self_attention.dense", "attn/o_proj"), *_NEOX_LAYER[8:]),
        prefixes=("transformer.",), layers="h", qkv=_per_head_qkv),
    "MixtralForCausalLM": Family("mixtral", _mixtral, _LLAMA_TOP, _MIXTRAL_LAYER),
    "Qwen2MoeForCausalLM": Family("qwen2_moe", _qwen2_moe, _LLAMA_TOP, _QWEN_MOE_LAYER),
    "Qwen3MoeForCausalLM": Family("qwen3_moe", _qwen3_moe, _LLAMA_TOP, _QWEN_MOE_LAYER),
    "OlmoeForCausalLM": Family("olmoe", _olmoe, _LLAMA_TOP, _QWEN_MOE_LAYER),
    "MambaForCausalLM": Family(
        "mamba", None, (("embeddings.weight", "embed/embedding"), ("norm_f.weight", "final_norm/scale"),
                        ("lm_head.weight", "lm_head/kernel")),
        _MAMBA_LAYER, prefixes=("backbone.",), make_config=_mamba_config),
}
