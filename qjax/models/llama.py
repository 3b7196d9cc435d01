"""Old home of the decoder, kept so that `from qjax.models.llama import ...` still works: the
Llama family is now one declaration of parts of the decoder in `qjax.models.decoder` (which see)."""

from qjax.models.decoder import (BLOCKED_MIN_QUERIES, Attention, Decoder, DecoderLayer, linen_variables, causal_mask,
                                 decoder_inputs, forward, init_params, stack_cache, stack_layers)
from qjax.models.layers import FUSE_MIN_ROWS, Linear, Norm, sibling_linears
from qjax.models.mlp import MLP

__all__ = ["Attention", "Decoder", "DecoderLayer", "MLP", "Linear", "Norm", "sibling_linears", "causal_mask",
           "decoder_inputs", "forward", "init_params", "stack_cache", "stack_layers", "FUSE_MIN_ROWS",
           "BLOCKED_MIN_QUERIES", "linen_variables"]
