"""Quantize a model's weights with one method, save the Orbax checkpoint, evaluate perplexity and
write one result row.

  python experiments/quantize.py --config=configs/quantize.py:gptq_w4
  python experiments/quantize.py --config=configs/quantize.py:spqr_w2 --config.calibration.num_windows=128
  python experiments/quantize.py --config=configs/quantize.py:float        # the unquantized baseline

The row (results file `config.results`, key (model, variant name, dataset/split, "perplexity") and a
run id of the method's settings, the calibration and the data read, also stored as `data_source`) holds
method, bits, group_size, bits_per_param (exact bytes of the quantized linears), bytes, model_bytes,
quantize_seconds, eval windows and the perplexity; a row of the same run id is skipped unless
--config.overwrite. The full report (per block / per linear details) goes to
<results dir>/quantize_reports/<name>.json.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from absl import flags
from ml_collections import config_flags

from cli import ConfigError, run  # experiments/cli.py
try:  # run as a script (experiments/ on sys.path) or imported as experiments.*
    from multihost import setup_mesh
except ImportError:
    from experiments.multihost import setup_mesh
from qjax.checkpoints import load_model
from qjax.eval.perplexity import perplexity
from qjax.data.provenance import corpus_sources, describe
from qjax.eval.results import ResultStore, check_writable_dir, make_row, run_id
from qjax.models import model_facts
from qjax.quant.calibration import CalibrationData, calibration_tokens
from qjax.quant.int8_outliers import to_storable
from qjax.quant.quantize import QuantizeConfig, quantize
from qjax.quant.storage import save_params

_CONFIG = config_flags.DEFINE_config_file("config", "configs/quantize.py", "experiment config")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "data directory (default: $QJAX_DATA_DIR)")


def main(argv):
    del argv
    logging.getLogger("qjax").setLevel(logging.INFO)
    cfg = _CONFIG.value
    task = f"{cfg.eval.dataset}/{cfg.eval.split}"
    mesh = setup_mesh(cfg)
    store = ResultStore(cfg.results)
    if cfg.save_dir and cfg.method.method != "none":
        check_writable_dir(Path(cfg.save_dir))
    quantized = cfg.method.method != "none"
    try:
        qcfg = QuantizeConfig.from_dict(cfg.method.to_dict()) if quantized else None
    except (ValueError, TypeError) as e:
        raise ConfigError(f"--config.method: {e}") from None
    c = cfg.calibration
    calibrated = quantized and qcfg.calibrated
    eval_data = corpus_sources(cfg.eval.dataset, cfg.eval.split, _DATA_DIR.value)
    calib_data = corpus_sources(c.dataset, c.split, _DATA_DIR.value, c.jsonl or None) if calibrated else None
    rid = run_id(model=cfg.model, transform=cfg.name, method=cfg.method.to_dict() if quantized else "none",
                 calibration={**c.to_dict(), "data": calib_data} if calibrated else None,
                 eval={k: v for k, v in cfg.eval.to_dict().items() if k != "batch_size"}, data=eval_data)
    key = (cfg.model, cfg.name, task, "perplexity")
    if store.has(key, rid) and not cfg.overwrite:
        print(f"{key} (run {rid}) already in {cfg.results}; skipping (--config.overwrite=True to recompute)")
        return
    config, params, tokenizer = load_model(cfg.model, mesh=mesh)
    facts = model_facts(config, params)
    report = {"method": "float", "bits": None, "group_size": None, "bits_per_param": None,
              "quantized_bytes": None, "model_bytes": None, "weight_rel_error": None, "seconds": 0.0}
    if quantized:
        tokens = None
        if calibrated:
            data = CalibrationData(dataset=c.dataset, split=c.split, jsonl=c.jsonl or None, text_key=c.text_key,
                                   num_windows=c.num_windows, seqlen=c.seqlen, seed=c.seed)
            tokens = calibration_tokens(tokenizer, data, _DATA_DIR.value)
            print(f"calibration: {tokens.shape[0]} x {tokens.shape[1]} tokens from {data.source} (seed {c.seed})")
        params, report = quantize(params, config, qcfg, tokens)
        print(f"{cfg.name}: {report['quantized']} linears, {report['bits_per_param']:.3f} bits/param, "
              f"{report['quantized_bytes']} bytes, weight error {report['weight_rel_error']:.4f}, "
              f"quantized in {report['seconds']:.1f}s")
        if cfg.save_dir:
            saved = save_params(Path(cfg.save_dir) / cfg.name, to_storable(params), overwrite=True)
            report["disk_bytes"] = saved["disk_bytes"]
            print(f"saved {saved['path']} ({saved['disk_bytes']} bytes on disk)")
    max_windows = None if cfg.eval.max_windows < 0 else cfg.eval.max_windows
    start = time.perf_counter()
    result = perplexity(params, config, tokenizer, dataset=cfg.eval.dataset, split=cfg.eval.split,
                        seqlen=cfg.eval.seqlen, max_windows=max_windows, batch_size=cfg.eval.batch_size,
                        data_dir=_DATA_DIR.value)
    eval_seconds = time.perf_counter() - start
    summary = {k: v for k, v in report.items() if k != "blocks"}
    store.append(make_row(
        model=cfg.model, transform=cfg.name, task=task, metric="perplexity", value=result["ppl"],
        items=result["tokens"], seconds=report["seconds"], config=cfg.to_dict(),
        method=report["method"], bits=report["bits"], group_size=report["group_size"],
        bits_per_param=report["bits_per_param"], bytes=report["quantized_bytes"],
        model_bytes=report["model_bytes"], weight_rel_error=report.get("weight_rel_error"),
        quantize_seconds=report["seconds"], eval_seconds=eval_seconds,
        eval_windows=result["windows"], report=summary, run_id=rid, data_source=describe(eval_data),
        calibration_source=None if calib_data is None else describe(calib_data), **facts))
    reports = Path(cfg.results).parent / "quantize_reports"
    reports.mkdir(parents=True, exist_ok=True)
    (reports / f"{cfg.name}.json").write_text(json.dumps({"report": report, "perplexity": result}, indent=1,
                                                         default=float))
    bpp = "-" if report["bits_per_param"] is None else f"{report['bits_per_param']:.3f}"
    print(f"{cfg.name}: ppl {result['ppl']:.3f} on {result['windows']} windows of {cfg.eval.seqlen} "
          f"({task}), bits/param {bpp}, quantize {report['seconds']:.1f}s, eval {eval_seconds:.1f}s")


if __name__ == "__main__":
    run(main, config=_CONFIG)
