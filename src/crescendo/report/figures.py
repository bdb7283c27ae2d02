"""The report's figures (PNG + SVG), drawn with matplotlib's Agg canvas.

Figures are built as `Figure` objects on an explicit `FigureCanvasAgg`, never through pyplot, so no
backend is switched and no global figure list grows; the style is applied with `rc_context`, which
restores the caller's settings. Colours are the Okabe-Ito palette (safe for colour-blind readers),
paired with distinct marker shapes so that series stay apart in greyscale too.

Conventions shared by every figure: a point whose x is only a bound (a CER outside the measured
quantizer curve) is drawn as an open marker with an arrow towards where its true x lies; a value
that is infinite (one order collapsed) is drawn as a triangle pinned to the top or bottom edge;
NaN values are left out and counted in the caption.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import ParamSpec, TypeVar

import matplotlib
import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.transforms import blended_transform_factory

from ..analysis.metrics import CER
from .analysis import Cell, fit_by_ratio, multistage_comparisons
from .data import PERPLEXITY, Experiment, metric_text, value_label

OKABE_ITO = ("#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#000000", "#F0E442")
MARKERS = ("o", "s", "D", "P", "X", "*", "h", "p")  # no triangles: those mark infinite values
STYLE = {
    "font.size": 10, "axes.titlesize": 11, "axes.labelsize": 10, "legend.fontsize": 9,
    "xtick.labelsize": 9, "ytick.labelsize": 9, "axes.grid": True, "grid.alpha": 0.3,
    "grid.linestyle": "-", "axes.spines.top": False, "axes.spines.right": False,
    "svg.fonttype": "none",  # text stays text in the SVG: searchable, small
    "svg.hashsalt": "crescendo",  # stable ids, so a rebuilt SVG diffs cleanly
}
LINESTYLES = ("-", "--", "-.", ":")
PNG_DPI = 150
MAX_LAYER_PANELS = 6  # more cells than this: a spread of ratios x bits is shown
P = ParamSpec("P")
R = TypeVar("R")


def _styled(draw: Callable[P, R]) -> Callable[P, R]:
    """Run a drawing function under the report style; the caller's rcParams come back after."""
    @functools.wraps(draw)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        with matplotlib.rc_context(STYLE):
            return draw(*args, **kwargs)

    return wrapper


def colour(i: int, n: int) -> str:
    """The i-th of n series colours: Okabe-Ito while it lasts, then viridis."""
    if n <= len(OKABE_ITO):
        return OKABE_ITO[i]
    return matplotlib.colormaps["viridis"](i / max(n - 1, 1))


def _new_figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def save(fig: Figure, folder: Path, stem: str) -> list[Path]:
    """Write `stem`.png and `stem`.svg into `folder`; returns both paths."""
    paths = [folder / f"{stem}.png", folder / f"{stem}.svg"]
    fig.savefig(paths[0], dpi=PNG_DPI)
    fig.savefig(paths[1], metadata={"Date": None})  # no timestamp: rebuilt reports are identical
    return paths


def _title(fig: Figure, title: str, exp: Experiment) -> None:
    fig.suptitle(f"{title}\n{exp.key.model}  ·  {exp.key.protocol}", fontsize=11)


def _pin_nonfinite(ax: Axes, xs: Sequence[float], ys: Sequence[float], colour_: str) -> set[float]:
    """Triangles on the top (+inf) or bottom (-inf) edge of the axes at x: off the chart, but
    in place. Returns the infinities drawn."""
    edge = blended_transform_factory(ax.transData, ax.transAxes)
    drawn = set()
    for x, y in zip(xs, ys):
        if math.isinf(y) and math.isfinite(x):
            ax.plot([x], [1.0 if y > 0 else 0.0], marker="^" if y > 0 else "v", color=colour_,
                    markersize=9, transform=edge, clip_on=False, linestyle="none")
            drawn.add(y)
    return drawn


def _maybe_symlog(ax: Axes, values: Sequence[float]) -> bool:
    """Symlog y when |values| span more than 3 decades (003's Table 1: 0.002 next to -49.9)."""
    mags = np.abs([v for v in values if math.isfinite(v) and v != 0])
    if mags.size < 2 or mags.max() / mags.min() < 1e3:
        return False
    # a power of ten keeps the tick labels round; linscale=1 gives the linear band room enough
    # that the labels at -linthresh, 0 and +linthresh do not overlap
    linthresh = 10.0 ** math.floor(math.log10(float(np.quantile(mags, 0.1))))
    ax.set_yscale("symlog", linthresh=linthresh, linscale=1.0)
    ax.relim()
    ax.autoscale_view()  # margins were computed in linear space; recompute them in symlog space
    return True


