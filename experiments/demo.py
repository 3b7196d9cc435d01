"""Quickstart on SmolLM2-135M: float, RTN W4 and GPTQ W4 (groups of 128) perplexity on a few
WikiText-2 windows, printed as a table with each configuration's bits per parameter and bytes.

GPTQ calibrates on a small sample here (16 windows of 512 WikiText-2 validation tokens) so that the
demo takes a few minutes on a laptop CPU; `experiments/quantize.py` runs the full protocol.
"""

from __future__ import annotations


from cli import run  # experiments/cli.py
try:  # run as a script (experiments/ on sys.path) or imported as experiments.*
    from multihost import setup_mesh
except ImportError:
    from experiments.multihost import setup_mesh
from qjax.checkpoints import load_model
from qjax.data.corpus import CalibrationData, calibration_tokens, load_windows
from qjax.eval.perplexity import perplexity_of_windows
from qjax.quant.quantize import QuantizeConfig, quantize

MODEL = "smollm2-135m"
SEQLEN = 2048
WINDOWS = 4
CALIBRATION = CalibrationData(dataset="wikitext2", split="valid", num_windows=16, seqlen=512, seed=0)
METHODS = (("RTN W4 g128", QuantizeConfig(method="rtn", bits=4, group_size=128)),
           ("GPTQ W4 g128", QuantizeConfig(method="gptq", bits=4, group_size=128)))


def main(argv):
    del argv
    config, params, tokenizer = load_model(MODEL, mesh=setup_mesh(None))
    windows = load_windows(tokenizer, "wikitext2", "test", SEQLEN, WINDOWS)
    result = perplexity_of_windows(params, config, windows)
    rows = [("float32", None, None, result)]
    tokens = calibration_tokens(tokenizer, CALIBRATION)
    for name, method in METHODS:
        qparams, report = quantize(params, config, method, tokens if method.calibrated else None,
                                   progress=False)
        rows.append((name, report["bits_per_param"], report["quantized_bytes"],
                     perplexity_of_windows(qparams, config, windows)))
    print(f"\n{MODEL}, WikiText-2 test, {WINDOWS} windows x {SEQLEN} tokens "
          f"(GPTQ calibration: {CALIBRATION.num_windows} x {CALIBRATION.seqlen} tokens)")
    print(f"| {'weights':<13} | {'bits/param':>10} | {'linear MiB':>10} | {'perplexity':>10} | {'seconds':>7} |")
    print(f"|{'-' * 15}|{'-' * 12}|{'-' * 12}|{'-' * 12}|{'-' * 9}|")
    for name, bits, nbytes, r in rows:
        bits_text = "32" if bits is None else f"{bits:.3f}"
        mib = "-" if nbytes is None else f"{nbytes / 2 ** 20:.1f}"
        print(f"| {name:<13} | {bits_text:>10} | {mib:>10} | {r['ppl']:>10.3f} | {r['seconds']:>7.1f} |")


if __name__ == "__main__":
    run(main)
