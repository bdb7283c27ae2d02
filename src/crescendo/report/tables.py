"""Report tables as values (title, header, rows), rendered to Markdown or HTML by the same object.

Numbers are formatted once, here: perplexities and accuracies with 2 decimals, A(Q -> P) with 3 (as 003's Table 1)
and an exact 0 as "0" (SLEB's "no interference" is an exact zero and must not read as 0.000), CERs
with their bound ("<= 2.00", ">= 4.00"). Non-finite values print as "inf", "-inf", "nan".
"""

from __future__ import annotations

import html
import math
from collections import defaultdict
from dataclasses import dataclass

from ..analysis.cer import CER, CERSettings
from ..analysis.uncertainty import Comparison
from .analysis import (
    DEFAULT_CER,
    Cell,
    Summary,
    cer_by_ratio,
    cer_label,
    multistage_comparisons,
    reference_of,
)
from .data import ErrorAnalysis, Experiment, Measurement, method_name, metric_text, value_label


def md_escape(text: str) -> str:
    """Plain text for Markdown: `C*_P` must not open an emphasis, `|` must not split a cell."""
    return text.replace("\\", "\\\\").replace("*", "\\*").replace("|", "\\|")


def fmt_number(value: float | None, digits: int = 2) -> str:
    """A number for a table; "-" for missing, "inf" / "-inf" / "nan" for non-finite values."""
    if value is None:
        return "-"
    if math.isnan(value):
        return "nan"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return f"{value:.{digits}f}"


def fmt_advantage(value: float | None) -> str:
    """A(Q -> P) with 3 decimals; an exact zero as "0", tiny values in scientific notation."""
    if value is not None and math.isfinite(value):
        if value == 0:
            return "0"
        if abs(value) < 0.001:
            return f"{value:.1e}"
    return fmt_number(value, 3)


VERDICT_WORDS = {"equivalent": "equivalent", "undetermined": "undetermined"}


def fmt_verdict(c: Comparison | None, first: str, second: str) -> str:
    """A comparison's verdict in words: "<first> better", "<second> better", "equivalent", "undetermined";
    "no units" when the rows were measured before per-unit results were kept."""
    if c is None:
        return "no units"
    return {"first better": f"{first} better", "second better": f"{second} better"}.get(c.verdict, c.verdict)


def fmt_interval(c: Comparison | None) -> str:
    """A's 95% interval, "[+0.912, +1.556]", or "" without per-unit results."""
    if c is None:
        return ""
    return f"[{fmt_advantage(c.interval[0])}, {fmt_advantage(c.interval[1])}]"


def fmt_compared(value: float | None, c: Comparison | None, first: str, second: str) -> str:
    """A with its interval and verdict: "+1.234 [+0.912, +1.556] Q first better"; rows without per-unit
    results say "(no units)"."""
    text = fmt_advantage(value)
    if c is None:
        return f"{text} (no units)"
    return f"{text} {fmt_interval(c)} {fmt_verdict(c, first, second)}"


def fmt_cer(cer: CER | None, missing: str = "-") -> str:
    """"2.93", "<= 2.00", ">= 5.33"; `missing` where there is none ("undefined" for an unusable
    reference curve)."""
    return missing if cer is None else {"exact": "", "upper": "<= ", "lower": ">= "}[cer.bound] + \
        f"{cer.value:.2f}"


def _ppl(m: Measurement | None) -> str:
    """The measured value: a perplexity, or an accuracy (%)."""
    return fmt_number(None if m is None else m.value)


def bits_label(bits: int) -> str:
    return f"{16 / bits:.2f} ({bits})"


def ratio_label(ratio: float) -> str:
    return f"{ratio:g} ({1 / (1 - ratio):.2f})"


