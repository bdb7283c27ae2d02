"""The report: a synthetic sweep store in, figures / Markdown / self-contained HTML out."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import pytest

from crescendo.errors import ConfigError, StoreError
from crescendo.report import build_report
from crescendo.report import html as report_html
from crescendo.report.analysis import cells, summarize
from crescendo.report.data import ExperimentKey, group_rows
from crescendo.store import ResultStore, Row, RunMetrics

MODEL, PROTOCOL, VERSION = "tiny-llama", "wikitext2:8x128", "0.1.0"
P_TPL, Q_TPL, SLEB_TPL = "sparsegpt:{r}", "rtn:w{b}a{b}", "sleb:{r}"
DENSE = 10.0
Q_PPL = {8: 10.1, 6: 10.6, 5: 11.8, 4: 16.0}  # C_Q = 2.00, 2.67, 3.20, 4.00
P_PPL = {0.1: 10.05, 0.3: 11.2, 0.5: 14.0}  # CER: <= 2.00 (beats 8 bits), 2.93, 3.62
# A(Q->P) per cell, chosen to rise with C*_P - C_Q within each ratio; -inf: Q-first collapsed.
ADVANTAGE = {
    0.1: {8: 0.02, 6: -0.01, 5: -0.03, 4: -0.4},
    0.3: {8: 0.05, 6: 0.004, 5: -0.08, 4: -0.5},
    0.5: {8: 0.3, 6: 0.1, 5: -0.2, 4: -math.inf},
}
SLEB_ADVANTAGE = {8: 0.0, 6: 0.0, 5: -0.057, 4: -9.379}  # 003's Table 1 shape: exact zeros


def _row(recipe: str, kind: str, ppl: float, extra: dict, seed: int = 0, model: str = MODEL,
         blocks: list[float] | None = None) -> Row:
    metrics = {"sparsity": 0.0, "avg_weight_bits": 16.0, "compression_ratio": 1.0}
    if blocks is not None:
        metrics |= {"per_block_error": blocks}
    return Row.create(model, PROTOCOL, recipe, seed, VERSION, kind, metrics=RunMetrics.from_perplexity(ppl, metrics),
                      extra=extra)


def _blocks(scale: float, growth: float) -> list[float]:
    return [scale * (1 + growth) ** depth for depth in range(6)]


def sweep_rows(templates: bool = True) -> list[Row]:
    """Rows as `crescendo sweep` writes them for sparsegpt x rtn, plus a sleb x rtn sweep at 0.1."""
    def tpl(prune: str) -> dict:
        return {"prune": prune, "quant": Q_TPL} if templates else {}

    rows = [_row("dense", "dense", DENSE, {}, seed=s) for s in (0, 1)]
    rows += [_row(f"rtn:w{b}a{b}", "single", ppl, {"method": "quant", "bits": b, **tpl(P_TPL)},
                  blocks=_blocks(0.01 * (9 - b), 0.2)) for b, ppl in Q_PPL.items()]
    rows += [_row(f"sparsegpt:{r:g}", "single", ppl, {"method": "prune", "ratio": r, **tpl(P_TPL)})
             for r, ppl in P_PPL.items()]
    for r, by_bits in ADVANTAGE.items():
        for b, a in by_bits.items():
            p_first = P_PPL[r] + Q_PPL[b] - DENSE + 0.1
            q_first = p_first - a  # A = ppl(P > Q) - ppl(Q > P)
            base = {"ratio": r, "bits": b, **tpl(P_TPL)}
            rows.append(_row(f"sparsegpt:{r:g} > rtn:w{b}a{b}", "order", p_first,
                             base | {"first": "prune"}, blocks=_blocks(0.01 * (9 - b) + r, 0.25)))
            rows.append(_row(f"rtn:w{b}a{b} > sparsegpt:{r:g}", "order", q_first,
                             base | {"first": "quant"}, blocks=_blocks(0.01 * (9 - b) + r, 0.4)))
    for b in (8, 4):  # multi-stage, p1 + p2 = 0.3; p2 = 0 and p2 = 0.3 are the order rows above
        for p1, p2, ppl in ((0.2, 0.1, 0.1), (0.1, 0.2, 0.2)):
            extra = {"total": 0.3, "p1": p1, "p2": p2, "bits": b, **tpl(P_TPL)}
            rows.append(_row(f"sparsegpt:{p1:g} > rtn:w{b}a{b} > sparsegpt:{p2:g}", "multistage",
                             P_PPL[0.3] + Q_PPL[b] - DENSE - ppl, extra))
    rows.append(_row("sleb:0.1", "single", 12.0, {"method": "prune", "ratio": 0.1, **tpl(SLEB_TPL)}))
    for b, a in SLEB_ADVANTAGE.items():
        base = {"ratio": 0.1, "bits": b, **tpl(SLEB_TPL)}
        p_first = 12.0 + Q_PPL[b] - DENSE
        rows.append(_row(f"sleb:0.1 > rtn:w{b}a{b}", "order", p_first, base | {"first": "prune"}))
        rows.append(_row(f"rtn:w{b}a{b} > sleb:0.1", "order", p_first - a, base | {"first": "quant"}))
    rows.append(Row.create(MODEL, PROTOCOL, "wanda:0.5", 0, VERSION, "search",
                           metrics=RunMetrics.from_perplexity(50.0, bop_reduction=1.0)))
    rows.append(_row("dense", "dense", 30.0, {}, model="other-model"))
    return rows


@pytest.fixture
def store_path(tmp_path: Path) -> Path:
    path = tmp_path / "runs.sqlite"
    with ResultStore(path) as store:
        for row in sweep_rows():
            store.put(row)
    return path


def markdown_table(text: str, title_start: str) -> dict[str, dict[str, str]]:
    """The Markdown table whose bold title starts with `title_start`: row label -> header -> cell."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"**{title_start}"))
    header = [c.strip().replace("\\*", "*") for c in lines[start + 2].strip("|").split("|")]
    table = {}
    for line in lines[start + 4:]:
        if not line.startswith("|"):
            break
        cells_ = [c.strip() for c in line.strip("|").split("|")]
        table[cells_[0]] = dict(zip(header, cells_))
    return table


