"""Hugging Face checkpoint directories: config.json -> ModelConfig, tensor names -> qjax paths.

The reading and placing of the safetensors data is `mesh_loader` (over `safetensors_stream`)."""

from __future__ import annotations

import json
from pathlib import Path

from qjax.checkpoints.errors import CheckpointError
from qjax.models.config import ModelConfig, RopeScaling

_ARCHITECTURES = {
    "LlamaForCausalLM": "llama",
    "MistralForCausalLM": "mistral",
    "Qwen2ForCausalLM": "qwen2",
}
_LAYER_TENSORS = {
    "input_layernorm.weight": "input_norm/scale",
    "post_attention_layernorm.weight": "post_attn_norm/scale",
    "self_attn.q_proj.weight": "attn/q_proj/kernel",
    "self_attn.k_proj.weight": "attn/k_proj/kernel",
    "self_attn.v_proj.weight": "attn/v_proj/kernel",
    "self_attn.o_proj.weight": "attn/o_proj/kernel",
    "self_attn.q_proj.bias": "attn/q_proj/bias",
    "self_attn.k_proj.bias": "attn/k_proj/bias",
    "self_attn.v_proj.bias": "attn/v_proj/bias",
    "mlp.gate_proj.weight": "mlp/gate_proj/kernel",
    "mlp.up_proj.weight": "mlp/up_proj/kernel",
    "mlp.down_proj.weight": "mlp/down_proj/kernel",
}


def _rope_scaling(raw: dict | None, path: Path) -> RopeScaling | None:
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
    raise CheckpointError(f"{path}: unsupported rope_scaling type {kind!r} (supported: linear, llama3)")


def read_config(directory: Path) -> ModelConfig:
    path = directory / "config.json"
    if not path.is_file():
        raise CheckpointError(f"{path}: config.json not found")
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}: not valid JSON: {e}") from e
    archs = raw.get("architectures") or []
    known = [a for a in archs if a in _ARCHITECTURES]
    if not known:
        raise CheckpointError(
            f"{path}: unknown architecture {archs or raw.get('model_type')!r}; supported: {sorted(_ARCHITECTURES)}")
    arch = _ARCHITECTURES[known[0]]
    heads = raw["num_attention_heads"]
    rope_scaling = raw.get("rope_scaling") or raw.get("rope_parameters")
    rope_theta = raw.get("rope_theta") or (rope_scaling or {}).get("rope_theta") or 10000.0
    eos = raw.get("eos_token_id")
    return ModelConfig(
        architecture=arch,
        vocab_size=raw["vocab_size"],
        hidden_size=raw["hidden_size"],
        intermediate_size=raw["intermediate_size"],
        num_layers=raw["num_hidden_layers"],
        num_heads=heads,
        num_kv_heads=raw.get("num_key_value_heads") or heads,
        head_dim=raw.get("head_dim") or raw["hidden_size"] // heads,
        rms_norm_eps=raw.get("rms_norm_eps", 1e-6),
        rope_theta=float(rope_theta),
        rope_scaling=_rope_scaling(rope_scaling, path),
        max_position_embeddings=raw.get("max_position_embeddings", 2048),
        tie_word_embeddings=bool(raw.get("tie_word_embeddings", False)),
        attention_bias=arch == "qwen2" or bool(raw.get("attention_bias", False)),
        sliding_window=raw.get("sliding_window") if (arch == "mistral" or raw.get("use_sliding_window")) else None,
        bos_token_id=raw.get("bos_token_id"),
        eos_token_id=eos[0] if isinstance(eos, list) else eos,
    )


def hf_tensor_name(path: str) -> tuple[str, bool]:
    """(HF tensor name without the "model." prefix, stored transposed?) of a qjax parameter path:
    HF linears are stored (out, in), qjax kernels are (in, out)."""
    if path == "embed/embedding":
        return "embed_tokens.weight", False
    if path == "final_norm/scale":
        return "norm.weight", False
    if path == "lm_head/kernel":
        return "lm_head.weight", True
    layer, rest = path.split("/", 1)
    for name, qjax_rest in _LAYER_TENSORS.items():
        if qjax_rest == rest:
            return f"layers.{layer.removeprefix('layers_')}.{name}", name.endswith(".weight") and "norm" not in name
    raise KeyError(f"no Hugging Face tensor name for qjax parameter {path!r}")


def load_hf_dir(directory: str | Path) -> tuple[ModelConfig, dict]:
    """(config, float32 params on the default device) of an HF directory (config.json and possibly
    sharded safetensors), streamed tensor by tensor (`mesh_loader.load_hf_dir_on_mesh`)."""
    from qjax.checkpoints.mesh_loader import load_hf_dir_on_mesh  # it builds on this module

    return load_hf_dir_on_mesh(directory, None, dtype="float32")
