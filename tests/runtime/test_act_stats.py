"""Activation statistics against scipy / numpy on independently captured linear inputs."""

from __future__ import annotations

import jax
import numpy as np
import pytest
import scipy.stats

from qjax.models import Decoder
from qjax.quant import act_stats

from runtime_tiny import tiny_config, tiny_params


def test_statistics_match_scipy(tmp_path):
    config = tiny_config()
    params = tiny_params(config)
    scale = params["layers_1"]["input_norm"]["scale"]  # an outlier channel in layer 1's q/k/v input
    params["layers_1"]["input_norm"] = {"scale": scale.at[5].multiply(20.0)}
    batches = [np.random.default_rng(i).integers(0, 96, (2, 16)).astype(np.int32) for i in range(2)]
    stats = act_stats.collect(params, config, batches)
    linen = {k: v for k, v in params.items() if k != "embed"} | {"embed": params["embed"]["embedding"]}
    captured: dict[str, list] = {}
    for tokens in batches:
        _, state = Decoder(config).apply({"params": linen}, tokens, mutable=["intermediates"])
        for path, x in jax.tree_util.tree_flatten_with_path(state["intermediates"])[0]:
            site = "/".join(p.key for p in path[:-2])
            captured.setdefault(site, []).append(np.asarray(x, np.float64).reshape(-1, x.shape[-1]))
    assert set(stats) == set(captured) and len(stats) == 7 * config.num_layers + 1  # + lm_head
    rows = {r["site"]: r for r in act_stats.summary(stats)}
    for site, parts in captured.items():
        x = np.concatenate(parts)
        np.testing.assert_allclose(stats[site].ch_absmax, np.abs(x).max(0), rtol=1e-5)
        np.testing.assert_allclose(stats[site].ch_min, x.min(0), rtol=1e-5)
        np.testing.assert_allclose(rows[site]["kurtosis"], scipy.stats.kurtosis(x.ravel(), fisher=False),
                                   rtol=1e-3)
        assert rows[site]["outlier_share"] == pytest.approx(np.mean(np.abs(x) > 6.0))
        assert rows[site]["max_abs"] == pytest.approx(np.abs(x).max(), rel=1e-5)
    assert rows["layers_1/attn/q_proj"]["outlier_share"] > 0
    assert rows["lm_head"]["layer"] == config.num_layers
    ordered = act_stats.summary(stats)
    assert [r["site"] for r in ordered[:7]] == [f"layers_0/attn/{p}" for p in ("q_proj", "k_proj", "v_proj",
                                                                                "o_proj")] + [
        f"layers_0/mlp/{p}" for p in ("gate_proj", "up_proj", "down_proj")]
    from qjax.analysis.table import markdown_table

    table = markdown_table(*act_stats.summary_cells(ordered))
    assert table.count("\n") == len(ordered) + 1 and "| layers_1/mlp/down_proj |" in table
    act_stats.plot(ordered, str(tmp_path / "stats.png"))
    assert (tmp_path / "stats.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="no linear site matches"):
        act_stats.collect(params, config, batches[:1], sites=r"nothing")
