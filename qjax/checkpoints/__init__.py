"""Checkpoints -> (ModelConfig, params pytree, tokenizer): GGUF files, HF directories, hub ids."""

from qjax.checkpoints.errors import CheckpointError
from qjax.checkpoints.gguf_reader import load_gguf
from qjax.checkpoints.hf_reader import load_hf_dir
from qjax.checkpoints.registry import BUILTIN_MODELS, LoadedModel, load_model, resolve

__all__ = ["CheckpointError", "load_gguf", "load_hf_dir", "load_model", "resolve", "LoadedModel",
           "BUILTIN_MODELS"]
