"""Hugging Face checkpoint directories (config.json + safetensors) -> (ModelConfig, params)."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import numpy as np

from qjax.checkpoints.convert import build_params
from qjax.checkpoints.errors import CheckpointError
from qjax.checkpoints.hf_families import FAMILIES, Family, rope_fields
from qjax.models.config import ModelConfig


def family_of(raw: dict, path: Path) -> Family:
    """The `Family` of a config.json's `architectures`; CheckpointError naming them when unknown."""
    archs = raw.get("architectures") or []
    known = [a for a in archs if a in FAMILIES]
    if not known:
        raise CheckpointError(
            f"{path}: unknown architecture {archs or raw.get('model_type')!r}; supported: {sorted(FAMILIES)}")
    return FAMILIES[known[0]]


def read_config(directory: Path) -> ModelConfig:
    path = directory / "config.json"
    if not path.is_file():
        raise CheckpointError(f"{path}: config.json not found")
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}: not valid JSON: {e}") from e
    family = family_of(raw, path)
    try:
        parts = family.parts(raw, path)
        heads = parts.get("num_heads") or raw["num_attention_heads"]
        hidden = parts.get("hidden_size") or raw["hidden_size"]
        eos = raw.get("eos_token_id")
        fields = dict(
            architecture=family.architecture,
            vocab_size=raw["vocab_size"],
            hidden_size=hidden,
            intermediate_size=raw.get("intermediate_size"),
            num_layers=raw.get("num_hidden_layers"),
            num_heads=heads,
            num_kv_heads=raw.get("num_key_value_heads") or heads,
            head_dim=raw.get("head_dim") or hidden // heads,
            rms_norm_eps=raw.get("rms_norm_eps", 1e-6),
            max_position_embeddings=raw.get("max_position_embeddings", 2048),
            tie_word_embeddings=bool(raw.get("tie_word_embeddings", False)),
            attention_bias=bool(raw.get("attention_bias", False)),
            bos_token_id=raw.get("bos_token_id"),
            eos_token_id=eos[0] if isinstance(eos, list) else eos,
            **rope_fields(raw, path),
        )
        fields.update(parts)
        return ModelConfig(**fields)
    except KeyError as e:
        raise CheckpointError(f"{path}: config.json lacks {e.args[0]!r}, which {family.architecture} needs") from e
    except (TypeError, ValueError) as e:
        if isinstance(e, CheckpointError):
            raise
        raise CheckpointError(f"{path}: inconsistent {family.architecture} config: {e}") from e


def _safetensors_files(directory: Path) -> list[Path]:
    index = directory / "model.safetensors.index.json"
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError) as e:
            raise CheckpointError(f"{index}: malformed safetensors index: {e}") from e
        files = [directory / name for name in sorted(set(weight_map.values()))]
    else:
        files = sorted(directory.glob("*.safetensors"))
    if not files:
        raise CheckpointError(f"{directory}: no *.safetensors files found")
    for f in files:
        if not f.is_file():
            raise CheckpointError(f"{f}: safetensors shard listed in the index is missing")
    return files


def _read_tensors(file: Path) -> dict[str, np.ndarray]:
    from safetensors import safe_open

    try:
        out = {}
        with safe_open(str(file), framework="flax") as f:
            for name in f.keys():
                out[name] = np.asarray(f.get_tensor(name), np.float32)
        return out
    except Exception as e:  # SafetensorError on truncated or corrupt headers/data
        raise CheckpointError(f"{file}: not a readable safetensors file (truncated or corrupt?): {e}") from e


def map_tensor_names(names, family: Family, directory: Path) -> dict[str, tuple[str, str]]:
    """HF tensor name -> (qjax path, layer prefix) for every name the family knows (others, e.g.
    rotary caches, are left out)."""
    top, layer = family.compiled()
    layer_name = re.compile(rf"{re.escape(family.layers)}\.(\d+)\.(.+)")
    out = {}
    for name in names:
        short = next((name[len(p):] for p in family.prefixes if name.startswith(p)), name)
        m = layer_name.fullmatch(short)
        table, rest, stem = (layer, m.group(2), f"layers_{m.group(1)}/") if m else (top, short, "")
        for pattern, target in table:
            e = pattern.fullmatch(rest)
            if e:
                out[name] = stem + (target.replace("{e}", e.group(1)) if e.groups() else target)
                break
    return out


def load_hf_dir(directory: str | Path) -> tuple[ModelConfig, dict]:
    """Loads config.json and every (possibly sharded) safetensors file into float32 qjax params."""
    directory = Path(directory)
    config = read_config(directory)
    raw = json.loads((directory / "config.json").read_text())
    family = family_of(raw, directory)
    reorder = family.qkv(raw, dataclasses.asdict(config)) if family.qkv else None
    flat: dict[str, np.ndarray] = {}
    for file in _safetensors_files(directory):
        tensors = _read_tensors(file)
        for name, path in map_tensor_names(tensors, family, directory).items():
            w = tensors[name]
            if reorder is not None and "/qkv_proj/" in path:
                try:
                    w = reorder(w)
                except ValueError as e:
                    raise CheckpointError(f"{file}: tensor {name} has shape {tuple(w.shape)}, which does not split "
                                          f"into the config's q/k/v heads: {e}") from e
            flat[path] = w.T if path.endswith("/kernel") else w
    if config.tie_word_embeddings:
        flat.pop("lm_head/kernel", None)
    return config, build_params(flat, config, str(directory), family.hf_name)
