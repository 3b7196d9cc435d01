"""qjax GPTQ vs llm-compressor GPTQ (CPU) on SmolLM2-135M: same calibration and evaluation windows.

llm-compressor 0.14 pins transformers<=5.17 (the main venv has a newer one), so this runs from a
separate venv, `make bench-venv`, holding llm-compressor, compressed-tensors and transformers 5.17
(torch 2.13.0+cpu), which sees the main venv's packages (jax, flax, qjax) after its own:

  make bench-venv
  .venv-bench/bin/python benchmarks/gptq_vs_llmcompressor.py --calib_windows=32 --calib_seqlen=512

Both sides quantize every decoder linear to `bits` with asymmetric min-max groups of `group_size`
input features and the same GPTQ variant: llm-compressor's default activation ordering "static"
(columns by descending diag(H), group statistics fitted on the original weight before any update)
is qjax's act_order + static_groups; dampening 0.01, block 128. Calibration: the same N windows
(qjax.quant.calibration, WikiText-2 valid); evaluation: the same first `eval_windows` windows of
WikiText-2 test at `eval_seqlen` tokens, perplexity by the GPTQ protocol. llm-compressor's model is
scored twice: by torch (its own forward) and by qjax after copying its fake-quantized weights
(isolating the algorithm from the evaluator). Prints perplexities, quantize seconds and the ratios.
"""

from __future__ import annotations

import math
import tempfile
import time

import numpy as np
from absl import app, flags

_BITS = flags.DEFINE_integer("bits", 4, "weight bits")
_GROUP = flags.DEFINE_integer("group_size", 128, "group size along the input dimension")
_ACTORDER = flags.DEFINE_bool("actorder", True, "act-order with static groups (llm-compressor's default)")
_CALIB_WINDOWS = flags.DEFINE_integer("calib_windows", 32, "calibration windows")
_CALIB_SEQLEN = flags.DEFINE_integer("calib_seqlen", 512, "calibration window length")
_EVAL_WINDOWS = flags.DEFINE_integer("eval_windows", 8, "WikiText-2 test windows scored")
_EVAL_SEQLEN = flags.DEFINE_integer("eval_seqlen", 2048, "evaluation window length")
_SEED = flags.DEFINE_integer("seed", 0, "calibration window seed")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "data directory (default: $QJAX_DATA_DIR)")
_THREADS = flags.DEFINE_integer("torch_threads", 0, "torch intra-op threads (0: torch's default)")

SITES = {"q_proj": "attn", "k_proj": "attn", "v_proj": "attn", "o_proj": "attn", "gate_proj": "mlp",
         "up_proj": "mlp", "down_proj": "mlp"}


def torch_perplexity(model, windows: np.ndarray) -> float:
    """GPTQ-protocol perplexity of a transformers causal LM over (n, T) windows."""
    import torch

    total = 0.0
    with torch.no_grad():
        for row in windows:
            ids = torch.as_tensor(row[None].astype(np.int64))
            logits = model(ids).logits[0, :-1].double()
            total += float(torch.nn.functional.cross_entropy(logits, ids[0, 1:], reduction="sum"))
    return math.exp(total / (windows.shape[0] * (windows.shape[1] - 1)))


def hf_to_qjax(model, params: dict) -> dict:
    """qjax params with every decoder linear replaced by the HF model's (out, in) weight, transposed."""
    import jax.numpy as jnp

    new = {k: v for k, v in params.items()}
    for i, layer in enumerate(model.model.layers):
        block = {k: ({kk: dict(vv) for kk, vv in v.items()} if k in ("attn", "mlp") else v)
                 for k, v in params[f"layers_{i}"].items()}
        for name, group in SITES.items():
            mod = getattr(layer.self_attn if group == "attn" else layer.mlp, name)
            block[group][name]["kernel"] = jnp.asarray(mod.weight.detach().float().numpy().T)
        new[f"layers_{i}"] = block
    return new