def test_report_writes_figures_markdown_and_self_contained_html(store_path: Path, tmp_path: Path):
    index = build_report(store_path, tmp_path / "report", model=MODEL)
    assert index.out_dir == tmp_path / "report" and index.html.is_file() and index.markdown.is_file()
    pngs = [p for p in index.figures if p.suffix == ".png"]
    svgs = [p for p in index.figures if p.suffix == ".svg"]
    # fig3 x2 experiments, fig7 x1, layer-wise x1 (sleb rows carry no per-block errors)
    assert len(pngs) == len(svgs) == 4
    assert {p.name.split("_")[0] for p in pngs} == {"fig3", "fig7", "layers"}
    for png in pngs:
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    for svg in svgs:
        assert "<svg" in svg.read_text()[:2000]
    page = index.html.read_text()
    assert 'src="http' not in page and "<link" not in page and "<script" not in page
    assert page.count('src="data:image/png;base64,') == 4 and "<table>" in page
    md = index.markdown.read_text()
    for png in pngs:
        assert f"](figures/{png.name})" in md
    assert not list(tmp_path.glob(".report.tmp-*"))  # the temporary folder was renamed away


def test_markdown_grids_hold_hand_computed_values(store_path: Path, tmp_path: Path):
    md = build_report(store_path, tmp_path / "r").markdown.read_text()
    grid = markdown_table(md, "A(Q->P) = M(Q first)")  # the first experiment: sleb sorts first
    # rows measured before per-unit results were kept: A without an interval, and the table says so
    assert grid["0.1 (1.11)"]["B=8 (C_Q 2.00)"] == "0 (no units)"
    assert grid["0.1 (1.11)"]["B=4 (C_Q 4.00)"] == "-9.379 (no units)"
    sgpt = md[md.index("## sparsegpt:{r} ×"):]
    grid = markdown_table(sgpt, "A(Q->P) = M(Q first)")
    # p=0.3, B=8: ppl(P > Q) = 11.2 + 10.1 - 10 + 0.1 = 11.4, ppl(Q > P) = 11.35 -> A = 0.05
    assert grid["0.3 (1.43)"]["B=8 (C_Q 2.00)"] == "0.050 (no units)"
    # p=0.3, B=4: ppl(P > Q) = 17.3, ppl(Q > P) = 17.8 -> A = -0.5
    assert grid["0.3 (1.43)"]["B=4 (C_Q 4.00)"] == "-0.500 (no units)"
    assert grid["0.5 (2.00)"]["B=4 (C_Q 4.00)"] == "-inf (no units)"  # Q-first collapsed
    cer = markdown_table(sgpt, "CER of sparsegpt")
    assert cer["0.1 (1.11)"]["C*_P"] == "<= 2.00"  # beats 8 bits: only a bound
    assert cer["0.3 (1.43)"]["C*_P"] == "2.93"  # 2.67 + (11.2 - 10.6) / (11.8 - 10.6) * 0.53
    quant_first = markdown_table(sgpt, "Perplexity, quant first")
    assert quant_first["0.5 (2.00)"]["B=4"] == "inf"
    assert quant_first["rtn alone"]["sparsegpt alone"] == "10.00"  # dense in the corner
    summary = markdown_table(sgpt, "Spearman rank correlation")
    assert summary["p = 0.3"]["rho"] == "1.000" and summary["p = 0.3"]["n"] == "4"
    # exact: rho = 1 is 2 of the 4! = 24 pairings (the t approximation printed 0.000)
    assert summary["p = 0.3"]["p-value"] == "0.083"
    assert summary["p = 0.3"]["p-value method"] == "exact (24 permutations)"
    assert summary["p = 0.5"]["n"] == "3"  # the -inf cell is left out
    assert summary["p = 0.5"]["p-value"] == "0.333"  # 2 of 3! = 6
    order = markdown_table(sgpt, "Predicted / measured first method")
    assert order["0.1 (1.11)"]["B=8 (C_Q 2.00)"] == "P/Q MISS (no units)"  # the bound decides (was "?/Q")
    assert "Verdict: supported" in sgpt
    table1 = markdown_table(md, "Table 1: A(Q->P) by C_Q, rtn, p = 0.1")
    assert table1["2.00 (8)"] == {"C_Q (B_Q)": "2.00 (8)", "sleb": "0 (no units)", "sparsegpt": "0.020 (no units)"}
    multi = markdown_table(sgpt, "Multi-stage")
    assert list(multi["B=8"])[1:] == ["p2=0", "p2=0.1", "p2=0.2", "p2=0.3"]  # ends from order rows


