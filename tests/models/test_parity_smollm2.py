"""SmolLM2-135M from its GGUF: qjax against transformers + torch loading the same file."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from qjax.data.corpus import load_windows
from qjax.eval.perplexity import perplexity_of_windows
from qjax.models import forward


@pytest.fixture(scope="module")
def torch_smollm2(smollm2_gguf):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(smollm2_gguf.parent), gguf_file=smollm2_gguf.name,
                                                 torch_dtype=torch.float32)
    return model.eval()


def test_logits_match_transformers_on_256_tokens(smollm2, torch_smollm2, data_dir):
    config, params, tokenizer = smollm2
    text = (data_dir / "wikitext-2" / "test.txt").read_text()[:4000]
    tokens = np.asarray(tokenizer(text)["input_ids"][:256], np.int32)[None]
    assert tokens.shape == (1, 256)
    with torch.no_grad():
        expected = torch_smollm2(torch.from_numpy(tokens).long()).logits.numpy()
    logits = np.asarray(forward(params, tokens, config)[0])
    assert np.max(np.abs(logits - expected)) <= 2e-3
    assert np.mean(logits.argmax(-1) == expected.argmax(-1)) >= 0.99


def test_perplexity_matches_transformers(smollm2, torch_smollm2):
    config, params, tokenizer = smollm2
    windows = load_windows(tokenizer, "wikitext2", "test", seqlen=512, max_windows=3)
    ours = perplexity_of_windows(params, config, windows, batch_size=1, progress=False)
    nll = 0.0
    with torch.no_grad():
        for window in windows:
            ids = torch.from_numpy(window[None]).long()
            nll += torch_smollm2(ids, labels=ids).loss.item() * (window.size - 1)
    theirs = math.exp(nll / (windows.shape[0] * (windows.shape[1] - 1)))
    assert ours["tokens"] == 3 * 511
    assert abs(ours["ppl"] - theirs) / theirs < 1e-3
