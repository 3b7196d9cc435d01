"""The GGUF-built tokenizer is cached as tokenizer.json and reloaded without re-conversion."""

from __future__ import annotations

import transformers

from qjax.checkpoints.tokenizer import tokenizer_from_gguf


def test_second_load_reads_the_cached_tokenizer_json(tmp_path, monkeypatch, smollm2_gguf):
    monkeypatch.setenv("QJAX_CACHE_DIR", str(tmp_path))
    first = tokenizer_from_gguf(smollm2_gguf)
    cached = list((tmp_path / "tokenizers").glob("*/tokenizer.json"))
    assert len(cached) == 1

    original = transformers.AutoTokenizer.from_pretrained

    def no_gguf_conversion(path, *args, **kwargs):
        assert "gguf_file" not in kwargs, "second load converted the GGUF again"
        return original(path, *args, **kwargs)

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", no_gguf_conversion)
    second = tokenizer_from_gguf(smollm2_gguf)
    text = "Quantization keeps 4-bit weights.\n\nDoes it?"
    assert second(text)["input_ids"] == first(text)["input_ids"]
    assert second.chat_template == first.chat_template
