"""Markdown report of suite results: tables, perplexity-benchmark correlations, Pareto fronts, plots.

  python experiments/analyze.py --results=results/suite.jsonl --out_dir=results/report
"""

from __future__ import annotations

from pathlib import Path

from absl import app, flags

from cli import run  # experiments/cli.py
from qjax.analysis import build_table, load_rows, write_report

_RESULTS = flags.DEFINE_list("results", ["results/suite.jsonl"], "result JSONL files (comma-separated)")
_OUT_DIR = flags.DEFINE_string("out_dir", "results/report", "where report.md and plots/ are written")
_PERPLEXITY = flags.DEFINE_string("perplexity", "wikitext2/test:perplexity",
                                  "the perplexity measurement as task:metric")
_MEMORY = flags.DEFINE_string("memory", "efficiency:weight_bytes",
                              "the memory measurement (Pareto cost) as task:metric")
_EFFICIENCY_TASK = flags.DEFINE_string("efficiency_task", "efficiency", "task name of efficiency rows")
_BENCHMARKS = flags.DEFINE_list("benchmarks", None, "task:metric measurements to report (default: every "
                                "metric of every top-level task)")


def _measurement(text: str) -> tuple[str, str]:
    task, sep, metric = text.rpartition(":")
    if not sep or not task or not metric:
        raise app.UsageError(f"expected task:metric, got {text!r}")
    return task, metric


def judge_notes(rows) -> list[str]:
    """Who judged the judged tasks (rows whose details name a judge), with the caveat that a small
    model, or a model judging its own answers, gives weak grades."""
    judges: dict[str, set] = {}
    for row in rows:
        judge = (row.get("details") or {}).get("judge")
        if judge:
            judges.setdefault(judge, set()).add(row["task"].split("/")[0])
    return [f"{', '.join(sorted(tasks))} judged by {judge}. A 135M-parameter judge, or a model judging its own "
            "answers, grades weakly: read these scores as a consistency check, not a quality measure."
            for judge, tasks in judges.items()]


def reference_notes(rows) -> list[str]:
    """For each model whose float reference is read from a quantized GGUF file (a built-in name or a
    local path; hub ids are not fetched here): the grid its "float" weights already sit on."""
    from qjax.checkpoints import CheckpointError
    from qjax.checkpoints.gguf_reader import weight_types
    from qjax.checkpoints.registry import BUILTIN_MODELS, resolve

    notes = []
    for model in sorted({row["model"] for row in rows}):
        if model not in BUILTIN_MODELS and not Path(model).expanduser().exists():
            continue
        try:
            path = resolve(model)
            types = weight_types(path) if path.suffix == ".gguf" else {}
        except CheckpointError:
            continue
        quantized = {t: n for t, n in types.items() if t not in ("F32", "F16", "BF16", "F64")}
        if quantized:
            kinds = ", ".join(f"{t} ({n} {'matrix' if n == 1 else 'matrices'})"
                              for t, n in sorted(quantized.items()))
            notes.append(f"{model}: the float reference is dequantized from a GGUF file stored as {kinds}, so its "
                         f"weights already sit on that grid; a weight quantizer whose grid contains it (e.g. RTN "
                         f"4-bit in groups of 32 for Q4_1) loses almost nothing, and losses of coarser grids are "
                         f"measured from an already-quantized model.")
    return notes


def main(argv):
    del argv
    rows = load_rows(_RESULTS.value)
    table = build_table(rows)
    if not table.configs:
        raise app.UsageError(f"no result rows in {_RESULTS.value}")
    report = write_report(table, _OUT_DIR.value, perplexity=_measurement(_PERPLEXITY.value),
                          memory=_measurement(_MEMORY.value), efficiency_task=_EFFICIENCY_TASK.value,
                          benchmarks=None if _BENCHMARKS.value is None else [
                              _measurement(b) for b in _BENCHMARKS.value],
                          sources=_RESULTS.value, notes=reference_notes(rows) + judge_notes(rows))
    print(f"wrote {report}")


if __name__ == "__main__":
    run(main)
