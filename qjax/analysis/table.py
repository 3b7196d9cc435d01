"""Result rows -> a configuration x measurement table, and markdown rendering.

A configuration is (model, transform); a measurement is (task, metric). Rows come from one or more
`ResultStore` JSONL files; when the same key appears twice the later row wins. Method and bits of a
transform are read from the row's `config["transform"]` (written by `experiments/suite.py`):
{"name", "method", "bits", ...}; the float baseline has method "float" and bits None.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import os
from typing import Iterable, Optional, Sequence

from qjax.eval.results import read_rows

Config = tuple[str, str]       # (model, transform)
Measurement = tuple[str, str]  # (task, metric)


@dataclasses.dataclass(frozen=True)
class TransformInfo:
    """How a configuration's weights were transformed: method name and weight bits (None = float)."""

    method: str
    bits: Optional[float]


@dataclasses.dataclass
class ResultTable:
    """values[config][measurement] -> value, stderr likewise; configs keep first-seen order."""

    values: dict[Config, dict[Measurement, float]]
    stderrs: dict[Config, dict[Measurement, Optional[float]]]
    info: dict[Config, TransformInfo]

    @property
    def configs(self) -> list[Config]:
        return list(self.values)

    def measurements(self) -> list[Measurement]:
        seen: dict[Measurement, None] = {}
        for row in self.values.values():
            for m in row:
                seen.setdefault(m)
        return list(seen)

    def column(self, measurement: Measurement) -> dict[Config, float]:
        """The configurations that have `measurement`, with its value."""
        return {c: row[measurement] for c, row in self.values.items() if measurement in row}


def load_rows(paths: Iterable[str | os.PathLike]) -> list[dict]:
    """All rows of the given result files, in file order (a missing file is an error)."""
    rows = []
    for path in paths:
        if not os.path.isfile(path):
            raise FileNotFoundError(f"results file {path} does not exist")
        rows.extend(read_rows(path))  # never writes, even to a file with a torn tail
    return rows


def _transform_info(row: dict) -> TransformInfo:
    spec = (row.get("config") or {}).get("transform") or {}
    method = spec.get("method") or ("float" if row["transform"] == "float" else row["transform"])
    bits = spec.get("bits")
    return TransformInfo(method=str(method), bits=None if bits is None else float(bits))


def source_tag(data_source: Optional[str]) -> str:
    """A short name of a row's `data_source` (`qjax.data.provenance` labels joined by ';'): "local
    <hash>" for local files, "hub <revision>" for hub data, "unrecorded" for rows without one."""
    if not data_source:
        return "unrecorded"
    labels = data_source.split(";")
    kinds = {label.split(":", 1)[0] for label in labels}
    if len(labels) == 1:
        tail = labels[0].rsplit("#sha256:", 1)[-1] if "#sha256:" in labels[0] else labels[0].rsplit("@", 1)[-1]
    else:
        tail = hashlib.sha256(data_source.encode()).hexdigest()
    kind = {"file": "local", "hub": "hub"}.get(kinds.pop(), "data") if len(kinds) == 1 else "mixed"
    return f"{kind} {tail[:8]}"


def build_table(rows: Iterable[dict]) -> ResultTable:
    """The configuration x measurement table of `rows` (later duplicates win).

    Rows of one (task, metric) computed from different data (their `data_source` differs: the hub's
    raw WikiText-2 vs the local tokenized files, or an edited file) never share a column: each source
    gets its own column, the task named "<task> [<source_tag>]"."""
    rows = list(rows)
    sources: dict[Measurement, set] = {}
    for row in rows:
        sources.setdefault((str(row["task"]), str(row["metric"])), set()).add(row.get("data_source"))
    values: dict[Config, dict[Measurement, float]] = {}
    stderrs: dict[Config, dict[Measurement, Optional[float]]] = {}
    info: dict[Config, TransformInfo] = {}
    for row in rows:
        config = (str(row["model"]), str(row["transform"]))
        measurement = (str(row["task"]), str(row["metric"]))
        if len(sources[measurement]) > 1:
            measurement = (f"{measurement[0]} [{source_tag(row.get('data_source'))}]", measurement[1])
        values.setdefault(config, {})[measurement] = float(row["value"])
        stderrs.setdefault(config, {})[measurement] = row.get("stderr")
        if config not in info or (row.get("config") or {}).get("transform"):
            info[config] = _transform_info(row)
    return ResultTable(values, stderrs, info)


def tables_by_family(rows: Iterable[dict]) -> dict[tuple[str, Optional[int]], ResultTable]:
    """(family, parameter count) -> the `build_table` of the rows of models of that family and size,
    ordered by family, then size; rows without the facts (`qjax.models.model_facts`) fall under
    ("unknown", None)."""
    groups: dict[tuple[str, Optional[int]], list[dict]] = {}
    for row in rows:
        key = (str(row.get("family") or "unknown"), row.get("parameters"))
        groups.setdefault(key, []).append(row)
    order = sorted(groups, key=lambda k: (k[0], -1 if k[1] is None else k[1]))
    return {key: build_table(groups[key]) for key in order}


def format_value(value: Optional[float], stderr: Optional[float] = None) -> str:
    """4 decimals (4 significant digits from 1e5 up); "± stderr" when given; "–" for missing/NaN."""
    if value is None or math.isnan(value):
        return "–"
    text = f"{value:.4g}" if abs(value) >= 1e5 else f"{value:.4f}"
    return text if stderr is None else f"{text} ± {stderr:.4f}"


def markdown_table(header: Sequence[str], body: Sequence[Sequence[str]]) -> str:
    """A GitHub-flavoured markdown table ('|' in cells escaped)."""
    def cells(row):
        return "| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |"

    lines = [cells(header), "|" + "|".join("---" for _ in header) + "|"]
    return "\n".join(lines + [cells(r) for r in body])


def results_markdown(table: ResultTable, measurements: Optional[Sequence[Measurement]] = None,
                     with_stderr: bool = True) -> str:
    """One line per configuration, one column per measurement ("task metric")."""
    measurements = list(measurements) if measurements is not None else table.measurements()
    header = ["model", "transform"] + [f"{t} {m}" for t, m in measurements]
    body = []
    for config in table.configs:
        row = table.values[config]
        errs = table.stderrs[config]
        body.append(list(config) + [format_value(row.get(m), errs.get(m) if with_stderr else None)
                                    for m in measurements])
    return markdown_table(header, body)
