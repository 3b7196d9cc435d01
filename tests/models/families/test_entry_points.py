"""Every family through qjax's evaluation entry points on its tiny checkpoint: perplexity and
log-likelihood scoring against transformers' log-probabilities, the runtime path (W8A8 activations
and weights; KV4 for attention models) and the perturbation sweep. Generation is in test_families."""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np
import pytest
import torch

from qjax.checkpoints import load_model
from qjax.eval.loglikelihood import score_requests
from qjax.eval.perplexity import perplexity_of_windows
from qjax.perturb.kinds import Gaussian
from qjax.perturb.sweep import NLLEvaluator, WeightTarget, sweep
from qjax.quant.recipe import Recipe

from family_tiny import FAMILIES, VOCAB, save_family

FAST = ("mamba",)  # the recurrent path; the rest under -m slow


def _hf_logprobs(model, tokens: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        logits = model(torch.from_numpy(tokens).long()).logits.double()
    return torch.log_softmax(logits, dim=-1).numpy()


@pytest.mark.parametrize("name", [n if n in FAST else pytest.param(n, marks=pytest.mark.slow)
                                  for n in sorted(FAMILIES)])
def test_family_runs_every_entry_point(tmp_path, name):
    model = save_family(name, tmp_path)
    config, params, _ = load_model(str(tmp_path))
    windows = np.random.default_rng(0).integers(0, VOCAB, size=(2, 16)).astype(np.int32)
    logp = _hf_logprobs(model, windows)
    hf_nll = -np.mean(np.take_along_axis(logp[:, :-1], windows[:, 1:, None], axis=-1))

    ppl = perplexity_of_windows(params, config, windows, batch_size=2, progress=False)
    assert ppl["nll"] == pytest.approx(hf_nll, abs=1e-4)

    context, continuation = windows[0, :10].tolist(), windows[0, 10:13].tolist()
    (ll, greedy), = score_requests(params, config, [(context, continuation)])
    request_logp = _hf_logprobs(model, windows[:1, :12])  # as lm-eval's HF model: (context + continuation)[:-1]
    expected = sum(request_logp[0, 9 + i, tok] for i, tok in enumerate(continuation))
    assert ll == pytest.approx(expected, abs=1e-4)
    assert greedy == all(np.argmax(request_logp[0, 9 + i]) == tok for i, tok in enumerate(continuation))

    w8a8_recipe = Recipe.parse("w8sym,a8").apply(params, config, progress=False)
    w8a8 = perplexity_of_windows(w8a8_recipe.params, config, windows, batch_size=2, runtime=w8a8_recipe.runtime,
                                 progress=False)
    assert w8a8["nll"] != ppl["nll"] and abs(w8a8["nll"] - ppl["nll"]) < 0.05 * ppl["nll"]
    if name != "mamba":  # no KV cache to quantize
        through = perplexity_of_windows(params, config, windows, runtime=Recipe.parse("kv4g16").runtime(),
                                        progress=False)  # K/V read back from the 4-bit cache
        assert through["nll"] != ppl["nll"] and abs(through["nll"] - ppl["nll"]) < 0.05 * ppl["nll"]

    result = sweep(NLLEvaluator(config, window_batch=2), params, [Gaussian()], [0.0, 0.5], [0],
                   target=WeightTarget(), data=jnp.asarray(windows))
    clean, noisy = result.values[0, :, 0]
    # amount 0 is the float model; noise moves the NLL (either way: a random tiny model is near-uniform)
    assert clean == pytest.approx(ppl["nll"], abs=1e-4) and math.isfinite(noisy) and abs(noisy - clean) > 1e-5