def main(argv):
    del argv
    import torch

    from qjax.checkpoints import load_model, resolve
    from qjax.data.corpus import CalibrationData, calibration_tokens, load_windows
    from qjax.eval.perplexity import perplexity_of_windows
    from qjax.quant.gptq import GPTQConfig
    from qjax.quant.quantize import QuantizeConfig, quantize

    if _THREADS.value:
        torch.set_num_threads(_THREADS.value)
    config, params, tokenizer = load_model("smollm2-135m")
    calib = calibration_tokens(tokenizer, CalibrationData(num_windows=_CALIB_WINDOWS.value,
                                                          seqlen=_CALIB_SEQLEN.value, seed=_SEED.value),
                               _DATA_DIR.value)
    windows = load_windows(tokenizer, "wikitext2", "test", _EVAL_SEQLEN.value, _EVAL_WINDOWS.value, _DATA_DIR.value)
    print(f"calibration {calib.shape[0]} x {calib.shape[1]} tokens (wikitext2 valid, seed {_SEED.value}); "
          f"evaluation {windows.shape[0]} x {windows.shape[1]} tokens (wikitext2 test)", flush=True)

    def qjax_ppl(p):
        return perplexity_of_windows(p, config, windows, progress=False)["ppl"]

    rows = {"float (qjax)": (qjax_ppl(params), None)}

    # ---------------- qjax
    qcfg = QuantizeConfig(method="gptq", bits=_BITS.value, group_size=_GROUP.value, symmetric=False,
                          gptq=GPTQConfig(act_order=_ACTORDER.value, static_groups=_ACTORDER.value))
    start = time.perf_counter()
    qparams, report = quantize(params, config, qcfg, calib, progress=False)
    t_qjax = time.perf_counter() - start
    rows["qjax GPTQ"] = (qjax_ppl(qparams), t_qjax)
    print(f"qjax: quantized in {t_qjax:.1f}s, {report['bits_per_param']:.3f} bits/param", flush=True)
    del qparams

    # ---------------- llm-compressor
    import transformers
    from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme
    from datasets import Dataset
    from llmcompressor import oneshot
    from llmcompressor.modifiers.quantization import GPTQModifier

    gguf = resolve("smollm2-135m")
    model = transformers.AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name,
                                                              torch_dtype=torch.float32)
    hf_tokenizer = transformers.AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    # llm-compressor re-reads the model's config from model.name_or_path, which must be a Hugging Face
    # directory (config.json), not the GGUF's folder: round-trip the dequantized weights through one
    # (a fresh model without the GGUF quantizer, which transformers refuses to serialize).
    hf_dir = tempfile.mkdtemp(prefix="smollm2-hf-")
    hf_config = model.config
    if hasattr(hf_config, "quantization_config"):
        del hf_config.quantization_config
    plain = transformers.AutoModelForCausalLM.from_config(hf_config, torch_dtype=torch.float32)
    plain.load_state_dict(model.state_dict())
    plain.save_pretrained(hf_dir)
    del plain
    hf_tokenizer.save_pretrained(hf_dir)
    model = transformers.AutoModelForCausalLM.from_pretrained(hf_dir, torch_dtype=torch.float32).eval()
    float_hf = hf_to_qjax(model, params)
    diff = max(float(np.max(np.abs(np.asarray(float_hf[f"layers_{i}"][g][n]["kernel"])
                                    - np.asarray(params[f"layers_{i}"][g][n]["kernel"]))))
               for i in range(config.num_layers) for n, g in SITES.items())
    print(f"transformers GGUF weights vs qjax GGUF weights: max |diff| {diff:.2e}", flush=True)
    rows["float (torch)"] = (torch_perplexity(model, windows), None)
    scheme = QuantizationScheme(targets=["Linear"], weights=QuantizationArgs(
        num_bits=_BITS.value, type="int", symmetric=False, strategy="group", group_size=_GROUP.value,
        observer="minmax", actorder="static" if _ACTORDER.value else None))
    recipe = GPTQModifier(config_groups={"group_0": scheme}, ignore=["lm_head"], block_size=128,
                          dampening_frac=0.01, actorder="static" if _ACTORDER.value else None)
    data = Dataset.from_dict({"input_ids": [r.tolist() for r in calib],
                              "attention_mask": [[1] * calib.shape[1] for _ in range(calib.shape[0])]})
    start = time.perf_counter()
    oneshot(model=model, processor=hf_tokenizer, dataset=data, recipe=recipe, max_seq_length=calib.shape[1],
            num_calibration_samples=calib.shape[0], shuffle_calibration_samples=False)
    t_llmc = time.perf_counter() - start
    print(f"llm-compressor: quantized in {t_llmc:.1f}s", flush=True)
    rows["llm-compressor GPTQ (torch eval)"] = (torch_perplexity(model, windows), t_llmc)
    rows["llm-compressor GPTQ (qjax eval)"] = (qjax_ppl(hf_to_qjax(model, params)), t_llmc)

    print(f"\nSmolLM2-135M, W{_BITS.value} g{_GROUP.value} asymmetric, act-order static={_ACTORDER.value}; "
          f"{calib.shape[0]}x{calib.shape[1]} calibration, {windows.shape[0]}x{windows.shape[1]} WikiText-2 test")
    print(f"{'':34} {'ppl':>9} {'quantize s':>11}")
    for name, (ppl, secs) in rows.items():
        print(f"{name:34} {ppl:>9.3f} {'' if secs is None else f'{secs:>11.1f}'}")
    ppl_q, ppl_l = rows["qjax GPTQ"][0], rows["llm-compressor GPTQ (qjax eval)"][0]
    print(f"ratios qjax / llm-compressor: ppl {ppl_q / ppl_l:.4f} (same evaluator), "
          f"quantize time {t_qjax / t_llmc:.3f}")


if __name__ == "__main__":
    app.run(main)
