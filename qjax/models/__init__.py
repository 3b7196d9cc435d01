"""Llama-family decoder, its config and KV cache."""

from qjax.models.config import ModelConfig, RopeScaling
from qjax.models.kv_cache import cache_nbytes, init_cache
from qjax.models.llama import Decoder, DecoderLayer, forward, init_params, stack_cache, stack_layers

__all__ = ["ModelConfig", "RopeScaling", "Decoder", "DecoderLayer", "forward", "init_params", "stack_layers",
           "stack_cache",
           "init_cache", "cache_nbytes"]
