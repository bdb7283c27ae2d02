"""The report with per-unit results: A's interval and verdict in the tables, decided cells by verdict,
superseded rows left out."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from test_report import markdown_table

from crescendo.report import build_report
from crescendo.report.analysis import cells
from crescendo.report.data import group_rows
from crescendo.store import ResultStore, Row, RunMetrics
from crescendo.units import Units

MODEL, PROTOCOL, VERSION = "tiny-llama", "sotu-v1-quick", "0.1.0"
BASE = np.random.default_rng(0).normal(3.0, 0.3, 64)  # per-window losses of the dense model
NOISE = np.random.default_rng(1).normal(0.0, 0.02, (8, 64))


def _row(recipe: str, kind: str, shift: float, extra: dict, noise: int) -> Row:
    losses = BASE + shift + NOISE[noise]
    units = Units("window-loss", losses, 64)
    metrics = RunMetrics.from_perplexity(-units.metric, {"sparsity": 0.0})
    row = Row.create(MODEL, PROTOCOL, recipe, 0, VERSION, kind, metrics=metrics, extra=extra, units=units)
    return row


def _store(path: Path, superseded: bool = False) -> Path:
    tpl = {"prune": "sparsegpt:{r}", "quant": "rtn:w{b}"}
    rows = [_row("dense", "dense", 0.0, {}, 0),
            _row("rtn:w8", "single", 0.01, {"method": "quant", "bits": 8, **tpl}, 1),
            _row("rtn:w4", "single", 0.2, {"method": "quant", "bits": 4, **tpl}, 2),
            _row("sparsegpt:0.5", "single", 0.1, {"method": "prune", "ratio": 0.5, **tpl}, 3)]
    cell = {"ratio": 0.5, **tpl}
    # B = 4: prune first clearly better (0.15 nats per window); B = 8: the orders are 0.0005 apart
    rows += [_row("sparsegpt:0.5 > rtn:w4", "order", 0.25, cell | {"bits": 4, "first": "prune"}, 4),
             _row("rtn:w4 > sparsegpt:0.5", "order", 0.40, cell | {"bits": 4, "first": "quant"}, 5),
             _row("sparsegpt:0.5 > rtn:w8", "order", 0.11, cell | {"bits": 8, "first": "prune"}, 6),
             _row("rtn:w8 > sparsegpt:0.5", "order", 0.1105, cell | {"bits": 8, "first": "quant"}, 6)]
    with ResultStore(path) as store:
        for row in rows:
            store.put(row)
        if superseded:
            bad = Row.create(MODEL, PROTOCOL, "rtn:w4 > sparsegpt:0.5", 1, VERSION, "order",
                             RunMetrics.from_perplexity(1e6), extra=cell | {"bits": 4, "first": "quant"})
            store.put(bad)
            store.mark_superseded(bad.key, "dead-column defect")
    return path


def test_cells_carry_the_comparison_and_the_verdict_decides(tmp_path: Path):
    with ResultStore(_store(tmp_path / "s.sqlite"), readonly=True) as store:
        (exp,) = group_rows(store.rows()).experiments
    by = {c.bits: c for c in cells(exp)}
    strong, tiny = by[4], by[8]
    assert strong.verdict == "second better" and strong.measured_first == "prune"  # A(Q->P) < 0
    lo, hi = strong.comparison.interval
    assert lo <= strong.advantage <= hi < 0 and math.isclose(strong.comparison.difference, strong.advantage)
    assert tiny.verdict in ("equivalent", "undetermined") and tiny.measured_first is None  # not a finding


def test_tables_show_intervals_and_superseded_rows_are_left_out(tmp_path: Path):
    path = _store(tmp_path / "s.sqlite", superseded=True)
    md = build_report(path, tmp_path / "r").markdown.read_text()
    grid = markdown_table(md, "A(Q->P) = M(Q first)")
    cell = grid["0.5 (2.00)"]["B=4 (C_Q 4.00)"]
    assert cell.startswith("-") and " [" in cell and cell.endswith("P first better"), cell
    assert "no units" not in cell
    assert "1000000" not in md  # the superseded row's perplexity is not reported
    with ResultStore(path, readonly=True) as store:
        marked = [r for r in store.rows() if r.extra.get("superseded")]
    assert len(marked) == 1 and marked[0].extra["superseded"] == "dead-column defect"
