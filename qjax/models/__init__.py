"""Llama-family decoder, its config and KV cache."""

from qjax.models.config import ModelConfig, RopeScaling
from qjax.models.kv_cache import cache_nbytes, init_cache
from qjax.models.llama import Decoder, DecoderLayer, forward, init_params

__all__ = ["ModelConfig", "RopeScaling", "Decoder", "DecoderLayer", "forward", "init_params",
           "init_cache", "cache_nbytes"]
