"""Quantization: the recipe, the method registry, the methods, calibration, storage.

  Recipe, apply_recipe (recipe.py)  what is quantized (weights, activations, KV cache) and how, one
                                    text form: `Recipe.parse("gptq:w4g128,a8,kv4")`
  get_method, method_names (registry.py)  the weight methods, each declared in its own module
  quantize (quantize.py)  the engine: SmoothQuant, then the weight method, with a report
  map_params_by_rule, DEFAULT_WEIGHT_PATTERN (rules.py)  generic (regex, value) rules over param paths
  quantize_rtn, rtn_quantize_params (rtn.py)  round-to-nearest
  save_params, restore_params, params_nbytes, params_bits_per_param (storage.py)
Calibrated methods (GPTQ, SpQR, AWQ, ...) live in their own modules of this package; the quantized
array types (QArray, specs, grids, packing) in `qjax.formats`.
"""

from qjax.quant.recipe import Recipe, apply_recipe
from qjax.quant.registry import get_method, method_names
from qjax.quant.rtn import quantize_rtn, rtn_quantize_params
from qjax.quant.rules import (DEFAULT_WEIGHT_PATTERN, RuleReport, compile_rules, default_rules,
                              flatten_params, map_params_by_rule)
from qjax.quant.storage import (params_bits_per_param, params_nbytes, params_numel, restore_params,
                                save_params)

__all__ = ["Recipe", "apply_recipe", "get_method", "method_names", "quantize_rtn", "rtn_quantize_params", "DEFAULT_WEIGHT_PATTERN", "RuleReport",
           "compile_rules", "default_rules", "flatten_params", "map_params_by_rule", "save_params",
           "restore_params", "params_nbytes", "params_numel", "params_bits_per_param"]
