"""Rules: first match wins, fullmatch, None keeps float, unused rules reported, bad regex errors."""

import logging

import numpy as np
import pytest

from qjax.quant.rules import DEFAULT_WEIGHT_PATTERN, compile_rules, flatten_params, map_params_by_rule


def fake_params():
    z = np.zeros((2, 2), np.float32)
    layer = {"attn": {p: {"kernel": z} for p in ("q_proj", "k_proj", "v_proj", "o_proj")},
             "mlp": {p: {"kernel": z} for p in ("gate_proj", "up_proj", "down_proj")},
             "input_norm": {"scale": z[0]}, "post_attn_norm": {"scale": z[0]}}
    return {"embed": {"embedding": z}, "layers_0": layer, "layers_1": layer, "layers_12": layer,
            "final_norm": {"scale": z[0]}, "lm_head": {"kernel": z}}


def tag(path, leaf, spec):
    return (spec, path)


def test_default_pattern_names_exactly_the_block_linears():
    _, report = map_params_by_rule(fake_params(), [(DEFAULT_WEIGHT_PATTERN, "w")], tag)
    assert len(report.transformed) == 3 * 7
    assert "layers_12/mlp/down_proj/kernel" in report.transformed
    for p in ("embed/embedding", "lm_head/kernel", "final_norm/scale", "layers_0/input_norm/scale"):
        assert p not in report.matched


def test_first_match_wins_and_none_keeps_float():
    rules = [(r"layers_0/.*", None),                     # keep block 0 float
             (r"layers_\d+/mlp/down_proj/kernel", "w8"),
             (DEFAULT_WEIGHT_PATTERN, "w4"),
             (r"lm_head/kernel", "w8")]
    new, report = map_params_by_rule(fake_params(), rules, tag)
    assert isinstance(new["layers_0"]["mlp"]["down_proj"]["kernel"], np.ndarray)
    assert new["layers_1"]["mlp"]["down_proj"]["kernel"] == ("w8", "layers_1/mlp/down_proj/kernel")
    assert new["layers_12"]["attn"]["q_proj"]["kernel"] == ("w4", "layers_12/attn/q_proj/kernel")
    assert new["lm_head"]["kernel"][0] == "w8"
    assert report.matched["layers_0/input_norm/scale"] == 0
    assert len(report.transformed) == 2 * 7 + 1 and report.unused_rules == []


def test_fullmatch_not_search_and_unused_rules_reported(caplog):
    rules = [(r"attn/q_proj/kernel", "w"), (r"layers_\d+/attn/q_proj", "w"), (r"nothing/here", "w")]
    with caplog.at_level(logging.WARNING):
        new, report = map_params_by_rule(fake_params(), rules, tag)
    assert report.transformed == [] and report.unused_rules == [r[0] for r in rules]
    assert "matched no parameter" in caplog.text
    with pytest.raises(ValueError, match=r"matched no parameter: \['nothing/here'\]"):
        map_params_by_rule(fake_params(), [(DEFAULT_WEIGHT_PATTERN, "w"), ("nothing/here", "w")], tag,
                           raise_on_unused=True)


def test_bad_rules():
    with pytest.raises(ValueError, match=r"rule 1: regex 'layers_\(0/attn' does not compile"):
        compile_rules([(".*", None), ("layers_(0/attn", "w")])
    with pytest.raises(ValueError, match="rule 0 must be a"):
        compile_rules([("a", "b", "c")])
    with pytest.raises(ValueError, match="sequence of"):
        compile_rules("layers_.*")


def test_flatten_params_paths():
    flat = flatten_params(fake_params())
    assert "layers_12/attn/o_proj/kernel" in flat and len(flat) == 1 + 3 * 9 + 2
