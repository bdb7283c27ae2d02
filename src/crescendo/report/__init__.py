"""Reports rebuilt from the results store alone: 003's Figure 3, Table 1 and Figure 7, Harma et al.'s
layer-wise error accumulation, the perplexity / CER / A(Q -> P) grids and a verdict on the
Progressive Intensity Hypothesis, as PNG + SVG figures, `report.md` and a self-contained
`report.html`.

Sign convention (003): A(Q -> P) = M(quantize first, then prune) - M(prune first, then quantize)
= M("Q > P") - M("P > Q") with M = -perplexity (language models) or M = top-1 accuracy
(classifiers); A > 0 means quantizing first is better.

>>> index = build_report("runs.sqlite", "report/", model="smollm2-135m")  # doctest: +SKIP
>>> index.html  # doctest: +SKIP
PosixPath('report/report.html')
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path

from .. import __version__
from ..analysis.cer import CERSettings
from ..errors import StoreError, one_line
from ..outputs import atomic_output_dir, check_output_dir
from ..store import ResultStore, code_commit, stored_row_count
from . import figures, tables
from .analysis import DEFAULT_CER, Cell, Summary, cells, cer_label, reference_of, summarize
from .data import ErrorAnalysis, Experiment, Grouping, group_rows, metric_text, value_label
from .html import FigureRef, Section, render_html, render_markdown

__all__ = ["ReportIndex", "build_report"]


@dataclass(frozen=True)
class ReportIndex:
    """What `build_report` wrote, with paths inside the final report folder."""

    out_dir: Path
    markdown: Path
    html: Path
    figures: tuple[Path, ...]  # every PNG and SVG
    experiments: tuple[str, ...]  # one label per experiment, in report order
    summaries: Mapping[str, Summary]  # experiment label -> hypothesis summary
    curve_warnings: Mapping[str, str] = field(default_factory=dict)  # label -> reference-curve problem


def _load(store_path: Path, model: str | None, protocol: str | None) -> tuple[Grouping, int]:
    if not store_path.is_file():
        raise StoreError(f"no results store at {store_path}")
    if stored_row_count(store_path) == 0:  # refused before the reading connection leaves -wal/-shm files
        raise StoreError(f"results store {store_path} is empty")
    with ResultStore(store_path, readonly=True) as store:  # a report never writes to a store
        rows = store.rows(model=model, protocol=protocol)
    try:
        grouping = group_rows(rows)
    except (TypeError, ValueError, KeyError, AttributeError, IndexError) as e:  # rows typed, their extra not
        raise StoreError(f"results store {store_path} holds a row whose extra fields the report cannot read "
                         f"({type(e).__name__}: {one_line(e, 120)})") from None
    if not grouping.experiments and not grouping.errors:
        wanted = ", ".join(f"{k}={v}" for k, v in (("model", model), ("protocol", protocol)) if v)
        raise StoreError(f"no sweep rows{' for ' + wanted if wanted else ''} in {store_path}")
    return grouping, len(rows)


def _fig(paths: list[Path], caption: str) -> tuple[FigureRef, ...]:
    return (FigureRef(paths[0], paths[1], caption),) if paths else ()


def _order_caption(exp: Experiment, found: list[Cell], settings: CERSettings) -> str:
    no_cer = sum(c.cer is None for c in found)
    undefined = sum(math.isnan(c.advantage) for c in found)
    missing = [f"{no_cer} cells without a CER" if no_cer else "",
               f"{undefined} cells where both orders collapsed" if undefined else ""]
    left_out = "; ".join(m for m in missing if m)
    return (f"Figure 3: A(Q→P) against C*_P − C_Q for {exp.key.prune} (P) and {exp.key.quant} (Q), "
            f"one exponential fit a·exp(b·x)+c per pruning ratio (dashed: C*_P is a bound). "
            f"{cer_label(settings, exp.metric_name)}." + (f" Not drawn: {left_out}." if left_out else ""))


def _experiment_sections(exp: Experiment, found: list[Cell], summary: Summary, folder: Path,
                         settings: CERSettings) -> list[Section]:
    k = exp.key
    dense = tables.fmt_number(exp.dense.value if exp.dense else None)
    label = value_label(exp.metric_name)
    cer_text = cer_label(settings, exp.metric_name)
    _, problem = reference_of(exp, settings)
    measured = bool(exp.quant) and bool(exp.prune)  # else Figure 3's section says what is missing
    warning = problem.replace("the reference curve", f"the reference curve {k.quant}", 1) \
        if problem and measured else ""
    out = [Section(k.label, 2, (f"P = {k.prune}, Q = {k.quant}; ratios {exp.ratios}, "
                                f"bits {exp.bits}; dense {label} {dense}; {metric_text(exp.metric_name)}. "
                                f"{cer_text}.",)
                   + ((f"Warning: {warning}.",) if warning else ()))]
    if any(c.cer is not None for c in found):
        fig3 = figures.plot_order_advantage(exp, found, folder)
        out.append(Section("Order advantage against CER difference (Figure 3)", 3,
                           figures=_fig(fig3, _order_caption(exp, found, settings))))
    elif found and warning:
        out.append(Section("Order advantage against CER difference (Figure 3)", 3, (
            f"Not drawn: no C*_P ({warning}).",)))
    elif found:  # an empty plot would say nothing; say why instead
        out.append(Section("Order advantage against CER difference (Figure 3)", 3, (
            f"Not drawn: C*_P needs {k.quant} alone and {k.prune} alone at the same protocol, "
            "and the store holds no pair of them.",)))
    if found:
        out.append(Section("Does the Progressive Intensity Hypothesis hold?", 3,
                           (f"Verdict: {summary.verdict}. Per ratio, every cell shares C*_P, so a "
                            "bound C*_P does not change the ranks; the pooled rho uses exact CERs "
                            "only. A bound C*_P decides the predicted order whenever it lies on one "
                            "side of C_Q, touching included.",),
                           tables=(tables.summary_table(summary), tables.order_table(exp, found, settings))))
    zeros = tables.zeros_table(exp)
    grids = (*tables.perplexity_tables(exp), tables.cer_table(exp, settings)) + (
        (tables.advantage_table(exp, found),) if found else ()) + ((zeros,) if zeros else ())
    out.append(Section(f"{label[0].upper() + label[1:]}, CER and A(Q→P) grids", 3, tables=grids))
    for total in exp.multistage_totals:
        paths = figures.plot_multistage(exp, total, folder)
        caption = (f"Figure 7: {k.prune}(p1) > {k.quant} > {k.prune}(p2), p1 + p2 = {total:g}: "
                   f"{label} and advantage over all pruning first, one line per bit-width.")
        out.append(Section(f"Multi-stage compression, p1 + p2 = {total:g} (Figure 7)", 3,
                           figures=_fig(paths, caption),
                           tables=(tables.multistage_table(exp, total),)))
    layer_paths = figures.plot_layer_error(exp, folder)
    if layer_paths:
        caption = ("Per-block relative output error vs the dense model through depth, prune first "
                   "(S→Q) against quantize first (Q→S), as in Harma et al.")
        out.append(Section("Layer-wise error accumulation (S→Q vs Q→S)", 3, figures=_fig(layer_paths, caption)))
    return out


def source_commit() -> str | None:
    """The short git commit of the crescendo source tree this code runs from, with a note when the
    package has uncommitted changes; None outside a git checkout."""
    commit = code_commit()
    if commit is None:
        return None
    base, dirty, digest = commit.partition("+dirty")
    return base + (f" (with uncommitted changes to the package, digest {digest.lstrip('.')})" if dirty else "")


def _interference_section(errors: list[ErrorAnalysis]) -> Section:
    title = "Interference (003, Definition 6) and Harma's orthogonality excess"
    if not errors:
        return Section(title, 2, (
            "Not in this store: both numbers need per-linear output errors of every single method "
            "and composition (Δ also the last stage's error against the model it was applied to), "
            "and sweep rows record per-block errors through depth only, no per-linear errors. "
            "`crescendo order --store` records both per composed order.",))
    groups: dict[tuple[str, str], list[ErrorAnalysis]] = {}
    for e in errors:
        groups.setdefault((e.model, e.protocol), []).append(e)
    text = ("Δ (Definition 6): the last stage's own error inside the pipeline minus its error alone "
            "(< 0: the earlier stages left it less to do). Excess (Harma et al.): the composed "
            "model's error minus the sum of the single methods' errors (> 0: not orthogonal). "
            "The two differ by the cross term of the earlier stages' and the last stage's errors.")
    found = tuple(tables.error_table(rows) for rows in groups.values())
    notes = tuple(f"{model} ({protocol})" for model, protocol in groups)
    return Section(title, 2, (text, "Rows from: " + "; ".join(notes) + "."), tables=found)


def _shared_metric(grouping: Grouping) -> str:
    """The M every experiment measures (their own labels say so when they differ)."""
    names = {e.metric_name for e in grouping.experiments}
    return names.pop() if len(names) == 1 else "-perplexity"


def _overview(store_path: Path, grouping: Grouping, n_rows: int, settings: CERSettings,
              generated_by: str | None) -> Section:
    commit = f" at commit {generated_by}" if generated_by else " (source commit unknown)"
    lines = [f"Generated by crescendo {__version__}{commit}.",
             f"Built from {store_path} ({n_rows} rows read; seeds {list(grouping.seeds)}, "
             f"versions {list(grouping.versions)}). Repeated seeds are averaged; per seed the "
             "newest row counts.",
             "M = −perplexity for language models, M = top-1 accuracy (%) for classifiers (each "
             "experiment names its M). A(Q→P) = M(Q first, then P) − M(P first, then Q), i.e. "
             "perplexity(\"P > Q\") − perplexity(\"Q > P\") or accuracy(\"Q > P\") − "
             "accuracy(\"P > Q\"): A > 0 means quantizing first is better. C_Q = 16/B, C_P = 1/(1−p); C*_P is the ratio at which the quantizer's own "
             "curve matches P alone (interpolated; ≤/≥ marks a bound outside the curve).",
             f"{cer_label(settings, _shared_metric(grouping))}. A reference curve that is not monotone (a higher ratio measured "
             "better) is flagged and gives no CER unless the monotone envelope is asked for.",
             "The hypothesis predicts the weaker method first: Q first iff C_Q < C*_P; a bound "
             "C*_P decides when it lies on one side of C_Q, touching included; an exact tie "
             "C*_P == C_Q names no order.",
             "p-values: exact permutation distribution up to 9 points, t approximation above; "
             "each table names the method."]
    if grouping.skipped:
        lines.append(f"{len(grouping.skipped)} rows skipped (missing fields): "
                     + "; ".join(grouping.skipped[:10]))
    return Section("Overview", 2, tuple(lines))


def build_report(
    store_path: str | PathLike[str],
    out_dir: str | PathLike[str],
    *,
    model: str | None = None,
    protocol: str | None = None,
    cer: CERSettings = DEFAULT_CER,
    generated_by: str | None = None,
) -> ReportIndex:
    """Rebuild the order-analysis report of every sweep experiment in a results store.

    Reads only the store (never in-memory results), so a report can be rebuilt any time a sweep has
    added rows. Writes into a temporary sibling folder and renames it to `out_dir` at the end: a
    failure leaves no half-written report.

    Parameters: `store_path` a results store written by `crescendo sweep`; `out_dir` a folder that
    does not exist or is empty; `model` / `protocol` restrict the report to those rows; `cer` how
    the reference curve is read (default: 003's, linear in perplexity, not anchored, no CER from a
    curve that is not monotone); `generated_by` the commit named in the report (default: the git
    commit of this source tree, when it is one).

    Raises ConfigError when `out_dir` exists and is not empty, StoreError when the store is missing,
    empty, or holds no sweep rows matching the filters.
    """
    store_path, out = Path(store_path), Path(out_dir)
    check_output_dir(out)
    grouping, n_rows = _load(store_path, model, protocol)
    generated_by = generated_by or source_commit()
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output_dir(out) as tmp:
        folder = tmp / "figures"
        folder.mkdir()
        sections = [_overview(store_path, grouping, n_rows, cer, generated_by)]
        cells_of = {e.key.slug: cells(e, cer) for e in grouping.experiments}
        summaries, warnings = {}, {}
        for exp in grouping.experiments:
            summary = summarize(cells_of[exp.key.slug])
            summaries[exp.key.label] = summary
            problem = reference_of(exp, cer)[1]
            if problem:
                warnings[exp.key.label] = problem
            sections += _experiment_sections(exp, cells_of[exp.key.slug], summary, folder, cer)
        table1 = tables.table1(grouping.experiments, cells_of)
        if table1:
            sections.append(Section("A(Q→P) by quantization ratio (Table 1)", 2, (
                "As 003's Table 1: one column per pruning method sharing a quantizer and a ratio "
                "(an exact 0 means both orders measured the same M).",), tables=tuple(table1)))
        sections.append(_interference_section(grouping.errors))
        models = sorted({e.key.model for e in grouping.experiments} | {e.model for e in grouping.errors})
        title = f"crescendo order report: {', '.join(models)}"
        (tmp / "report.md").write_text(render_markdown(title, sections, tmp), encoding="utf-8")
        (tmp / "report.html").write_text(render_html(title, sections), encoding="utf-8")
        written = sorted(p.relative_to(tmp) for p in folder.iterdir())
    return ReportIndex(out, out / "report.md", out / "report.html",
                       tuple(out / p for p in written),
                       tuple(e.key.label for e in grouping.experiments), summaries, warnings)
