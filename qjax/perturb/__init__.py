"""The perturbation lens: quantization viewed as a perturbation of weights and activations.

  kinds        pure perturbation functions kind(x, amount, key) with traced amount and key:
               Gaussian, Uniform, Rademacher, Proportional, Enlarge, Shrink, Confined, Clip, QuantError
  weights      perturb_params(params, rules, intensity, key) by the quantization rules' regexes;
               GridRoundTrip(spec), quantization_error, quantize_params (the quant core's grids)
  activations  PerturbActivation / FakeQuantActivation transforms for `Runtime.activations`,
               perturb_runtime, perturb_state, site_id
  sweep        sweep(evaluate, params, kinds, amounts, seeds, target=...) — one compilation per kind;
               NLLEvaluator (mean NLL on fixed token windows), WeightTarget, ActivationTarget
"""

from qjax.perturb.activations import (FakeQuantActivation, PerturbActivation, linear_sites, perturb_runtime,
                                      perturb_state, site_id, with_activation_rule)
from qjax.perturb.kinds import (KINDS, Clip, Confined, Enlarge, Gaussian, Kind, Proportional, QuantError,
                                Rademacher, Shrink, Uniform, make_kind, relative_l2)
from qjax.perturb.sweep import (ActivationTarget, NLLEvaluator, SweepResult, WeightTarget, evaluate_point,
                                sweep)
from qjax.perturb.weights import GridRoundTrip, perturb_params, quantization_error, quantize_params

__all__ = ["Kind", "Gaussian", "Uniform", "Rademacher", "Proportional", "Enlarge", "Shrink", "Confined",
           "Clip", "QuantError", "KINDS", "make_kind", "relative_l2", "perturb_params", "GridRoundTrip",
           "quantization_error", "quantize_params", "PerturbActivation", "FakeQuantActivation",
           "perturb_runtime", "perturb_state", "with_activation_rule", "linear_sites", "site_id", "sweep",
           "SweepResult", "evaluate_point", "NLLEvaluator", "WeightTarget", "ActivationTarget"]
