"""Result rows carry the model's family and parameter count; analysis groups tables by them."""

from __future__ import annotations

import pytest

from qjax.analysis import tables_by_family
from qjax.checkpoints import load_model
from qjax.models import model_facts

from family_tiny import save_family


@pytest.mark.parametrize("name", ["gemma2", pytest.param("mamba", marks=pytest.mark.slow)])
def test_facts_count_transformers_parameters(tmp_path, name):
    model = save_family(name, tmp_path)
    config, params, _ = load_model(str(tmp_path))
    facts = model_facts(config, params)
    # transformers counts a tied head once, as qjax's params hold it once
    assert facts == {"family": name, "parameters": model.num_parameters()}


def test_tables_by_family():
    rows = [{"model": m, "transform": "float", "task": "wikitext2", "metric": "perplexity", "value": v,
             "family": f, "parameters": n}
            for m, f, n, v in (("b", "llama", 360, 9.0), ("a", "llama", 135, 12.0), ("c", "mamba", 130, 14.0))]
    rows.append({"model": "old", "transform": "float", "task": "wikitext2", "metric": "perplexity", "value": 20.0})
    tables = tables_by_family(rows)
    assert list(tables) == [("llama", 135), ("llama", 360), ("mamba", 130), ("unknown", None)]
    assert tables[("llama", 360)].values == {("b", "float"): {("wikitext2", "perplexity"): 9.0}}
