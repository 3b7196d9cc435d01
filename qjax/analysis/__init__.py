"""Analysis of suite results: tables, perplexity-benchmark correlation, Pareto fronts, plots, report."""

from qjax.analysis.report import write_report
from qjax.analysis.stats import Correlation, correlate, correlation, pareto_front
from qjax.analysis.table import (ResultTable, TransformInfo, build_table, load_rows, results_markdown,
                                 tables_by_family)

__all__ = ["write_report", "Correlation", "correlate", "correlation", "pareto_front", "ResultTable",
           "TransformInfo", "build_table", "load_rows", "results_markdown", "tables_by_family"]
