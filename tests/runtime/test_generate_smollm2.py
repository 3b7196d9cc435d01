"""Greedy generation of SmolLM2-135M-Instruct equals transformers' `generate` token for token (slow)."""

from __future__ import annotations

import pytest
import torch

from qjax.eval.generate import encode_prompts, eos_token_ids, generate_ids

PROMPTS = ["What is the capital of France?", "Write a haiku about the sea.",
           "List three prime numbers.", "Explain what a neural network is in one sentence."]


@pytest.fixture(scope="module")
def hf_model(smollm2_gguf):
    import transformers

    return transformers.AutoModelForCausalLM.from_pretrained(
        str(smollm2_gguf.parent), gguf_file=smollm2_gguf.name, torch_dtype=torch.float32).eval()


@pytest.mark.slow
@pytest.mark.parametrize("chat", [False, True])
def test_greedy_equals_transformers(smollm2, hf_model, chat):
    config, params, tokenizer = smollm2
    prompt_ids = encode_prompts(tokenizer, PROMPTS, chat=chat)
    eos = eos_token_ids(config, tokenizer)
    ours = generate_ids(params, config, prompt_ids, max_new_tokens=40, eos_ids=eos, batch_size=4)
    for ids, got in zip(prompt_ids, ours):
        with torch.no_grad():
            out = hf_model.generate(torch.tensor([ids]), max_new_tokens=40, do_sample=False,
                                    eos_token_id=list(eos), pad_token_id=tokenizer.pad_token_id)
        new = out[0, len(ids):].tolist()
        expected = new[: min([new.index(e) for e in eos if e in new], default=len(new))]
        assert got == expected, (tokenizer.decode(got), tokenizer.decode(expected))
