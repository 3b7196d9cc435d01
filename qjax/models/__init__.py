"""Decoder models assembled from declared parts (`ModelConfig`), their KV cache, and Mamba."""

from qjax.models.config import ModelConfig, RopeScaling
from qjax.models.decoder import Decoder, DecoderLayer, forward, init_params, stack_cache, stack_layers
from qjax.models.facts import model_facts, parameter_count
from qjax.models.kv_cache import cache_nbytes, init_cache
from qjax.models.mamba import MambaConfig

__all__ = ["ModelConfig", "RopeScaling", "MambaConfig", "model_facts", "parameter_count", "Decoder", "DecoderLayer", "forward", "init_params", "stack_layers",
           "stack_cache",
           "init_cache", "cache_nbytes"]