def test_summary_counts_predictions(store_path: Path):
    with ResultStore(store_path) as store:
        grouping = group_rows(store.rows(model=MODEL))
    sgpt = next(e for e in grouping.experiments if e.key.prune == P_TPL)
    summary = summarize(cells(sgpt))
    # p=0.1 B=8: C*_P <= 2.00 touches C_Q = 2.00, so P is not stronger: P first (bound-aware),
    # measured Q first (A = +0.02): a miss. Miss: p=0.5 B=5 (x = 0.42 > 0 but A < 0).
    assert (summary.total, summary.decided, summary.agree) == (12, 12, 10)
    first = next(c for c in cells(sgpt) if (c.ratio, c.bits) == (0.1, 8))
    assert first.predicted_first == "prune" and first.agrees is False
    assert [c.rho for c in summary.per_ratio] == pytest.approx([1.0, 1.0, 1.0])
    assert summary.pooled.n == 7 and summary.verdict == "supported"  # exact CERs, finite A


def test_templates_are_inferred_when_rows_lack_them():
    with_tpl = group_rows(sweep_rows(templates=True))
    without = group_rows(sweep_rows(templates=False))
    keys = [e.key for e in without.experiments]
    assert keys == [e.key for e in with_tpl.experiments]
    assert ExperimentKey(MODEL, PROTOCOL, P_TPL, Q_TPL) in keys and not without.skipped
    for a, b in zip(with_tpl.experiments, without.experiments):
        assert (a.quant, a.prune, a.orders.keys(), a.multistage) == (b.quant, b.prune,
                                                                     b.orders.keys(), b.multistage)


def test_empty_store_raises_store_error(tmp_path: Path):
    path = tmp_path / "empty.sqlite"
    ResultStore(path).close()
    with pytest.raises(StoreError, match="empty"):
        build_report(path, tmp_path / "out")
    with pytest.raises(StoreError, match="no results store"):
        build_report(tmp_path / "missing.sqlite", tmp_path / "out")
    assert not (tmp_path / "missing.sqlite").exists() and not (tmp_path / "out").exists()


def test_no_matching_rows_raises_store_error(store_path: Path, tmp_path: Path):
    with pytest.raises(StoreError, match="model=other-model"):  # it has a dense row only
        build_report(store_path, tmp_path / "out", model="other-model")
    with pytest.raises(StoreError, match="protocol=c4"):
        build_report(store_path, tmp_path / "out", protocol="c4")


def test_out_dir_must_be_new_or_empty(store_path: Path, tmp_path: Path):
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("keep me")
    with pytest.raises(ConfigError, match="not empty"):
        build_report(store_path, busy)
    assert (busy / "notes.txt").read_text() == "keep me"
    empty = tmp_path / "empty"
    empty.mkdir()
    assert build_report(store_path, empty).html.is_file()


