"""lm-evaluation-harness with qjax models: registers the lm-eval model `qjax` (a `QjaxLM` that loads
its checkpoint from `--model_args`) and runs lm-eval's command line.

  python experiments/lm_eval_qjax.py run --model qjax --model_args model=smollm2-135m --tasks arc_easy --limit 50
  python experiments/lm_eval_qjax.py run --model qjax --model_args model=smollm2-135m,recipe=w8sym;a8 --tasks piqa
  python experiments/lm_eval_qjax.py run --model qjax \\
      --model_args model=smollm2-135m,quant_config=results/ckpt/gptq_w4 --tasks arc_easy

model_args: model (a `qjax.checkpoints.load_model` name or path), quant_config (a quantized
checkpoint saved by `qjax.quant.storage`, e.g. by experiments/quantize.py), recipe (a
`qjax.quant.recipe` text with ";" for its commas, which lm-eval's model_args reserve:
`gptq:w4g128;a8;kv4`; calibrated recipes draw `qjax.data.corpus.CalibrationData()`'s windows),
batch_size, max_length,
compute_dtype. Quantized weights are scored through their dequantized values (the same arithmetic
as the quantized matmul path). Needs the `bench` extra (lm-eval).

As in every qjax script, the errors a user can cause (a missing model or data file, a checkpoint of
another model, a bad recipe) print one line `error: ...` and exit with status 1; `--verbose` (taken
out before lm-eval reads its arguments) prints the traceback too.
"""

from __future__ import annotations

import sys
from typing import Optional

from lm_eval.api.registry import register_model

try:  # run as a script (experiments/ on sys.path) or imported as experiments.*
    from cli import USER_ERRORS, ConfigError, report_error
except ImportError:
    from experiments.cli import USER_ERRORS, ConfigError, report_error
from qjax.eval.lm_eval_model import QjaxLM
from qjax.ops.runtime import Runtime


def load_for_lm_eval(model: str, quant_config: Optional[str] = None, recipe: Optional[str] = None,
                     compute_dtype: str = "float32"):
    """(config, params, tokenizer, runtime, runtime_state) of a float or quantized qjax model."""
    from qjax.checkpoints import load_model
    from qjax.quant.calibration import dequantized

    from qjax.quant.recipe import Recipe, apply_recipe

    try:  # before any loading: a bad recipe fails at once
        parsed = Recipe.parse(recipe.replace(";", ",")) if recipe else None
    except ValueError as e:
        raise ConfigError(f"--model_args recipe={recipe}: {e}") from None
    config, params, tokenizer = load_model(model)
    runtime, state = Runtime(compute_dtype=compute_dtype), None
    if quant_config:
        from qjax.quant.storage import restore_params

        params = restore_params(quant_config, like=params)  # StoredParamsError if not this model's
    if parsed is not None:
        applied = apply_recipe(parsed, params, config, tokenizer, compute_dtype=compute_dtype)
        params, runtime, state = applied.params, applied.runtime, applied.runtime_state
    return config, dequantized(params), tokenizer, runtime, state


@register_model("qjax")
class QjaxCheckpointLM(QjaxLM):
    """`QjaxLM` built from lm-eval's --model_args (module docstring)."""

    def __init__(self, model: str = "smollm2-135m", quant_config: Optional[str] = None, recipe: Optional[str] = None,
                 batch_size=16, max_length=None, compute_dtype: str = "float32", seed: int = 0, **ignored):
        config, params, tokenizer, runtime, state = load_for_lm_eval(model, quant_config, recipe, compute_dtype)
        size = 16 if str(batch_size).startswith("auto") else int(batch_size)
        name = model + (f"+{recipe}" if recipe else "") + (f"+{quant_config}" if quant_config else "")
        super().__init__(config, params, tokenizer, runtime=runtime, runtime_state=state, batch_size=size,
                         max_length=None if max_length is None else int(max_length), seed=int(seed), name=name)


def main(argv: list[str]) -> int:
    """lm-eval's command line over `argv` (without the program name), user errors as one line."""
    from lm_eval.__main__ import cli_evaluate

    show_traceback = "--verbose" in argv
    argv = [a for a in argv if a != "--verbose"]
    sys.argv = [sys.argv[0], *argv]
    try:
        cli_evaluate()
    except USER_ERRORS as e:
        report_error(e, show_traceback)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