def _cer_text(cer: CER | None) -> str:
    if cer is None:
        return "no CER"
    return "C*_P " + {"exact": "=", "upper": "≤", "lower": "≥"}[cer.bound] + f" {cer.value:.2f}"


def _advantage_legend(ratios: list[float], cer_of: dict[float, CER | None],
                      pinned: set[float]) -> list[Line2D]:
    """One entry per ratio (its CER, a bound shown open and dashed), then the marker conventions."""
    handles = []
    for i, ratio in enumerate(ratios):
        cer = cer_of.get(ratio)
        bound = cer is not None and not cer.is_exact
        handles.append(Line2D([], [], color=colour(i, len(ratios)), marker=MARKERS[i % len(MARKERS)],
                              markerfacecolor="none" if bound else None,
                              linestyle="--" if bound else "-",
                              label=f"p = {ratio:g}  ({_cer_text(cer)})"))
    handles.append(Line2D([], [], linestyle="none", label="A > 0: quantizing first is better"))
    handles.append(Line2D([], [], color="0.4", marker="|", markersize=10, linestyle="none",
                          label="bar: 95% interval of A; x: not decisive"))
    if any(c is not None and not c.is_exact for c in cer_of.values()):
        handles.append(Line2D([], [], color="0.4", marker="o", markerfacecolor="none",
                              linestyle="none", label="open, arrow: x is a bound"))
    for inf in sorted(pinned):
        handles.append(Line2D([], [], color="0.4", marker="^" if inf > 0 else "v",
                              linestyle="none",
                              label=f"on the edge: A = {'+' if inf > 0 else '−'}inf (collapse)"))
    return handles


@_styled
def plot_order_advantage(exp: Experiment, cells: list[Cell], folder: Path) -> list[Path]:
    """Figure 3 of 003: A(Q -> P) against x = C*_P - C_Q, one colour and one fit per ratio."""
    fits = fit_by_ratio(cells)
    ratios = sorted({c.ratio for c in cells})
    cer_of = {c.ratio: c.cer for c in cells}  # every cell of one ratio shares P(ratio)'s CER
    fig = _new_figure(9.0, 5.0)
    ax = fig.add_subplot()
    all_x = [c.cer_difference for c in cells if c.cer_difference is not None]
    span = (max(all_x) - min(all_x)) if all_x else 0.0
    arrow = 0.06 * (span or 1.0)  # bound arrows: 6% of the x range
    pinned: set[float] = set()
    for i, ratio in enumerate(ratios):
        col, mark, cer = colour(i, len(ratios)), MARKERS[i % len(MARKERS)], cer_of[ratio]
        if cer is None:
            continue  # no x to place the points at; the caption counts them
        use = [c for c in cells if c.ratio == ratio]
        xs = [cer.value - c.c_q for c in use if math.isfinite(c.advantage)]
        ys = [c.advantage for c in use if math.isfinite(c.advantage)]
        ax.plot(xs, ys, linestyle="none", marker=mark, markersize=7, color=col,
                markerfacecolor=col if cer.is_exact else "none", markeredgewidth=1.5)
        _interval_bars(ax, [(cer.value - c.c_q, c) for c in use if math.isfinite(c.advantage)], col)
        if not cer.is_exact:
            # every point of this ratio may lie further left (upper bound) or right (lower bound)
            step = -arrow if cer.bound == "upper" else arrow
            for x, y in zip(xs, ys):
                ax.annotate("", xy=(x + step, y), xytext=(x, y),
                            arrowprops={"arrowstyle": "->", "color": col, "lw": 1.2})
        pinned |= _pin_nonfinite(ax, [cer.value - c.c_q for c in use], [c.advantage for c in use],
                                 col)
        if ratio in fits:
            grid = np.linspace(min(xs), max(xs), 200)
            ax.plot(grid, fits[ratio].predict(grid), color=col, linewidth=1.6,
                    linestyle="-" if cer.is_exact else "--")
    ax.axhline(0.0, color="0.35", linewidth=0.9)
    ax.axvline(0.0, color="0.35", linewidth=0.9, linestyle=":")
    symlog = _maybe_symlog(ax, [c.advantage for c in cells])
    ax.set_xlabel(r"CER difference $C^*_P - C_Q$" + f"   (reference quantizer {exp.key.quant}, "
                  f"{exp.key.model})")
    ax.set_ylabel(r"$\mathcal{A}(Q\rightarrow P)$ = M(Q first) $-$ M(P first)" +
                  f"\n{_m(exp)}, {exp.key.protocol}" + (", symlog" if symlog else ""))
    ax.legend(handles=_advantage_legend(ratios, cer_of, pinned),
              title="pruning ratio (fit: a·exp(b·x)+c)", loc="upper left",
              bbox_to_anchor=(1.01, 1.0), frameon=False)
    _title(fig, f"Order advantage: {exp.key.prune_name} (P) × {exp.key.quant_name} (Q)", exp)
    return save(fig, folder, f"fig3_{exp.key.slug}")


