"""A markdown report of a suite's results: tables, correlations, Pareto fronts and embedded plots.

Measurements are split into: the perplexity measurement (given), efficiency measurements (task
`efficiency_task`, e.g. weight bytes, peak memory, tokens/s) and benchmarks (everything else).
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Optional, Sequence

from qjax.analysis import plots
from qjax.analysis.stats import correlate, pareto_front, pearson_interval
from qjax.analysis.table import (Measurement, ResultTable, format_value, markdown_table,
                                 results_markdown)


def split_measurements(table: ResultTable, perplexity: Measurement, efficiency_task: str
                       ) -> tuple[list[Measurement], list[Measurement]]:
    """(benchmarks, efficiency measurements) of the table. Benchmarks are the measurements of
    top-level tasks (no "/" in the task: MMLU subjects and BBQ categories are left out) other than
    perplexity metrics."""
    benchmarks, efficiency = [], []
    for m in table.measurements():
        if m[0] == efficiency_task:
            efficiency.append(m)
        elif m != perplexity and m[1] != "perplexity" and "/" not in m[0]:
            benchmarks.append(m)
    return benchmarks, efficiency


def _p(value: float) -> str:
    return "–" if math.isnan(value) else f"{value:.3g}"


def correlation_markdown(table: ResultTable, perplexity: Measurement,
                         benchmarks: Sequence[Measurement]) -> str:
    body = []
    correlations = correlate(table, perplexity, benchmarks)
    for c in correlations:
        low, high = pearson_interval(c.pearson_r, c.n)
        body.append([f"{c.benchmark[0]} {c.benchmark[1]}", c.n, format_value(c.pearson_r),
                     "–" if math.isnan(low) else f"[{low:.2f}, {high:.2f}]", _p(c.pearson_p),
                     format_value(c.spearman_rho), _p(c.spearman_p),
                     format_value(c.log_pearson_r), _p(c.log_pearson_p)])
    text = markdown_table(["benchmark", "n", "Pearson r", "95% CI (Fisher z)", "p", "Spearman ρ", "p",
                           "Pearson r (log ppl)", "p"], body)
    for name, values in (("Pearson r", [c.pearson_r for c in correlations]),
                         ("Spearman ρ", [c.spearman_rho for c in correlations]),
                         ("Pearson r (log ppl)", [c.log_pearson_r for c in correlations])):
        defined = [abs(v) for v in values if not math.isnan(v)]
        if defined:
            text += (f"\n\nMean |{name}| over the {len(defined)} benchmarks where it is defined: "
                     f"{sum(defined) / len(defined):.3f}.")
    return text


def pareto_markdown(table: ResultTable, model: str, memory: Measurement,
                    benchmarks: Sequence[Measurement]) -> str:
    mem = table.column(memory)
    body = []
    for bench in benchmarks:
        col = table.column(bench)
        points = {c: (mem[c], col[c]) for c in table.configs if c[0] == model and c in mem and c in col}
        front = pareto_front(points, bench[1])
        body.append([f"{bench[0]} {bench[1]}", ", ".join(
            f"{c[1]} ({points[c][0] / plots.MIB:.1f} MiB, {format_value(points[c][1])})" for c in front)])
    return markdown_table(["benchmark", f"Pareto front over {memory[0]} {memory[1]} (low to high)"], body)


def write_report(table: ResultTable, out_dir: str | Path, *, perplexity: Measurement,
                 memory: Measurement, efficiency_task: str = "efficiency",
                 benchmarks: Optional[Sequence[Measurement]] = None, sources: Sequence[str] = (),
                 title: str = "qjax suite report", notes: Sequence[str] = ()) -> Path:
    """Writes `<out_dir>/report.md` and its PNG plots under `<out_dir>/plots/`; returns the report path.

    benchmarks: the measurements to tabulate, correlate and plot (default: `split_measurements`).
    notes: lines for a "Notes" section after the configurations (who judged, data caveats).
    """
    out_dir = Path(out_dir)
    default_benchmarks, efficiency = split_measurements(table, perplexity, efficiency_task)
    if benchmarks is None:
        benchmarks = default_benchmarks
    missing = [m for m in benchmarks if not table.column(m)]
    if missing:
        raise KeyError(f"no result rows for benchmark(s) {missing}")
    benchmarks = list(benchmarks)
    models = list(dict.fromkeys(c[0] for c in table.configs))
    lines = [f"# {title}", "", f"Generated {time.strftime('%Y-%m-%d %H:%M:%S')} from "
             + (", ".join(f"`{s}`" for s in sources) or "in-memory rows") + ".", ""]
    lines += ["## Configurations", "", markdown_table(
        ["model", "transform", "method", "weight bits"],
        [[c[0], c[1], table.info[c].method, "float" if table.info[c].bits is None else
          f"{table.info[c].bits:g}"] for c in table.configs]), ""]
    if notes:
        lines += ["## Notes", ""] + [f"- {note}" for note in notes] + [""]
    ppl_columns = [m for m in table.measurements() if m[1] == "perplexity"]
    lines += ["## Benchmarks", "", "Value ± standard error (where defined).", "",
              results_markdown(table, ppl_columns + benchmarks), ""]
    if efficiency:
        lines += ["## Efficiency", "", results_markdown(table, efficiency, with_stderr=False), ""]
    has_ppl = bool(table.column(perplexity))
    if has_ppl and benchmarks:
        lines += [f"## Correlation of {perplexity[0]} {perplexity[1]} with each benchmark", "",
                  "Across all configurations that have both (scipy.stats.pearsonr / spearmanr, "
                  "two-sided p-values; – where undefined: fewer than 3 configurations or a constant "
                  "column; the 95% interval of Pearson's r by Fisher's z needs at least 4). A negative coefficient means higher perplexity goes with a lower score.",
                  "", correlation_markdown(table, perplexity, benchmarks), ""]
    for model in models:
        slug = model.replace("/", "_")
        lines += [f"## Plots: {model}", ""]
        if benchmarks and any(table.info[c].bits is not None for c in table.configs if c[0] == model):
            path = plots.plot_score_vs_bits(table, model, benchmarks, out_dir / "plots" / f"{slug}_score_vs_bits.png")
            lines += ["### Score vs weight bits, per method", "", f"![score vs bits](plots/{path.name})", ""]
        if benchmarks and table.column(memory):
            path = plots.plot_score_vs_memory(table, model, benchmarks, memory,
                                              out_dir / "plots" / f"{slug}_score_vs_memory.png")
            lines += ["### Score vs weight memory, with the Pareto front", "",
                      "Better is higher, except perplexity and ECE (lower) and bias scores (closer to 0).",
                      "", pareto_markdown(table, model, memory, benchmarks), "",
                      f"![score vs memory](plots/{path.name})", ""]
        if has_ppl and benchmarks:
            path = plots.plot_perplexity_vs_score(table, model, perplexity, benchmarks,
                                                  out_dir / "plots" / f"{slug}_perplexity_vs_score.png")
            lines += ["### Perplexity vs score", "", f"![perplexity vs score](plots/{path.name})", ""]
    out_dir.mkdir(parents=True, exist_ok=True)
    report = out_dir / "report.md"
    report.write_text("\n".join(lines), encoding="utf-8")
    return report