@dataclass(frozen=True)
class Table:
    """A rectangular table: every row has as many cells as the header."""

    title: str
    header: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]
    note: str = ""

    def __post_init__(self) -> None:
        bad = [i for i, row in enumerate(self.rows) if len(row) != len(self.header)]
        if bad:
            raise ValueError(f"table {self.title!r}: rows {bad} do not match the header width")

    def to_markdown(self) -> str:
        def line(cells: tuple[str, ...]) -> str:
            return "| " + " | ".join(md_escape(c) for c in cells) + " |"

        out = [f"**{md_escape(self.title)}**", "", line(self.header),
               "|" + "|".join(["---"] + ["---:"] * (len(self.header) - 1)) + "|"]
        out += [line(row) for row in self.rows]
        if self.note:
            out += ["", f"*{md_escape(self.note)}*"]
        return "\n".join(out)

    def to_html(self) -> str:
        head = "".join(f"<th>{html.escape(c)}</th>" for c in self.header)
        body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>"
                       for row in self.rows)
        note = f"<p class=\"note\">{html.escape(self.note)}</p>" if self.note else ""
        return (f"<table><caption>{html.escape(self.title)}</caption><thead><tr>{head}</tr></thead>"
                f"<tbody>{body}</tbody></table>{note}")


def perplexity_tables(exp: Experiment) -> list[Table]:
    """The full perplexity (or accuracy) grid: ratio x bits for each order, the singles in the margins."""
    k, bits = exp.key, exp.bits
    label = value_label(exp.metric_name)
    header = ("p (C_P)", f"{k.prune_name} alone") + tuple(f"B={b}" for b in bits)
    dense = _ppl(exp.dense)
    tables = []
    for first, recipe in (("prune", f"{k.prune} > {k.quant}"), ("quant", f"{k.quant} > {k.prune}")):
        rows = [(f"{k.quant_name} alone", dense) + tuple(_ppl(exp.quant.get(b)) for b in bits)]
        for r in exp.ratios:
            rows.append((ratio_label(r), _ppl(exp.prune.get(r)))
                        + tuple(_ppl(exp.orders.get((r, b, first))) for b in bits))
        tables.append(Table(f"{label[0].upper() + label[1:]}, {first} first ({recipe})", header, tuple(rows),
                            f"dense {label} {dense} (shown where no method is applied); "
                            "- = not measured"))
    return tables


def cer_table(exp: Experiment, settings: CERSettings = DEFAULT_CER) -> Table:
    """C*_P per pruning ratio against the quantizer curve."""
    cers = cer_by_ratio(exp, settings)
    curve, problem = reference_of(exp, settings)
    unusable = curve is None or not curve.usable
    rows = tuple((ratio_label(r), _ppl(m), fmt_cer(cers.get(r), "undefined" if unusable and
                                                  not math.isnan(m.value) else "-"))
                 for r, m in exp.prune.items())
    anchor = " and dense at C = 1" if settings.anchor == "dense" else ""
    return Table(f"CER of {exp.key.prune_name} per pruning ratio",
                 ("p (C_P)", value_label(exp.metric_name), "C*_P"),
                 rows, f"{cer_label(settings, exp.metric_name)}; reference curve: {exp.key.quant} at B = {sorted(exp.quant)}, "
                 f"C_Q = 16/B{anchor}; <= / >= : outside the curve, only a bound"
                 + (f". Warning: {problem}" if problem else ""))


def advantage_table(exp: Experiment, all_cells: list[Cell]) -> Table:
    """The A(Q -> P) grid, ratio x bits."""
    by = {(c.ratio, c.bits): c for c in all_cells}
    bits = exp.bits

    def show(c: Cell) -> str:
        text = fmt_compared(c.advantage, c.comparison, "Q first", "P first")
        if c.advantage_spread is not None:
            text += f" (seed spread {c.advantage_spread:.3g})"
        return text

    rows = tuple((ratio_label(r),) + tuple(show(by[(r, b)]) if (r, b) in by else "-" for b in bits)
                 for r in exp.ratios)
    header = ("p (C_P)",) + tuple(f"B={b} (C_Q {16 / b:.2f})" for b in bits)
    return Table(f"A(Q->P) = M(Q first) - M(P first), {metric_text(exp.metric_name)}", header, rows,
                 "A > 0: quantizing first is better; +inf: only prune-first collapsed, "
                 "-inf: only quantize-first collapsed, nan: both. [lo, hi]: 95% interval from a paired bootstrap "
                 "over the evaluation units, plus seed-to-seed variation with several seeds; the verdict is "
                 f"'equivalent' when the interval lies inside the protocol's margin ({_margin_name(all_cells)}), "
                 "'undetermined' when it straddles 0; 'no units': rows measured before per-unit results "
                 "were kept, no interval; with several seeds A is the mean and the seed spread (max - min) follows")


