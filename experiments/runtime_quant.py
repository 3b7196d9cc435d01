"""Perplexity under weight / activation / KV-cache quantization settings (W8A8, W8A8-SQ, W4A4, KV4, ...).

  python experiments/runtime_quant.py --config=configs/runtime.py[:quick]
  python experiments/runtime_quant.py --wbits=4 --abits=8 --kvbits=4      # one composed setting
  python experiments/runtime_quant.py --config.settings='("W8A8","W8A8-SQ")' --config.max_windows=16

One row per setting in `config.results` (task "<dataset>/<split>[:<windows>x<seqlen>]", metric
perplexity) with the weight bytes and KV bytes per token; settings already in the store are skipped.
Settings with a quantized KV cache score each window through the cache path (K/V written to and read
back from the quantized cache, `qjax.quant.kv.perplexity_through_cache`).
"""

from __future__ import annotations

from absl import flags
from ml_collections import config_flags

from cli import run  # experiments/cli.py
try:  # run as a script (experiments/ on sys.path) or imported as experiments.*
    from multihost import setup_mesh
except ImportError:
    from experiments.multihost import setup_mesh
from qjax.checkpoints import load_model
from qjax.data.corpus import CalibrationData, calibration_tokens, load_windows
from qjax.data.provenance import corpus_sources, describe
from qjax.eval.perplexity import perplexity_of_windows
from qjax.eval.results import ResultStore, make_row, run_id
from qjax.models import model_facts
from qjax.quant.activations import QuantSetting, apply_setting, parse_setting
from qjax.quant.kv import bytes_per_token, perplexity_through_cache
from qjax.quant.storage import params_nbytes

_CONFIG = config_flags.DEFINE_config_file("config", "configs/runtime.py", "experiment config")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "data directory (default: $QJAX_DATA_DIR)")
_WBITS = flags.DEFINE_integer("wbits", None, "compose one setting: weight bits (16 = float)")
_ABITS = flags.DEFINE_integer("abits", None, "compose one setting: activation bits (16 = float)")
_KVBITS = flags.DEFINE_integer("kvbits", None, "compose one setting: KV-cache bits (16 = float)")
_SMOOTH = flags.DEFINE_bool("smoothquant", False, "compose one setting: SmoothQuant first")


def settings(cfg) -> list[QuantSetting]:
    if any(f.value is not None for f in (_WBITS, _ABITS, _KVBITS)):
        wbits = _WBITS.value or 16
        base = parse_setting(f"W{wbits}A{_ABITS.value or 16}") if wbits != 16 or _ABITS.value else QuantSetting()
        return [QuantSetting(**{**base.__dict__, "kvbits": _KVBITS.value or 16, "smoothquant": _SMOOTH.value,
                                "alpha": cfg.alpha})]
    return [parse_setting(name, alpha=cfg.alpha) for name in cfg.settings]


def main(argv):
    del argv
    cfg = _CONFIG.value
    mesh = setup_mesh(cfg)
    store = ResultStore(cfg.results)
    config, params, tokenizer = load_model(cfg.model, mesh=mesh)
    facts = model_facts(config, params)
    windows = load_windows(tokenizer, cfg.dataset, cfg.split, cfg.seqlen, cfg.max_windows, _DATA_DIR.value)
    task = f"{cfg.dataset}/{cfg.split}[:{len(windows)}x{cfg.seqlen}]"
    calibration = None
    print(f"{'setting':<12} {'ppl':>9} {'weight MB':>10} {'KV B/tok':>9} {'seconds':>8}", flush=True)
    data = corpus_sources(cfg.dataset, cfg.split, _DATA_DIR.value)
    for setting in settings(cfg):
        key = (cfg.model, setting.name, task, "perplexity")
        calibrated = setting.smoothquant or setting.astatic
        rid = run_id(model=cfg.model, setting=repr(setting), task=task, compute_dtype=cfg.compute_dtype, data=data,
                     calibration={k: cfg[k] for k in ("calib_split", "calib_windows", "calib_seqlen", "calib_seed")}
                     if calibrated else None)
        if store.has(key, rid):
            print(f"{setting.name:<12} (in the store)", flush=True)
            continue
        if (setting.smoothquant or setting.astatic) and calibration is None:
            calib = calibration_tokens(tokenizer, CalibrationData(split=cfg.calib_split, num_windows=cfg.calib_windows,
                                                                  seqlen=cfg.calib_seqlen, seed=cfg.calib_seed),
                                       _DATA_DIR.value)
            calibration = [calib[i:i + 4] for i in range(0, len(calib), 4)]
        qparams, runtime, state = apply_setting(params, config, setting, calibration=calibration,
                                                compute_dtype=cfg.compute_dtype)
        if runtime.kv_cache is None:
            result = perplexity_of_windows(qparams, config, windows, runtime=runtime, runtime_state=state,
                                           progress=False)
        else:
            result = perplexity_through_cache(qparams, config, windows, runtime=runtime, runtime_state=state)
        weight_bytes = params_nbytes(qparams)
        kv_tok = bytes_per_token(runtime.kv_cache, config)
        store.append(make_row(
            model=cfg.model, transform=setting.name, task=task, metric="perplexity", value=result["ppl"],
            items=result["tokens"], seconds=result["seconds"],
            config={"experiment": cfg.to_dict(), "setting": setting.__dict__ | {"afamilies": list(setting.afamilies)}},
            details={"nll": result["nll"], "windows": result["windows"], "weight_bytes": weight_bytes,
                     "kv_bytes_per_token": kv_tok}, run_id=rid, data_source=describe(data), **facts))
        print(f"{setting.name:<12} {result['ppl']:>9.3f} {weight_bytes / 2**20:>10.1f} {kv_tok:>9} "
              f"{result['seconds']:>8.1f}", flush=True)
    print(f"rows in {cfg.results}")


if __name__ == "__main__":
    run(main, config=_CONFIG)
