"""Corpora joined as in the GPTQ protocol; unknown names and missing files are clear errors."""

from __future__ import annotations

import pytest

from qjax.data.paths import DataError
from qjax.data.text import load_text


def test_wikitext2_joins_lines_with_blank_lines(data_dir):
    text = load_text("wikitext2", "test", str(data_dir))
    lines = (data_dir / "wikitext-2" / "test.txt").read_text(encoding="utf-8").split("\n")
    assert text == "\n\n".join(lines[:-1])  # the file ends with a newline: no empty last line
    assert text.startswith(" \n\n = Robert <unk> = \n\n")


def test_ptb_joins_sentences_with_spaces(data_dir):
    text = load_text("ptb", "valid", str(data_dir))
    first, second = (data_dir / "ptb" / "ptb.valid.txt").read_text().split("\n")[:2]
    assert text.startswith(first + " " + second + " ")


def test_unknown_dataset():
    with pytest.raises(DataError, match=r"unknown perplexity dataset 'wikitext3'"):
        load_text("wikitext3")


def test_missing_file(tmp_path):
    (tmp_path / "ptb").mkdir()
    with pytest.raises(DataError, match=r"data file .*ptb/ptb.test.txt is missing"):
        load_text("ptb", "test", str(tmp_path))


def test_missing_data_dir(tmp_path):
    with pytest.raises(DataError, match=r"data directory .*nowhere does not exist"):
        load_text("wikitext2", "test", str(tmp_path / "nowhere"))


def test_c4_reads_a_local_hub_mirror(tmp_path):
    mirror = tmp_path / "hf/allenai/c4/default/validation.jsonl"
    mirror.parent.mkdir(parents=True)
    mirror.write_text('{"text": "first doc.", "url": "u"}\n{"text": "second doc.", "url": "v"}\n')
    assert load_text("c4", "validation", str(tmp_path)) == "first doc. second doc."
    with pytest.raises(DataError, match="validation shard only"):
        load_text("c4", "test", str(tmp_path))
