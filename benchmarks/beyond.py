"""Beyond pruning x quantization on the embedded model: LoRA (003 Fig. 8), fine-tuning, sharing (Fig. 9).

    python benchmarks/beyond.py lora     [bench options] [CER options] --out docs/results/beyond
    python benchmarks/beyond.py finetune [bench options] --out docs/results/beyond
    python benchmarks/beyond.py share    [bench options] [CER options] --out docs/results/beyond
    python benchmarks/beyond.py share    [the run's options] --render docs/results/beyond/share.json

Each experiment writes NAME.json (every row: recipe, perplexity, compression summary, stage details)
and NAME.md (tables, order advantages, CERs against the RTN reference curve), both naming the
protocol and the commit that measured them. Recipes that share a prefix share its computation.
`--render` reads a finished run's rows instead of measuring (no model is loaded) and writes the
tables again with the current analysis code and CER options; the files then name both commits.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from crescendo.analysis.cer import compare_intensity, pih_first, reference_curve
from crescendo.api import summarize
from crescendo.errors import CrescendoError
from crescendo.options import (
    add_bench_options,
    add_cer_options,
    cer_settings,
    refused_in_one_line,
)
from crescendo.recipe import parse_recipe
from crescendo.store import tree_version
from crescendo.workflow import bench_from_options

BITS = (8, 7, 6, 5, 4, 3)  # the reference quantizer's curve (RTN, per channel)
REFERENCE = [f"rtn:w{b}" for b in BITS]


# The code that runs, taken when the run starts (whatever the checkout holds later): $CRESCENDO_COMMIT
# when running an exported copy of a commit, else the checkout's commit, marked dirty when src/ or
# benchmarks/ differ from it.
COMMIT = os.environ.get("CRESCENDO_COMMIT") or tree_version(Path(__file__).resolve().parent.parent, ("src", "benchmarks"))


class Measured:
    """What a run measured: the dense perplexity and a row per recipe (the reference curve's included)."""

    def __init__(self, head: dict, rows: dict[str, dict]) -> None:
        self.head, self.rows = head, rows

    @property
    def dense(self) -> float:
        return self.head["dense_perplexity"]

    def ppl(self, recipe: str) -> float:
        return self.rows[recipe]["perplexity"]


def run_tree(bench, recipes: list[str]) -> dict[str, dict]:
    """Perplexity and summary of every recipe; a prefix shared by several recipes is computed once."""
    rows = {}
    order = sorted(recipes, key=lambda r: [s.text for s in parse_recipe(r).stages])  # siblings adjacent
    for recipe, run in zip(order, bench.compress_tree(order)):
        for stage in run.stages[-1:]:
            print(f"  {stage['stage']}: {stage['seconds']:.0f} s", file=sys.stderr, flush=True)
        ppl = bench.evaluate(run.model).perplexity
        summary = summarize(run.model).to_dict()
        rows[recipe] = {"recipe": str(run.recipe), "perplexity": ppl, "stages": run.stages, **summary}
        print(f"{str(run.recipe):<60} ppl {ppl:10.3f}  C {summary['compression_ratio']:.2f}", file=sys.stderr,
              flush=True)
    return rows


def measure(args, recipes: list[str], reference: bool) -> Measured:
    """Load the model and measure every recipe (and the RTN reference curve when `reference`)."""
    bench = bench_from_options(args)
    print(f"# {args.experiment}: {bench.model_name} {bench.protocol_id}, dense {bench.dense().perplexity:.3f}",
          file=sys.stderr, flush=True)
    wanted = list(dict.fromkeys(recipes + (REFERENCE if reference else [])))
    head = {"commit": COMMIT, "model": bench.model_name, "protocol": bench.protocol_id, "dtype": bench.dtype,
            "dense_perplexity": bench.dense().perplexity}
    return Measured(head, run_tree(bench, wanted))


def load_measured(path: Path, recipes: list[str], reference: bool) -> Measured:
    """A finished run's rows from its JSON; every recipe the options ask for must be there."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise CrescendoError(f"--render {path}: cannot read it ({exc})") from None
    rows = {**data.get("reference", {}), **data.get("rows", {})}
    missing = [r for r in recipes + (REFERENCE if reference else []) if r not in rows]
    if missing:
        raise CrescendoError(f"--render {path}: no row for {missing[0]!r} ({len(missing)} missing); "
                             "render with the options of the run that wrote it")
    head = {k: data[k] for k in ("commit", "model", "protocol", "dtype", "dense_perplexity")}
    return Measured(head, rows)


def curve_of(m: Measured, args):
    """The RTN reference curve (C_Q = 16 / b, M = -perplexity) read as the CER options say."""
    points = [(16.0 / b, -m.ppl(f"rtn:w{b}")) for b in BITS]
    return reference_curve(points, cer_settings(args), dense=-m.dense)


def cer_lines(curve, args) -> list[str]:
    s = cer_settings(args)
    lines = [f"CERs against RTN per channel (w8 ... w3, C_Q = 16/b); {s.label}."]
    return lines + ([f"**{curve.problem}.**"] if curve.problem else [])


def write(out: Path, name: str, m: Measured, payload: dict, markdown: list[str]) -> None:
    """NAME.json and NAME.md, each written whole (a temporary file renamed over the old one)."""
    out.mkdir(parents=True, exist_ok=True)
    head = {"experiment": name, **m.head, "rendered_by": COMMIT}
    rendered = "" if COMMIT == m.head["commit"] else f", tables rendered by `{COMMIT}`"
    lines = [f"# {name}", "", f"Model {head['model']}, protocol `{head['protocol']}` (compute {head['dtype']}), "
             f"measured by commit `{head['commit']}`{rendered}. Dense perplexity {head['dense_perplexity']:.3f}.",
             ""] + markdown
    for path, text in ((out / f"{name}.json", json.dumps({**head, **payload}, indent=2)),
                       (out / f"{name}.md", "\n".join(lines) + "\n")):
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(text)
        os.replace(tmp, path)


def table(rows: dict[str, dict], recipes: list[str], curve=None) -> list[str]:
    head = "| recipe | perplexity | sparsity | bits | C |" + (" CER |" if curve else "")
    out = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in recipes:
        x = rows[r]
        cer = curve.cer(-x["perplexity"]) if curve else None
        out.append(f"| `{x['recipe']}` | {x['perplexity']:.3f} | {x['sparsity']:.3f} | {x['avg_weight_bits']:.2f} | "
                   f"{x['compression_ratio']:.2f} |" + (f" {'n/a' if cer is None else cer} |" if curve else ""))
    return out


# -- LoRA (003 Figure 8) ----------------------------------------------------------------------------------
def lora_stage(args) -> str:
    return f"lora:steps={args.steps}" + (f",lr={args.lora_lr:g}" if args.lora_lr else "")


def lora_cells(args) -> list[tuple[float, int]]:
    return [(p, b) for p in args.ratios for b in args.bits]


def lora_recipes(args) -> list[str]:
    L = lora_stage(args)
    singles = sorted({f"sparsegpt:{p:g}" for p, _ in lora_cells(args)} | {f"rtn:w{b}" for _, b in lora_cells(args)})
    recipes = list(singles) + [f"{s} > {L}" for s in singles]
    for p, b in lora_cells(args):
        P, Q = f"sparsegpt:{p:g}", f"rtn:w{b}"
        recipes += [f"{P} > {Q}", f"{Q} > {P}", f"{P} > {Q} > {L}", f"{Q} > {P} > {L}", f"{P} > {L} > {Q}",
                    f"{Q} > {L} > {P}"]
    return recipes


def report_lora(m: Measured, args) -> tuple[dict, list[str]]:
    L, recipes, curve = lora_stage(args), lora_recipes(args), curve_of(m, args)
    md = ["Order advantage A(P -> Q) = M(P then Q) - M(Q then P), M = -perplexity: positive means prune first "
          "is better. CER of SparseGPT alone; the Progressive Intensity Hypothesis puts the weaker method "
          "(smaller CER, vs C_Q = 16/b) first.", ""] + cer_lines(curve, args) + ["",
          "| p | bits | CER(P) | C_Q | PIH says | A no LoRA | A, LoRA after | A, LoRA between |",
          "|---|---|---|---|---|---|---|---|"]
    advantages = []
    for p, b in lora_cells(args):
        P, Q = f"sparsegpt:{p:g}", f"rtn:w{b}"
        a = {"none": m.ppl(f"{Q} > {P}") - m.ppl(f"{P} > {Q}"),
             "after": m.ppl(f"{Q} > {P} > {L}") - m.ppl(f"{P} > {Q} > {L}"),
             "between": m.ppl(f"{Q} > {L} > {P}") - m.ppl(f"{P} > {L} > {Q}")}
        cer_p = curve.cer(-m.ppl(P))
        says = {"prune": "prune first", "quant": "quantize first", None: "undecided"}[pih_first(cer_p, 16 / b)]
        advantages.append({"ratio": p, "bits": b, "cer_prune": str(cer_p), "c_q": 16 / b, "pih": says, **a})
        md.append(f"| {p:g} | {b} | {cer_p} | {16 / b:.2f} | {says} | {a['none']:+.3f} | {a['after']:+.3f} | "
                  f"{a['between']:+.3f} |")
    md += ["", "## Every run", ""] + table(m.rows, recipes, curve) + ["", "## Reference curve (RTN per channel)", ""]
    md += table(m.rows, REFERENCE)
    return {"lora_stage": L, "rows": {r: m.rows[r] for r in recipes},
            "reference": {r: m.rows[r] for r in REFERENCE}, "advantages": advantages}, md


# -- sparsity-aware fine-tuning ----------------------------------------------------------------------------
def finetune_stage(args) -> str:
    return f"finetune:steps={args.steps}" + (f",lr={args.lr:g}" if args.lr else "")


def finetune_recipes(args) -> list[str]:
    F, P, Q = finetune_stage(args), "sparsegpt:0.5", "rtn:w4"
    return [P, Q, f"{P} > {Q}", f"{Q} > {P}", f"{P} > {Q} > {F}", f"{Q} > {P} > {F}"]


def report_finetune(m: Measured, args) -> tuple[dict, list[str]]:
    F, P, Q, recipes = finetune_stage(args), "sparsegpt:0.5", "rtn:w4", finetune_recipes(args)
    before, after = m.ppl(f"{Q} > {P}") - m.ppl(f"{P} > {Q}"), m.ppl(f"{Q} > {P} > {F}") - m.ppl(f"{P} > {Q} > {F}")
    md = [f"Fine-tuning stage `{F}` after both orders of SparseGPT 50% and RTN 4-bit (per channel).", "",
          f"A(P -> Q) = ppl(Q then P) - ppl(P then Q): before fine-tuning {before:+.3f}, after {after:+.3f} "
          f"({'prune first' if after > 0 else 'quantize first'} wins after fine-tuning).", ""]
    md += table(m.rows, recipes)
    changed = [(r, s["details"].get("changed_fraction")) for r in recipes for s in m.rows[r]["stages"][-1:]
               if s["stage"].startswith("finetune")]
    if any(c is not None for _, c in changed):
        md += ["", "Share of unpruned weights each fine-tuning stage changed: "
               + "; ".join(f"`{r}` {c:.4f}" for r, c in changed if c is not None) + "."]
    return {"finetune_stage": F, "rows": {r: m.rows[r] for r in recipes},
            "advantage_before": before, "advantage_after": after}, md


# -- Basis Sharing x magnitude pruning (003 Figure 9) -------------------------------------------------------
def share_stages(args) -> dict[float, str]:
    return {s: f"share:group={args.group},ratio={s:g}" for s in args.share}


def share_recipes(args) -> list[str]:
    S = share_stages(args)
    recipes = sorted({f"magnitude:{p:g}" for p in args.ratios} | set(S.values()))
    for p in args.ratios:
        for s in args.share:
            recipes += [f"{S[s]} > magnitude:{p:g}", f"magnitude:{p:g} > {S[s]},absorb"]
    return recipes


def report_share(m: Measured, args) -> tuple[dict, list[str]]:
    S, recipes, curve = share_stages(args), share_recipes(args), curve_of(m, args)
    md = ["Magnitude pruning (P) and Basis Sharing (S) in both orders. S then P prunes the shared factors; P then S "
          "factorizes the pruned weights (`absorb`: the dense factors drop the masks, so P's storage saving is "
          "gone and C is S's alone). A(P -> S) = ppl(S then P) - ppl(P then S): positive means prune first is "
          "better.", ""] + cer_lines(curve, args) + ["",
          "| p | share ratio | CER(P) | CER(S) | PIH says | ppl S>P | C S>P | ppl P>S | C P>S | A(P -> S) |",
          "|---|---|---|---|---|---|---|---|---|---|"]
    advantages = []
    for p in args.ratios:
        for s in args.share:
            M = f"magnitude:{p:g}"
            sp, ps = m.rows[f"{S[s]} > {M}"], m.rows[f"{M} > {S[s]},absorb"]
            cp, cs = curve.cer(-m.ppl(M)), curve.cer(-m.ppl(S[s]))
            says = "n/a"
            if cp is not None and cs is not None:
                says = {-1: "prune first", 1: "share first"}.get(compare_intensity(cp, cs), "undecided")
            a = sp["perplexity"] - ps["perplexity"]
            advantages.append({"ratio": p, "share": s, "cer_prune": str(cp), "cer_share": str(cs), "pih": says,
                               "advantage_prune_first": a})
            md.append(f"| {p:g} | {s:g} | {cp} | {cs} | {says} | {sp['perplexity']:.3f} | "
                      f"{sp['compression_ratio']:.2f} | {ps['perplexity']:.3f} | {ps['compression_ratio']:.2f} | "
                      f"{a:+.3f} |")
    md += ["", "## Every run", ""] + table(m.rows, recipes, curve) + ["", "## Reference curve (RTN per channel)", ""]
    md += table(m.rows, REFERENCE)
    return {"rows": {r: m.rows[r] for r in recipes}, "reference": {r: m.rows[r] for r in REFERENCE},
            "advantages": advantages}, md


EXPERIMENTS = {  # name: (recipes, report, needs the reference curve)
    "lora": (lora_recipes, report_lora, True),
    "finetune": (finetune_recipes, report_finetune, False),
    "share": (share_recipes, report_share, True),
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("experiment", choices=list(EXPERIMENTS))
    add_bench_options(parser)
    add_cer_options(parser)
    parser.add_argument("--out", default="docs/results/beyond")
    parser.add_argument("--steps", type=int, default=100, help="training steps of the lora / finetune stage")
    parser.add_argument("--lr", type=float, default=None, help="finetune learning rate (default: the stage's)")
    parser.add_argument("--ratios", type=float, nargs="+", default=None, help="pruning ratios")
    parser.add_argument("--bits", type=int, nargs="+", default=[4, 6])
    parser.add_argument("--share", type=float, nargs="+", default=[0.2, 0.4], help="share ratios (params removed)")
    parser.add_argument("--group", type=int, default=2)
    parser.add_argument("--lora-lr", type=float, default=None, help="lora learning rate (default: the stage's)")
    parser.add_argument("--name", default="", help="suffix of the output files (NAME-SUFFIX.json)")
    parser.add_argument("--render", type=Path, default=None, metavar="JSON",
                        help="write the tables again from this finished run's rows (measures nothing)")
    args = parser.parse_args()
    if args.ratios is None:
        args.ratios = [0.3, 0.5] if args.experiment == "lora" else [0.2, 0.4]
    recipes_of, report, reference = EXPERIMENTS[args.experiment]
    name = f"{args.experiment}-{args.name}" if args.name else args.experiment
    with refused_in_one_line(parser):  # checked before the model loads: a bad ratio, bit-width or step count costs nothing
        recipes = recipes_of(args)
        for recipe in recipes:
            parse_recipe(recipe)
        cer_settings(args)
        measured = load_measured(args.render, recipes, reference) if args.render else None
    measured = measured or measure(args, recipes, reference)
    payload, md = report(measured, args)
    write(Path(args.out), name, measured, payload, md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