def _interval_bars(ax: Axes, points: Sequence[tuple[float, Cell | tuple]], col: str) -> None:
    """Vertical 95% interval bars of A at x, and an x over every point whose verdict is not decisive
    (equivalent or undetermined). Points without per-unit results get neither."""
    for x, item in points:
        comparison = item.comparison if isinstance(item, Cell) else item[1]
        if comparison is None or not all(math.isfinite(v) for v in comparison.interval):
            continue
        lo, hi = comparison.interval
        ax.plot([x, x], [lo, hi], color=col, linewidth=1.0, alpha=0.8, solid_capstyle="butt")
        if not comparison.decisive:
            y = item.advantage if isinstance(item, Cell) else item[0]
            ax.plot([x], [y], marker="x", color="0.2", markersize=5, linestyle="none", zorder=5)


@_styled
def plot_multistage(exp: Experiment, total: float, folder: Path) -> list[Path]:
    """Figure 7 of 003: P(p1) > Q > P(p2), p1 + p2 fixed; perplexity and A (vs p2 = 0) over p2, with A's
    95% interval where the rows have per-unit results."""
    compared = multistage_comparisons(exp, total)
    series = {bits: [(p2, v, a) for p2, v, a, _ in points] for bits, points in compared.items()}
    fig = _new_figure(10.0, 4.2)
    ax_ppl, ax_adv = fig.subplots(1, 2)
    for i, (bits, points) in enumerate(series.items()):
        col, mark = colour(i, len(series)), MARKERS[i % len(MARKERS)]
        p2 = [p for p, _, _ in points]
        ppls, advantages = [v for _, v, _ in points], [a for _, _, a in points]
        _interval_bars(ax_adv, [(p, (a, c)) for p, _, a, c in compared[bits] if math.isfinite(a)], col)
        for ax, values in ((ax_ppl, ppls), (ax_adv, advantages)):
            ys = np.array([v if math.isfinite(v) else np.nan for v in values])
            # later series smaller, dashed and on top: coinciding lines stay visible
            ax.plot(p2, ys, marker=mark, color=col, label=f"B = {bits}", linewidth=1.6,
                    markersize=max(8.0 - 1.5 * i, 4.0), linestyle=LINESTYLES[i % len(LINESTYLES)],
                    zorder=2 + i)
            _pin_nonfinite(ax, p2, values, col)
    finite_ppl = [v for pts in series.values() for _, v, _ in pts if math.isfinite(v) and v > 0]
    if exp.metric_name == PERPLEXITY and finite_ppl and max(finite_ppl) / min(finite_ppl) > 20:
        ax_ppl.set_yscale("log")
        ax_ppl.relim()
        ax_ppl.autoscale_view()
    ax_adv.axhline(0.0, color="0.35", linewidth=0.9)
    for ax in (ax_ppl, ax_adv):
        ax.set_xlabel(r"$p_2$: pruning after the quantizer" + f"  ($p_1 + p_2$ = {total:g})")
    label = value_label(exp.metric_name)
    ax_ppl.set_ylabel(f"{label} ({exp.key.protocol})")
    ax_adv.set_ylabel(r"M($p_2$) $-$ M($p_2$ = 0), " + _m(exp))
    ax_ppl.set_title(label)
    ax_adv.set_title(r"advantage over all pruning first ($p_2$ = 0); bars: 95% interval")
    ax_adv.legend(title="bits", loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    _title(fig, f"Multi-stage: {exp.key.prune_name}($p_1$) > {exp.key.quant_name} > "
                f"{exp.key.prune_name}($p_2$)", exp)
    return save(fig, folder, f"fig7_{exp.key.slug}_{total:g}")


def _m(exp: Experiment) -> str:
    """M for an axis label, in mathtext: "M = $-$perplexity" or "M = top-1 accuracy (%)"."""
    return metric_text(exp.metric_name).replace("−", "$-$")


def _spread(values: Sequence, k: int) -> list:
    """k values evenly spread over a sorted sequence, ends included."""
    if len(values) <= k:
        return list(values)
    return list(dict.fromkeys(values[round(i * (len(values) - 1) / (k - 1))] for i in range(k)))


def layer_error_cells(exp: Experiment) -> list[tuple[float, int]]:
    """(ratio, bits) cells with per-block errors for both orders; a spread of at most 6."""
    have = sorted({(r, b) for r, b, _ in exp.orders if all(
        (m := exp.orders.get((r, b, f))) is not None and m.per_block_error
        for f in ("prune", "quant"))})
    if len(have) <= MAX_LAYER_PANELS:
        return have
    ratios = _spread(sorted({r for r, _ in have}), 2)
    bits = _spread(sorted({b for _, b in have}, reverse=True), 3)
    return [(r, b) for r in ratios for b in bits if (r, b) in have]


@_styled
def plot_layer_error(exp: Experiment, folder: Path) -> list[Path]:
    """Harma et al.: per-block output error through depth, S->Q (prune first) vs Q->S, per cell."""
    chosen = layer_error_cells(exp)
    if not chosen:
        return []
    ncols = min(3, len(chosen))
    nrows = math.ceil(len(chosen) / ncols)
    fig = _new_figure(3.6 * ncols + 0.4, 2.9 * nrows + 1.0)
    # one shared y scale: panels are read against each other (which cell accumulates more)
    axes = fig.subplots(nrows, ncols, squeeze=False, sharex=True, sharey=True).ravel()
    styles = {"prune": ("S→Q (prune first)", OKABE_ITO[0], "o", "-"),
              "quant": ("Q→S (quantize first)", OKABE_ITO[3], "s", "--")}
    for ax, (r, b) in zip(axes, chosen):
        for first, (label, col, mark, line) in styles.items():
            errors = exp.orders[(r, b, first)].per_block_error or ()
            ax.plot(range(len(errors)), errors, color=col, marker=mark, markersize=4,
                    linestyle=line, label=label)
        for alone, key, col in ((f"{exp.key.prune_name} alone", exp.prune.get(r), "0.45"),
                                (f"{exp.key.quant_name} alone", exp.quant.get(b), "0.65")):
            if key is not None and key.per_block_error:
                ax.plot(range(len(key.per_block_error)), key.per_block_error, color=col,
                        linewidth=1.4, linestyle=":", label=alone)
        ax.set_title(f"p = {r:g}, B = {b}  (C_P {1 / (1 - r):.2f}, C_Q {16 / b:.2f})", fontsize=9)
    values = [v for ax in axes for line in ax.get_lines() for v in line.get_ydata() if v > 0]
    if values and max(values) / min(values) > 30:
        axes[0].set_yscale("log")  # shared: applies to every panel
    for ax in axes[len(chosen):]:
        ax.set_visible(False)
    for ax in axes[(nrows - 1) * ncols:]:
        ax.set_xlabel("decoder block (depth)")
    for ax in axes[::ncols]:
        ax.set_ylabel("relative output error\nvs dense")
    legend: dict[str, Line2D] = {}  # every series once, whichever panel drew it first
    for ax in axes[:len(chosen)]:
        for line in ax.get_lines():
            legend.setdefault(str(line.get_label()), line)
    fig.legend(list(legend.values()), list(legend), loc="outside lower center",
               ncols=len(legend), frameon=False)
    _title(fig, f"Layer-wise error accumulation: {exp.key.prune_name} × {exp.key.quant_name}", exp)
    return save(fig, folder, f"layers_{exp.key.slug}")