def test_failure_leaves_no_report_folder(store_path: Path, tmp_path: Path, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr("crescendo.report.render_html", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        build_report(store_path, tmp_path / "out")
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.tmp-*"))
    assert report_html.render_html is not broken  # only the name used by build_report was patched


def test_seeds_are_averaged_and_a_collapsed_seed_stays_visible():
    rows = sweep_rows()
    extra = {"ratio": 0.3, "bits": 8, "first": "prune", "prune": P_TPL, "quant": Q_TPL}
    rows.append(_row("sparsegpt:0.3 > rtn:w8a8", "order", math.inf, extra, seed=1))
    rows.append(_row("sparsegpt:0.3 > rtn:w4a4", "order", 18.3, extra | {"bits": 4}, seed=1))
    sgpt = next(e for e in group_rows(rows).experiments if e.key.prune == P_TPL)
    assert sgpt.orders[(0.3, 8, "prune")].perplexity == math.inf
    assert sgpt.orders[(0.3, 4, "prune")].perplexity == pytest.approx((17.3 + 18.3) / 2)
    assert sgpt.orders[(0.3, 4, "prune")].seeds == (0, 1)
    assert sgpt.dense is not None and sgpt.dense.seeds == (0, 1)


def test_without_single_runs_figure_3_is_explained_not_drawn(tmp_path: Path):
    path = tmp_path / "orders-only.sqlite"
    with ResultStore(path) as store:
        for row in sweep_rows():
            if row.kind in ("dense", "order"):
                store.put(row)
    index = build_report(path, tmp_path / "out")
    assert not [p for p in index.figures if p.name.startswith("fig3_")]
    md = index.markdown.read_text()
    assert "Not drawn: C\\*_P needs rtn:w{b}a{b} alone" in md
    grid = markdown_table(md[md.index("## sparsegpt:{r} ×"):], "A(Q->P) = M(Q first)")
    assert grid["0.3 (1.43)"]["B=8 (C_Q 2.00)"] == "0.050 (no units)"  # A needs no CER


def test_exact_zero_fractions_are_tabulated_per_order(tmp_path: Path):
    extra = {"prune": P_TPL, "quant": "rtn:w{b}", "ratio": 0.1, "bits": 3}
    rows = [_row("dense", "dense", DENSE, {})]
    for recipe, first, zeros in (("sparsegpt:0.1 > rtn:w3", "prune", 0.352), ("rtn:w3 > sparsegpt:0.1", "quant", 0.281)):
        row = _row(recipe, "order", 30.0, extra | {"first": first})
        rows.append(replace(row, metrics=replace(row.metrics, zero_fraction=zeros)))
    with ResultStore(tmp_path / "z.sqlite") as store:
        for row in rows:
            store.put(row)
    build_report(tmp_path / "z.sqlite", tmp_path / "rep")
    table = markdown_table((tmp_path / "rep" / "report.md").read_text(), "Exact zeros")
    assert table["0.1 (1.11)"]["B=3"] == "35.2% / 28.1%"


def _store(tmp_path: Path, rows: list[Row], name: str = "s.sqlite") -> Path:
    path = tmp_path / name
    with ResultStore(path) as store:
        for row in rows:
            store.put(row)
    return path


def test_cer_variants_are_applied_and_named(store_path: Path, tmp_path: Path):
    from crescendo.analysis.cer import CERSettings

    md = build_report(store_path, tmp_path / "default").markdown.read_text()
    assert "CER: linear in perplexity, not anchored" in md
    md = build_report(store_path, tmp_path / "r", cer=CERSettings(anchor="dense", scale="log")
                      ).markdown.read_text()
    assert "CER: linear in log-perplexity, anchored at dense (C = 1)" in md
    cer = markdown_table(md[md.index("## sparsegpt:{r} ×"):], "CER of sparsegpt")
    # P(0.1) = 10.05 between dense 10.0 (C = 1) and W8A8 10.1 (C = 2), in log-perplexity:
    # 1 + log(10.05 / 10) / log(10.1 / 10) = 1.50 (no longer the bound "<= 2.00")
    assert cer["0.1 (1.11)"]["C*_P"] == "1.50"


def test_a_non_monotone_curve_is_flagged_not_used(tmp_path: Path):
    from crescendo.analysis.cer import CERSettings

    rows = [r for r in sweep_rows() if r.recipe != "rtn:w5a5"]
    extra = {"method": "quant", "bits": 5, "prune": P_TPL, "quant": Q_TPL}
    rows.append(_row("rtn:w5a5", "single", 10.3, extra))  # better than 6 bits (10.6): C up, M up
    path = _store(tmp_path, rows)
    md = build_report(path, tmp_path / "r").markdown.read_text()
    sgpt = md[md.index("## sparsegpt:{r} ×"):]
    assert "Warning: the reference curve rtn:w{b}a{b} is not monotone" in sgpt
    assert "2.67 to 3.20" in sgpt and "--cer-envelope" in sgpt
    cer = markdown_table(sgpt, "CER of sparsegpt")
    assert cer["0.3 (1.43)"]["C*_P"] == "undefined"
    enveloped = build_report(path, tmp_path / "e", cer=CERSettings(envelope=True)).markdown.read_text()
    sgpt = enveloped[enveloped.index("## sparsegpt:{r} ×"):]
    assert "monotone envelope" in sgpt
    # envelope: 5 bits takes 6 bits' 10.6; 11.2 lies between 10.6 (C 3.20) and 16.0 (C 4.00)
    cer = markdown_table(sgpt, "CER of sparsegpt")
    assert cer["0.3 (1.43)"]["C*_P"] == f"{3.2 + (11.2 - 10.6) / (16.0 - 10.6) * 0.8:.2f}"


def test_interference_and_excess_are_reported_where_the_store_has_them(store_path: Path,
                                                                      tmp_path: Path):
    md = build_report(store_path, tmp_path / "sweep").markdown.read_text()
    assert "Interference (003, Definition 6)" in md and "no per-linear" in md
    rows = sweep_rows()
    for recipe, delta, excess in (("sparsegpt:0.5 > rtn:w4a4", -0.361, 0.125),
                                  ("rtn:w4a4 > sparsegpt:0.5", 0.528, -0.25)):
        row = Row.create(MODEL, PROTOCOL, recipe, 0, VERSION, "order",
                         metrics=RunMetrics.from_perplexity(20.0, interference=delta, orthogonality_excess=excess,
                                                            composed_error=3.0, sum_single_errors=3.0 - excess),
                         extra={"study": "order", "methods": recipe.split(" > ")})
        rows.append(row)
    md = build_report(_store(tmp_path, rows), tmp_path / "r").markdown.read_text()
    table = markdown_table(md, "Interference and orthogonality")
    assert table["rtn:w4a4 > sparsegpt:0.5"]["Δ (Definition 6)"] == "0.528"
    assert table["rtn:w4a4 > sparsegpt:0.5"]["excess over the sum of singles (Harma)"] == "-0.25"
    assert table["sparsegpt:0.5 > rtn:w4a4"]["excess over the sum of singles (Harma)"] == "0.125"
    assert "rows skipped" not in md  # order-study rows are not malformed sweep rows


def test_the_report_names_the_commit_that_generated_it(store_path: Path, tmp_path: Path):
    md = build_report(store_path, tmp_path / "r", generated_by="abc1234").markdown.read_text()
    assert "Generated by crescendo" in md and "commit abc1234" in md


def test_advantage_shows_its_spread_over_calibration_seeds(tmp_path: Path):
    extra = {"prune": P_TPL, "quant": "rtn:w{b}", "ratio": 0.1, "bits": 4}
    rows = [_row("dense", "dense", DENSE, {}, seed=s) for s in (0, 1)]
    for seed, (p_first, q_first) in {0: (30.0, 29.0), 1: (30.5, 29.1)}.items():  # A = +1.0 and +1.4
        rows.append(_row("sparsegpt:0.1 > rtn:w4", "order", p_first, extra | {"first": "prune"}, seed=seed))
        rows.append(_row("rtn:w4 > sparsegpt:0.1", "order", q_first, extra | {"first": "quant"}, seed=seed))
    from crescendo.report.analysis import cells as report_cells

    experiment = group_rows(rows).experiments[0]
    (cell,) = report_cells(experiment)
    assert cell.advantage == pytest.approx(1.2) and cell.advantage_spread == pytest.approx(0.4)
    assert cell.within_noise is False
    with ResultStore(tmp_path / "seeds.sqlite") as store:
        for row in rows:
            store.put(row)
    md = build_report(tmp_path / "seeds.sqlite", tmp_path / "rep").markdown.read_text()
    assert "| 1.200 (no units) (seed spread 0.4) |" in md