def _margin_name(all_cells: list[Cell]) -> str:
    names = {c.comparison.margin.name for c in all_cells if c.comparison is not None}
    return ", ".join(sorted(names)) or "none: no units"


def order_table(exp: Experiment, all_cells: list[Cell], settings: CERSettings = DEFAULT_CER) -> Table:
    """Predicted (weaker first) vs measured better order per cell."""
    by = {(c.ratio, c.bits): c for c in all_cells}
    letter = {"quant": "Q", "prune": "P", None: "?"}

    def cell(c: Cell) -> str:
        mark = {True: "ok", False: "MISS", None: ""}[c.agrees]
        measured = letter[c.measured_first] if c.measured_first or c.comparison is None else (
            "=" if c.verdict == "equivalent" else "~")
        text = f"{letter[c.predicted_first]}/{measured} {mark}".strip()
        return text + (" (no units)" if c.comparison is None else "")

    cers = cer_by_ratio(exp, settings)
    rows = tuple((ratio_label(r), fmt_cer(cers.get(r)))
                 + tuple(cell(by[(r, b)]) if (r, b) in by else "-" for b in exp.bits)
                 for r in exp.ratios)
    header = ("p (C_P)", "C*_P") + tuple(f"B={b} (C_Q {16 / b:.2f})" for b in exp.bits)
    return Table("Predicted / measured first method (Q or P)", header, rows,
                 "predicted: the weaker method first (Q iff C_Q < C*_P); a bound decides when it "
                 "lies on one side of C_Q, touching included (C*_P <= 2.00 against C_Q = 2.00: P is "
                 "the weaker, P first); ?: undecided (C*_P == C_Q exactly, a bound reaching across "
                 "C_Q, or no CER). measured: the order the paired comparison calls better; = equivalent "
                 "within the margin, ~ undetermined (neither counts as decided); '(no units)': the sign of A "
                 "without an interval")


def summary_table(summary: Summary) -> Table:
    rows = [(c.label, str(c.n), fmt_number(c.rho, 3), fmt_number(c.pvalue, 3), c.method)
            for c in summary.per_ratio + [summary.pooled]]
    share = "-" if summary.agreement is None else f"{100 * summary.agreement:.0f}%"
    return Table("Spearman rank correlation of A(Q->P) with C*_P - C_Q",
                 ("points", "n", "rho", "p-value", "p-value method"), tuple(rows),
                 f"two-sided p-values: exact permutation distribution (all n! pairings, ties by "
                 f"midranks) up to 9 points, t approximation above. Predicted order matches the "
                 f"measured better order in {summary.agree} of {summary.decided} decided cells "
                 f"({share}; {summary.total} cells in all). Verdict: {summary.verdict}")


def multistage_table(exp: Experiment, total: float) -> Table:
    series = multistage_comparisons(exp, total)
    p2s = sorted({p2 for points in series.values() for p2, *_ in points})
    rows = []
    for bits, points in series.items():
        by = {p2: (ppl, a, c) for p2, ppl, a, c in points}

        def show(p: float) -> str:
            ppl, a, c = by[p]
            if p == 0.0:
                return f"{fmt_number(ppl)} (base)"
            return f"{fmt_number(ppl)} ({fmt_compared(a, c, 'later', 'all first')})"

        rows.append((f"B={bits}",) + tuple(show(p) if p in by else "-" for p in p2s))
    return Table(f"Multi-stage P(p1) > Q > P(p2), p1 + p2 = {total:g}: {value_label(exp.metric_name)} "
                 "(A vs p2 = 0)",
                 ("bits",) + tuple(f"p2={p:g}" for p in p2s), tuple(rows),
                 "A = M(p2) - M(p2 = 0) with its 95% interval and verdict: 'later better' means moving "
                 "pruning after the quantizer helped")


