"""lm-evaluation-harness with qjax models: registers the lm-eval model `qjax` (a `QjaxLM` that loads
its checkpoint from `--model_args`) and runs lm-eval's command line.

  python experiments/lm_eval_qjax.py run --model qjax --model_args model=smollm2-135m --tasks arc_easy --limit 50
  python experiments/lm_eval_qjax.py run --model qjax --model_args model=smollm2-135m,setting=W8A8 --tasks piqa
  python experiments/lm_eval_qjax.py run --model qjax \\
      --model_args model=smollm2-135m,quant_config=results/ckpt/gptq_w4 --tasks arc_easy

model_args: model (a `qjax.checkpoints.load_model` name or path), quant_config (a quantized
checkpoint saved by `qjax.quant.storage`, e.g. by experiments/quantize.py), setting (a W/A/KV setting
of `qjax.quant.activations.parse_setting`: W8A8, W4A16, KV4, ...), batch_size, max_length,
compute_dtype. Quantized weights are scored through their dequantized values (the same arithmetic
as the quantized matmul path). Needs the `bench` extra (lm-eval).
"""

from __future__ import annotations

from typing import Optional

from lm_eval.api.registry import register_model

from qjax.eval.lm_eval_model import QjaxLM
from qjax.ops.runtime import Runtime


def load_for_lm_eval(model: str, quant_config: Optional[str] = None, setting: Optional[str] = None,
                     compute_dtype: str = "float32"):
    """(config, params, tokenizer, runtime, runtime_state) of a float or quantized qjax model."""
    from qjax.checkpoints import load_model
    from qjax.quant.calibration import dequantized

    config, params, tokenizer = load_model(model)
    runtime, state = Runtime(compute_dtype=compute_dtype), None
    if quant_config:
        from qjax.quant.storage import restore_params

        params = restore_params(quant_config)
    if setting:
        from qjax.quant.activations import apply_setting, parse_setting

        params, runtime, state = apply_setting(params, config, parse_setting(setting), compute_dtype=compute_dtype)
    return config, dequantized(params), tokenizer, runtime, state


@register_model("qjax")
class QjaxCheckpointLM(QjaxLM):
    """`QjaxLM` built from lm-eval's --model_args (module docstring)."""

    def __init__(self, model: str = "smollm2-135m", quant_config: Optional[str] = None, setting: Optional[str] = None,
                 batch_size=16, max_length=None, compute_dtype: str = "float32", seed: int = 0, **ignored):
        config, params, tokenizer, runtime, state = load_for_lm_eval(model, quant_config, setting, compute_dtype)
        size = 16 if str(batch_size).startswith("auto") else int(batch_size)
        name = model + (f"+{setting}" if setting else "") + (f"+{quant_config}" if quant_config else "")
        super().__init__(config, params, tokenizer, runtime=runtime, runtime_state=state, batch_size=size,
                         max_length=None if max_length is None else int(max_length), seed=int(seed), name=name)


if __name__ == "__main__":
    from lm_eval.__main__ import cli_evaluate

    cli_evaluate()
