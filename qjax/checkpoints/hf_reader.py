"""Hugging Face checkpoint directories (config.json + safetensors) -> (ModelConfig, params)."""

from __future__ import annotations

import dataclasses
import json
import logging
import re
from pathlib import Path
from typing import Callable

import numpy as np

from qjax.checkpoints.convert import build_params
from qjax.checkpoints.errors import CheckpointError
from qjax.checkpoints.hf_families import FAMILIES, Family, rope_fields
from qjax.models.config import ModelConfig

log = logging.getLogger(__name__)


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
    return config_from_raw(raw, path)


def config_from_raw(raw: dict, path) -> ModelConfig:
    """The config of a parsed config.json (`raw`; `path` names it in errors): the family's parts
    (`Family.parts`) over the fields every family reads the same way."""
    family = family_of(raw, path)
    if family.text_config is not None:
        if not isinstance(raw.get(family.text_config), dict):
            raise CheckpointError(f"{path}: a {raw['architectures'][0]} config needs a {family.text_config!r} dict")
        log.info("%s: reading the text model of %s (its vision tower is not loaded)", path, raw["architectures"][0])
        raw = family.model_config(raw)
    try:
        if family.make_config is not None:  # a model other than the decoder (Mamba)
            return family.make_config(raw, path)
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
    """(config, float32 params on the default device) of an HF directory (config.json and possibly
    sharded safetensors), streamed tensor by tensor (`mesh_loader.load_hf_dir_on_mesh`)."""
    from qjax.checkpoints.mesh_loader import load_hf_dir_on_mesh  # it builds on this module

    return load_hf_dir_on_mesh(directory, None, dtype="float32")


def params_from_tensors(tensors: dict[str, np.ndarray], raw: dict, config, source: str,
                        tensor_name: Callable[[str], str] | None = None) -> dict:
    """The params pytree of in-memory HF tensors (HF name -> (out, in) float array, as
    `save_pretrained` writes them) of the family of `raw` (config.json) and `config`.

    The same mapping as the streaming loader (`mesh_loader.load_hf_dir_on_mesh`): names by
    `map_tensor_names`, the family's fixes (`Family.tensor_fixes`), 2-D kernels transposed to (in, out).
    Errors (CheckpointError) name `source`, the qjax path and `tensor_name(path)` (default: the HF
    name); tensors the family does not know are ignored.
    """
    family = family_of(raw, source)
    fix_for = family.tensor_fixes(raw, dataclasses.asdict(config))
    tensor_name = tensor_name or family.hf_name
    flat = {}
    for name, path in map_tensor_names(tensors, family, source).items():
        w = tensors[name]
        fix = fix_for(path)
        if fix is not None:
            try:
                w = fix(w)
            except ValueError as e:
                raise CheckpointError(f"{source}: tensor {tensor_name(path)} has shape {tuple(w.shape)}, which does "
                                      f"not split into the config's q/k/v heads: {e}") from e
        flat[path] = w.T if path.endswith("/kernel") and w.ndim == 2 else w
    return build_params(flat, config, source, tensor_name)
