"""PNG plots of a result table (matplotlib, Agg backend): one subplot per benchmark.

  * `plot_score_vs_bits`: score against weight bits, one line per method; the float baseline
    (bits None) is a dashed horizontal line.
  * `plot_score_vs_memory`: score against weight memory (MiB), every configuration a labelled point,
    the Pareto front (`qjax.analysis.stats.pareto_front`) drawn as a step line.
  * `plot_perplexity_vs_score`: score against perplexity, labelled points, Pearson/Spearman in the
    subplot title.
Each function draws the configurations of one model and returns the path it wrote.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from qjax.analysis.stats import correlation, pareto_front  # noqa: E402
from qjax.analysis.table import Config, Measurement, ResultTable  # noqa: E402

MIB = 2 ** 20


def _grid(n: int, title: str):
    cols = min(3, max(n, 1))
    rows = math.ceil(max(n, 1) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 3.8 * rows), squeeze=False)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    fig.suptitle(title)
    return fig, list(axes.flat[:n])


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.5 / fig.get_figheight()))  # keep 0.5 inch for the suptitle
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _label(m: Measurement) -> str:
    return f"{m[0]} {m[1]}"


def _model_configs(table: ResultTable, model: str) -> list[Config]:
    return [c for c in table.configs if c[0] == model]


def plot_score_vs_bits(table: ResultTable, model: str, benchmarks: Sequence[Measurement],
                       path: Path) -> Path:
    fig, axes = _grid(len(benchmarks), f"{model}: score vs weight bits")
    configs = _model_configs(table, model)
    for ax, bench in zip(axes, benchmarks):
        col = table.column(bench)
        methods: dict[str, list[tuple[float, float]]] = {}
        for c in configs:
            if c not in col:
                continue
            info = table.info[c]
            if info.bits is None:
                ax.axhline(col[c], linestyle="--", color="gray", label=f"{info.method} ({c[1]})")
            else:
                methods.setdefault(info.method, []).append((info.bits, col[c]))
        for method, pts in sorted(methods.items()):
            pts.sort()
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=method)
        ax.set_title(_label(bench))
        ax.set_xlabel("weight bits")
        ax.set_ylabel(bench[1])
        ax.legend(fontsize=7)
    return _save(fig, path)


def plot_score_vs_memory(table: ResultTable, model: str, benchmarks: Sequence[Measurement],
                         memory: Measurement, path: Path) -> Path:
    fig, axes = _grid(len(benchmarks), f"{model}: score vs {_label(memory)} (Pareto front)")
    mem = table.column(memory)
    configs = [c for c in _model_configs(table, model) if c in mem]
    for ax, bench in zip(axes, benchmarks):
        col = table.column(bench)
        points = {c: (mem[c] / MIB, col[c]) for c in configs if c in col}
        for c, (x, y) in points.items():
            ax.scatter([x], [y], color="tab:blue")
            ax.annotate(c[1], (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
        front = pareto_front(points, bench[1])
        if front:
            ax.step([points[c][0] for c in front], [points[c][1] for c in front], where="post",
                    color="tab:red", label="Pareto front")
            ax.legend(fontsize=7)
        ax.set_title(_label(bench))
        ax.set_xlabel("MiB")
        ax.set_ylabel(bench[1])
    return _save(fig, path)


def plot_perplexity_vs_score(table: ResultTable, model: str, perplexity: Measurement,
                             benchmarks: Sequence[Measurement], path: Path) -> Path:
    fig, axes = _grid(len(benchmarks), f"{model}: {_label(perplexity)} vs score")
    ppl = table.column(perplexity)
    configs = [c for c in _model_configs(table, model) if c in ppl]
    for ax, bench in zip(axes, benchmarks):
        col = table.column(bench)
        shared = [c for c in configs if c in col]
        xs, ys = [ppl[c] for c in shared], [col[c] for c in shared]
        ax.scatter(xs, ys, color="tab:green")
        for c, x, y in zip(shared, xs, ys):
            ax.annotate(c[1], (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
        r, _, rho, _ = correlation(xs, ys)
        ax.set_title(f"{_label(bench)}\nPearson {r:.2f}, Spearman {rho:.2f}", fontsize=9)
        ax.set_xscale("log")
        ax.set_xlabel("perplexity (log scale)")
        ax.set_ylabel(bench[1])
    return _save(fig, path)