def zeros_table(exp: Experiment) -> Table | None:
    """Exact-zero fraction of both orders per cell: pruning after a low-bit quantizer may only
    re-select the weights it rounded to zero, so the two orders need not end equally sparse."""
    rows = []
    for r in exp.ratios:
        cells = []
        for b in exp.bits:
            pf, qf = exp.orders.get((r, b, "prune")), exp.orders.get((r, b, "quant"))
            if pf is None or qf is None or pf.zero_fraction is None or qf.zero_fraction is None:
                cells.append("-")
            else:
                cells.append(f"{100 * pf.zero_fraction:.1f}% / {100 * qf.zero_fraction:.1f}%")
        rows.append((ratio_label(r),) + tuple(cells))
    if all(c == "-" for row in rows for c in row[1:]):
        return None
    return Table("Exact zeros, P first / Q first", ("p (C_P)",) + tuple(f"B={b}" for b in exp.bits), tuple(rows),
                 "fraction of block weights exactly zero (pruned, or rounded to zero by the quantizer); "
                 "- = not stored (rows from before this was recorded)")


def _table1_cell(c: Cell | None) -> str:
    return "-" if c is None else fmt_compared(c.advantage, c.comparison, "Q first", "P first")


def table1(experiments: list[Experiment], cells_of: dict[str, list[Cell]]) -> list[Table]:
    """003's Table 1: A(Q -> P) by C_Q, one column per pruning method, for every ratio measured by
    at least two pruning methods with one quantizer. Without such a pair: one table per experiment,
    one column per ratio."""
    groups: dict[tuple[str, str, str, str], list[Experiment]] = defaultdict(list)
    for exp in experiments:
        groups[(exp.key.model, exp.key.protocol, exp.key.quant, exp.key.prefix)].append(exp)
    tables = []
    for (model, protocol, quant, prefix), exps in groups.items():
        names = [e.key.prune_name for e in exps]
        labels = [e.key.prune_name if names.count(e.key.prune_name) == 1 else e.key.prune
                  for e in exps]
        ratios = sorted({r for e in exps for r in e.ratios})
        for r in ratios:
            having = [(lab, e) for lab, e in zip(labels, exps) if any(c.ratio == r
                                                                     for c in cells_of[e.key.slug])]
            if len(having) < 2:
                continue
            by = {(lab, c.bits): c for lab, e in having for c in cells_of[e.key.slug] if c.ratio == r}
            bits = sorted({b for _, b in by}, reverse=True)
            rows = tuple((bits_label(b),) + tuple(_table1_cell(by.get((lab, b))) for lab, _ in having)
                         for b in bits)
            after = f" after {prefix}" if prefix else ""
            tables.append(Table(f"Table 1: A(Q->P) by C_Q, {method_name(quant)}{after}, p = {r:g}, "
                                f"{model}, {protocol}", ("C_Q (B_Q)",) + tuple(lab for lab, _ in having),
                                rows))
    if tables:
        return tables
    for exp in experiments:
        use = cells_of[exp.key.slug]
        ratios = sorted({c.ratio for c in use})
        by = {(c.ratio, c.bits): c for c in use}
        bits = sorted({c.bits for c in use}, reverse=True)
        rows = tuple((bits_label(b),) + tuple(_table1_cell(by.get((r, b))) for r in ratios)
                     for b in bits)
        tables.append(Table(f"Table 1 (single pruning method): A(Q->P) by C_Q, {exp.key.label}",
                            ("C_Q (B_Q)",) + tuple(f"{exp.key.prune_name} p={r:g}" for r in ratios),
                            rows))
    return tables


def error_table(errors: list[ErrorAnalysis]) -> Table:
    """Definition 6's interference and Harma's orthogonality excess, per composed order."""
    def num(value: float | None) -> str:
        return "-" if value is None else f"{value:.4g}"

    rows = tuple((e.recipe, num(e.interference), num(e.excess), num(e.composed_error),
                  num(e.sum_single_errors),
                  "-" if e.excess is None else ("yes" if e.excess <= 0 else "no"))
                 for e in errors)
    return Table("Interference and orthogonality per composed order",
                 ("order", "Δ (Definition 6)", "excess over the sum of singles (Harma)",
                  "composed error", "sum of single errors", "orthogonal"), rows,
                 "squared per-linear output errors summed over linears. Δ: the last stage's error in "
                 "the pipeline (against the model it was applied to) minus its error alone; excess: "
                 "composed error minus the sum of every single method's error (> 0: not orthogonal)")
