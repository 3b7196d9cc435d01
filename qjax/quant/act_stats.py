"""Statistics of every linear layer's input over calibration tokens, and their report.

`collect(params, config, batches)` runs the model with the `intermediates` collection mutable (each
`Linear` sows its input), reduces every site's input inside one jitted call per batch, and
accumulates on the host (float64; the per-batch sums are float32 raw moments, adequate for
the near-zero-mean inputs of linear layers):
  per channel (features,): min, max, max |x|
  per site: count, sum x, sum x^2, sum x^3, sum x^4, count of |x| > OUTLIER_THRESHOLD
From these: `summary(stats)` gives per site max |x|, kurtosis (over all elements: E[(x - mean)^4] /
Var(x)^2; 3 for a Gaussian) and the share of |x| > 6.0. Static activation scales
(`qjax.quant.activations`) and SmoothQuant use the per-channel ranges.
Sites are linear weight paths without `/kernel`, e.g. `layers_3/mlp/down_proj`.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from typing import Iterable, Optional

import jax
import jax.numpy as jnp
import numpy as np

from qjax.models.config import ModelConfig
from qjax.models.llama import Decoder, linen_variables
from qjax.ops.runtime import Runtime

OUTLIER_THRESHOLD = 6.0


@dataclasses.dataclass
class SiteStats:
    """Running statistics of one site's input (host, float64)."""

    ch_min: np.ndarray
    ch_max: np.ndarray
    ch_absmax: np.ndarray
    count: float = 0.0
    sums: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(4))  # sum x^1..x^4
    outliers: float = 0.0

    def update(self, s: dict) -> None:
        self.ch_min = np.minimum(self.ch_min, s["min"])
        self.ch_max = np.maximum(self.ch_max, s["max"])
        self.ch_absmax = np.maximum(self.ch_absmax, s["absmax"])
        self.count += float(s["count"])
        self.sums = self.sums + np.asarray(s["sums"], np.float64)
        self.outliers += float(s["outliers"])

    @property
    def absmax(self) -> float:
        return float(self.ch_absmax.max())

    @property
    def kurtosis(self) -> float:
        n = self.count
        m1, m2, m3, m4 = (self.sums / n).tolist()
        var = m2 - m1 * m1
        central4 = m4 - 4 * m3 * m1 + 6 * m2 * m1 * m1 - 3 * m1 ** 4
        return float(central4 / var ** 2) if var > 0 else float("nan")

    @property
    def outlier_share(self) -> float:
        return self.outliers / self.count


def _flatten_sows(tree, prefix=()) -> dict:
    out = {}
    for k, v in tree.items():
        if k == "input":
            out["/".join(prefix)] = v[0]
        else:
            out.update(_flatten_sows(v, prefix + (k,)))
    return out


@functools.partial(jax.jit, static_argnames=("config", "runtime", "sites"))
def _batch_stats(params, tokens, config: ModelConfig, runtime: Runtime, sites: Optional[str]):
    _, state = Decoder(config, runtime).apply(linen_variables(params), tokens, mutable=["intermediates"])
    out = {}
    for site, x in _flatten_sows(state["intermediates"]).items():
        if sites is not None and not re.fullmatch(sites, site):
            continue
        x = x.astype(jnp.float32).reshape(-1, x.shape[-1])
        out[site] = {"min": jnp.min(x, 0), "max": jnp.max(x, 0), "absmax": jnp.max(jnp.abs(x), 0),
                     "count": jnp.asarray(x.size, jnp.float32),
                     "sums": jnp.stack([jnp.sum(x ** p) for p in (1, 2, 3, 4)]),
                     "outliers": jnp.sum(jnp.abs(x) > OUTLIER_THRESHOLD).astype(jnp.float32)}
    return out


def collect(params, config: ModelConfig, batches: Iterable[np.ndarray], *, runtime: Runtime = Runtime(),
            sites: Optional[str] = None) -> dict[str, SiteStats]:
    """Statistics of each linear site's input over token batches ((B, T) int32 each).

    sites: optional regex (fullmatch) restricting the sites; `runtime` applies to the forward (its
    activation transforms run before the sow, so the statistics are of the transformed inputs).
    """
    stats: dict[str, SiteStats] = {}
    for tokens in batches:
        host = jax.device_get(_batch_stats(params, jnp.asarray(tokens, jnp.int32), config, runtime, sites))
        for site, s in host.items():
            if site not in stats:
                d = s["min"].shape[0]
                stats[site] = SiteStats(np.full(d, np.inf), np.full(d, -np.inf), np.zeros(d))
            stats[site].update(s)
    if not stats:
        raise ValueError(f"no linear site matches {sites!r}")
    return stats


def summary(stats: dict[str, SiteStats]) -> list[dict]:
    """One row per site in forward order: site, layer, family, max_abs, kurtosis, outlier_share.

    Sites outside the decoder layers (an untied lm_head) get layer = last layer + 1.
    """
    parsed = {site: re.match(r"layers_(\d+)/\w+/(\w+)", site) for site in stats}
    after = 1 + max((int(m.group(1)) for m in parsed.values() if m), default=-1)
    rows = []
    for site, s in stats.items():
        m = parsed[site]
        rows.append({"site": site, "layer": int(m.group(1)) if m else after,
                     "family": m.group(2) if m else site, "max_abs": s.absmax,
                     "kurtosis": s.kurtosis, "outlier_share": s.outlier_share})
    return sorted(rows, key=lambda r: (r["layer"], _FAMILY_ORDER.get(r["family"], 99)))


_FAMILY_ORDER = {f: i for i, f in enumerate(
    ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "lm_head"))}


_PLOT_LABELS = {"q_proj": "q/k/v input", "o_proj": "o_proj input", "gate_proj": "gate/up input",
                "down_proj": "down_proj input", "lm_head": "lm_head input"}


def summary_cells(rows: list[dict]) -> tuple[list[str], list[list[str]]]:
    """(header, body) of the report table of `summary` rows: site, max |x|, kurtosis, outlier share
    (render with `qjax.analysis.table.markdown_table`)."""
    header = ["site", "max abs", "kurtosis", f"share abs>{OUTLIER_THRESHOLD:g}"]
    return header, [[r["site"], f"{r['max_abs']:.2f}", f"{r['kurtosis']:.1f}", f"{r['outlier_share']:.2e}"]
                    for r in rows]


def plot(rows: list[dict], path: str, title: str = "") -> None:
    """PNG: max |x|, kurtosis and outlier share against layer, one line per distinct linear input
    (q/k/v share one input, gate/up another)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    families = [f for f in _PLOT_LABELS if any(r["family"] == f for r in rows)]
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.5))
    for ax, key, label in zip(axes, ("max_abs", "kurtosis", "outlier_share"),
                              ("max |x|", "kurtosis", f"share |x| > {OUTLIER_THRESHOLD:g}")):
        for fam in families:
            pts = [(r["layer"], r[key]) for r in rows if r["family"] == fam]
            ax.plot(*zip(*pts), marker=".", label=_PLOT_LABELS[fam])
        ax.set_xlabel("layer")
        ax.set_ylabel(label)
        ax.set_yscale("symlog" if key == "outlier_share" else "log", **(
            {"linthresh": 1e-6} if key == "outlier_share" else {}))
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
