"""GGUF (llama.cpp) files -> (ModelConfig, params) with weights dequantized to float32."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from qjax.checkpoints.convert import build_params
from qjax.checkpoints.errors import CheckpointError
from qjax.models.config import ModelConfig, RopeScaling

# GGUF general.architecture -> qjax architecture. Mistral GGUFs are written as "llama".
_ARCHITECTURES = {"llama": "llama", "mistral": "mistral", "qwen2": "qwen2"}
_LAYER_TENSORS = {
    "attn_norm.weight": "input_norm/scale",
    "ffn_norm.weight": "post_attn_norm/scale",
    "attn_q.weight": "attn/q_proj/kernel",
    "attn_k.weight": "attn/k_proj/kernel",
    "attn_v.weight": "attn/v_proj/kernel",
    "attn_output.weight": "attn/o_proj/kernel",
    "attn_q.bias": "attn/q_proj/bias",
    "attn_k.bias": "attn/k_proj/bias",
    "attn_v.bias": "attn/v_proj/bias",
    "ffn_gate.weight": "mlp/gate_proj/kernel",
    "ffn_up.weight": "mlp/up_proj/kernel",
    "ffn_down.weight": "mlp/down_proj/kernel",
}


def open_gguf(path: str | Path):
    """A `gguf.GGUFReader`, with unreadable files reported as CheckpointError naming the file."""
    import gguf

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: GGUF file not found")
    try:
        return gguf.GGUFReader(str(path))
    except Exception as e:  # the reader raises ValueError, IndexError, struct errors on bad files
        raise CheckpointError(f"{path}: not a readable GGUF file (truncated or corrupt?): {e}") from e


def _field(reader, key, default=None):
    field = reader.fields.get(key)
    if field is None:
        return default
    value = field.contents()
    return value


def read_config(reader, path: Path) -> ModelConfig:
    arch = _field(reader, "general.architecture")
    if arch not in _ARCHITECTURES:
        raise CheckpointError(
            f"{path}: unknown architecture {arch!r}; supported GGUF architectures: {sorted(_ARCHITECTURES)}")

    def need(key):
        value = _field(reader, f"{arch}.{key}")
        if value is None:
            raise CheckpointError(f"{path}: GGUF metadata {arch}.{key} is missing")
        return value

    hidden = int(need("embedding_length"))
    heads = int(need("attention.head_count"))
    head_dim = int(_field(reader, f"{arch}.attention.key_length", 0) or
                   _field(reader, f"{arch}.rope.dimension_count", 0) or hidden // heads)
    tokens = _field(reader, "tokenizer.ggml.tokens")
    vocab = int(_field(reader, f"{arch}.vocab_size", 0) or (len(tokens) if tokens else 0))
    names = {t.name for t in reader.tensors}
    scaling = None
    scaling_type = _field(reader, f"{arch}.rope.scaling.type")
    if scaling_type in ("linear",):
        scaling = RopeScaling("linear", float(_field(reader, f"{arch}.rope.scaling.factor")))
    elif scaling_type not in (None, "none"):
        raise CheckpointError(f"{path}: unsupported rope scaling type {scaling_type!r}")
    return ModelConfig(
        architecture=_ARCHITECTURES[arch],
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=int(need("feed_forward_length")),
        num_layers=int(need("block_count")),
        num_heads=heads,
        num_kv_heads=int(_field(reader, f"{arch}.attention.head_count_kv", heads)),
        head_dim=head_dim,
        rms_norm_eps=float(need("attention.layer_norm_rms_epsilon")),
        rope_theta=float(_field(reader, f"{arch}.rope.freq_base", 10000.0)),
        rope_scaling=scaling,
        max_position_embeddings=int(_field(reader, f"{arch}.context_length", 2048)),
        tie_word_embeddings="output.weight" not in names,
        attention_bias="blk.0.attn_q.bias" in names,
        bos_token_id=_field(reader, "tokenizer.ggml.bos_token_id"),
        eos_token_id=_field(reader, "tokenizer.ggml.eos_token_id"),
    )


def unpermute_rope_rows(w: np.ndarray, n_head: int) -> np.ndarray:
    """Undoes llama.cpp's convert-time permutation of Q/K rows (interleaved -> HF rotate-half).

    w: (n_head * head_dim, in) in torch (out, in) layout.
    """
    rows = w.shape[0]
    return w.reshape(n_head, rows // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _dequantize(tensor, path: Path) -> np.ndarray:
    from gguf import quants

    shape = tuple(int(s) for s in reversed(tensor.shape))
    try:
        data = quants.dequantize(tensor.data, tensor.tensor_type)
    except NotImplementedError as e:
        raise CheckpointError(
            f"{path}: tensor {tensor.name} has type {tensor.tensor_type.name}, which gguf cannot dequantize") from e
    except Exception as e:
        raise CheckpointError(f"{path}: tensor {tensor.name} could not be read (truncated?): {e}") from e
    if int(np.prod(data.shape)) != int(np.prod(shape)):
        raise CheckpointError(f"{path}: tensor {tensor.name} holds {data.size} values, expected {shape}")
    return np.asarray(data, np.float32).reshape(shape)


def load_gguf(path: str | Path) -> tuple[ModelConfig, dict]:
    """Reads a llama-family GGUF: config from metadata, every tensor dequantized to float32.

    Returns params in the qjax layout (see `qjax.models.llama`). Q/K rows are un-permuted for
    llama-architecture files (llama.cpp permutes them for its interleaved RoPE; qwen2 is not permuted).
    """
    path = Path(path)
    reader = open_gguf(path)
    config = read_config(reader, path)
    arch = _field(reader, "general.architecture")
    flat: dict[str, np.ndarray] = {}
    for tensor in reader.tensors:
        name = tensor.name
        if name == "token_embd.weight":
            flat["embed/embedding"] = _dequantize(tensor, path)
        elif name == "output_norm.weight":
            flat["final_norm/scale"] = _dequantize(tensor, path)
        elif name == "output.weight":
            flat["lm_head/kernel"] = _dequantize(tensor, path).T
        elif name.startswith("blk."):
            _, layer, rest = name.split(".", 2)
            if rest not in _LAYER_TENSORS:
                continue
            w = _dequantize(tensor, path)
            if arch == "llama" and rest.startswith(("attn_q.", "attn_k.")):
                n = config.num_heads if rest.startswith("attn_q.") else config.num_kv_heads
                w = unpermute_rope_rows(w, n)
            flat[f"layers_{layer}/{_LAYER_TENSORS[rest]}"] = w.T if w.ndim == 2 else w
    return config, build_params(flat, config, str(path))
