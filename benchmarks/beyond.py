"""Beyond pruning x quantization on the embedded model: LoRA (003 Fig. 8), fine-tuning, sharing (Fig. 9).

    python benchmarks/beyond.py lora     [bench options] --out docs/results/beyond
    python benchmarks/beyond.py finetune [bench options] --out docs/results/beyond
    python benchmarks/beyond.py share    [bench options] --out docs/results/beyond

Each experiment writes NAME.json (every row: recipe, perplexity, compression summary, stage details)
and NAME.md (tables, order advantages, CERs against the RTN reference curve), both naming the
protocol and the commit that produced them. Recipes that share a prefix share its computation.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from crescendo.analysis.cer import CERSettings, compare_intensity, pih_first, reference_curve
from crescendo.api import summarize
from crescendo.errors import CrescendoError
from crescendo.recipe import parse_recipe
from crescendo.store import tree_version
from crescendo.workflow import add_bench_options, bench_from_options

BITS = (8, 7, 6, 5, 4, 3)  # the reference quantizer's curve (RTN, per channel)
NAME_SUFFIX = ""  # --name: one experiment split over several runs writes one file per run


# The code that runs, taken when the run starts (whatever the checkout holds later): $CRESCENDO_COMMIT
# when running an exported copy of a commit, else the checkout's commit, marked dirty when src/ or
# benchmarks/ differ from it.
COMMIT = os.environ.get("CRESCENDO_COMMIT") or tree_version(Path(__file__).resolve().parent.parent, ("src", "benchmarks"))


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


def reference(bench, rows: dict[str, dict]) -> tuple[object, dict]:
    """The RTN reference curve (C_Q = 16 / b, M = -perplexity) and its rows."""
    refs = run_tree(bench, [f"rtn:w{b}" for b in BITS if f"rtn:w{b}" not in rows])
    refs.update({r: rows[r] for r in rows if r in {f"rtn:w{b}" for b in BITS}})
    points = [(16.0 / b, -refs[f"rtn:w{b}"]["perplexity"]) for b in BITS]
    return reference_curve(points, CERSettings(anchor="dense"), dense=-bench.dense().perplexity), refs


def cer_text(curve, ppl: float) -> str:
    c = curve.cer(-ppl)
    return "n/a" if c is None else str(c)


def write(out: Path, name: str, bench, payload: dict, markdown: list[str]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    name = f"{name}-{NAME_SUFFIX}" if NAME_SUFFIX else name
    head = {"experiment": name, "commit": COMMIT, "model": bench.model_name, "protocol": bench.protocol_id,
            "dtype": bench.dtype, "dense_perplexity": bench.dense().perplexity}
    (out / f"{name}.json").write_text(json.dumps({**head, **payload}, indent=2))
    lines = [f"# {name}", "", f"Model {head['model']}, protocol `{head['protocol']}` (compute {head['dtype']}), "
             f"commit `{head['commit']}`. Dense perplexity {head['dense_perplexity']:.3f}.", ""] + markdown
    (out / f"{name}.md").write_text("\n".join(lines) + "\n")


def table(rows: dict[str, dict], recipes: list[str], curve=None) -> list[str]:
    head = "| recipe | perplexity | sparsity | bits | C |" + (" CER |" if curve else "")
    out = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in recipes:
        x = rows[r]
        out.append(f"| `{x['recipe']}` | {x['perplexity']:.3f} | {x['sparsity']:.3f} | {x['avg_weight_bits']:.2f} | "
                   f"{x['compression_ratio']:.2f} |" + (f" {cer_text(curve, x['perplexity'])} |" if curve else ""))
    return out


def lora_stage(args) -> str:
    return f"lora:steps={args.steps}" + (f",lr={args.lora_lr:g}" if args.lora_lr else "")


def lora_recipes(args) -> list[str]:
    L = lora_stage(args)
    cells = [(p, b) for p in args.ratios for b in args.bits]
    singles = sorted({f"sparsegpt:{p:g}" for p, _ in cells} | {f"rtn:w{b}" for _, b in cells})
    recipes = list(singles) + [f"{s} > {L}" for s in singles]
    for p, b in cells:
        P, Q = f"sparsegpt:{p:g}", f"rtn:w{b}"
        recipes += [f"{P} > {Q}", f"{Q} > {P}", f"{P} > {Q} > {L}", f"{Q} > {P} > {L}", f"{P} > {L} > {Q}",
                    f"{Q} > {L} > {P}"]
    return recipes


def exp_lora(bench, args) -> None:
    L = lora_stage(args)
    cells = [(p, b) for p in args.ratios for b in args.bits]
    recipes = lora_recipes(args)
    rows = run_tree(bench, recipes)
    curve, refs = reference(bench, rows)
    md = ["Order advantage A(P -> Q) = M(P then Q) - M(Q then P), M = -perplexity: positive means prune first "
          "is better. CER of SparseGPT alone against RTN per channel (anchored at dense); the Progressive "
          "Intensity Hypothesis puts the weaker method (smaller CER, vs C_Q = 16/b) first.", "",
          "| p | bits | CER(P) | C_Q | PIH says | A no LoRA | A, LoRA after | A, LoRA between |", "|---|---|---|---|---|---|---|---|"]
    advantages = []
    for p, b in cells:
        P, Q = f"sparsegpt:{p:g}", f"rtn:w{b}"
        ppl = {r: rows[r]["perplexity"] for r in rows}
        a = {"none": ppl[f"{Q} > {P}"] - ppl[f"{P} > {Q}"],
             "after": ppl[f"{Q} > {P} > {L}"] - ppl[f"{P} > {Q} > {L}"],
             "between": ppl[f"{Q} > {L} > {P}"] - ppl[f"{P} > {L} > {Q}"]}
        cer_p = curve.cer(-ppl[P])
        says = {"prune": "prune first", "quant": "quantize first", None: "undecided"}[pih_first(cer_p, 16 / b)]
        advantages.append({"ratio": p, "bits": b, "cer_prune": str(cer_p), "c_q": 16 / b, "pih": says, **a})
        md.append(f"| {p:g} | {b} | {cer_p} | {16 / b:.2f} | {says} | {a['none']:+.3f} | {a['after']:+.3f} | "
                  f"{a['between']:+.3f} |")
    md += ["", "## Every run", ""] + table(rows, recipes, curve) + ["", "## Reference curve (RTN per channel)", ""]
    md += table(refs, [f"rtn:w{b}" for b in BITS])
    write(Path(args.out), "lora", bench, {"lora_stage": L, "rows": rows, "reference": refs,
                                          "advantages": advantages}, md)


def finetune_stage(args) -> str:
    return f"finetune:steps={args.steps}" + (f",lr={args.lr:g}" if args.lr else "")


def finetune_recipes(args) -> list[str]:
    F, P, Q = finetune_stage(args), "sparsegpt:0.5", "rtn:w4"
    return [P, Q, f"{P} > {Q}", f"{Q} > {P}", f"{P} > {Q} > {F}", f"{Q} > {P} > {F}"]


def exp_finetune(bench, args) -> None:
    F, P, Q = finetune_stage(args), "sparsegpt:0.5", "rtn:w4"
    recipes = finetune_recipes(args)
    rows = run_tree(bench, recipes)
    ppl = {r: rows[r]["perplexity"] for r in rows}
    before, after = ppl[f"{Q} > {P}"] - ppl[f"{P} > {Q}"], ppl[f"{Q} > {P} > {F}"] - ppl[f"{P} > {Q} > {F}"]
    md = [f"Fine-tuning stage `{F}` after both orders of SparseGPT 50% and RTN 4-bit (per channel).", "",
          f"A(P -> Q) = ppl(Q then P) - ppl(P then Q): before fine-tuning {before:+.3f}, after {after:+.3f} "
          f"({'prune first' if after > 0 else 'quantize first'} wins after fine-tuning).", ""] + table(rows, recipes)
    write(Path(args.out), "finetune", bench, {"finetune_stage": F, "rows": rows,
                                              "advantage_before": before, "advantage_after": after}, md)


def share_recipes(args) -> list[str]:
    S = {s: f"share:group={args.group},ratio={s:g}" for s in args.share}
    recipes = sorted({f"magnitude:{p:g}" for p in args.ratios} | set(S.values()))
    for p in args.ratios:
        for s in args.share:
            recipes += [f"{S[s]} > magnitude:{p:g}", f"magnitude:{p:g} > {S[s]},absorb"]
    return recipes


def exp_share(bench, args) -> None:
    cells = [(p, s) for p in args.ratios for s in args.share]
    S = {s: f"share:group={args.group},ratio={s:g}" for s in args.share}
    recipes = share_recipes(args)
    rows = run_tree(bench, recipes)
    curve, refs = reference(bench, rows)
    md = ["Magnitude pruning (P) and Basis Sharing (S) in both orders. S then P prunes the shared factors; P then S "
          "factorizes the pruned weights (`absorb`: the dense factors drop the masks, so P's storage saving is "
          "gone and C is S's alone). A(P -> S) = ppl(S then P) - ppl(P then S): positive means prune first is "
          "better. CERs against RTN per channel, anchored at dense.", "",
          "| p | share ratio | CER(P) | CER(S) | PIH says | ppl S>P | C S>P | ppl P>S | C P>S | A(P -> S) |",
          "|---|---|---|---|---|---|---|---|---|---|"]
    advantages = []
    for p, s in cells:
        M = f"magnitude:{p:g}"
        sp, ps = rows[f"{S[s]} > {M}"], rows[f"{M} > {S[s]},absorb"]
        cp, cs = curve.cer(-rows[M]["perplexity"]), curve.cer(-rows[S[s]]["perplexity"])
        says = "n/a"
        if cp is not None and cs is not None:
            cmp = compare_intensity(cp, cs)
            says = {None: "undecided", -1: "prune first", 1: "share first", 0: "undecided"}.get(cmp, "undecided")
        a = sp["perplexity"] - ps["perplexity"]
        advantages.append({"ratio": p, "share": s, "cer_prune": str(cp), "cer_share": str(cs), "pih": says,
                           "advantage_prune_first": a})
        md.append(f"| {p:g} | {s:g} | {cp} | {cs} | {says} | {sp['perplexity']:.3f} | {sp['compression_ratio']:.2f} | "
                  f"{ps['perplexity']:.3f} | {ps['compression_ratio']:.2f} | {a:+.3f} |")
    md += ["", "## Every run", ""] + table(rows, recipes, curve) + ["", "## Reference curve (RTN per channel)", ""]
    md += table(refs, [f"rtn:w{b}" for b in BITS])
    write(Path(args.out), "share", bench, {"rows": rows, "reference": refs, "advantages": advantages}, md)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("experiment", choices=["lora", "finetune", "share"])
    add_bench_options(parser)
    parser.add_argument("--out", default="docs/results/beyond")
    parser.add_argument("--steps", type=int, default=100, help="training steps of the lora / finetune stage")
    parser.add_argument("--lr", type=float, default=None, help="finetune learning rate (default: the stage's)")
    parser.add_argument("--ratios", type=float, nargs="+", default=None, help="pruning ratios")
    parser.add_argument("--bits", type=int, nargs="+", default=[4, 6])
    parser.add_argument("--share", type=float, nargs="+", default=[0.2, 0.4], help="share ratios (params removed)")
    parser.add_argument("--group", type=int, default=2)
    parser.add_argument("--lora-lr", type=float, default=None, help="lora learning rate (default: the stage's)")
    parser.add_argument("--name", default="", help="suffix of the output files (NAME-SUFFIX.json)")
    args = parser.parse_args()
    global NAME_SUFFIX
    NAME_SUFFIX = args.name
    if args.ratios is None:
        args.ratios = [0.3, 0.5] if args.experiment == "lora" else [0.2, 0.4]
    recipes = {"lora": lora_recipes, "finetune": finetune_recipes, "share": share_recipes}[args.experiment](args)
    try:  # checked before the model loads: a bad ratio, bit-width or step count costs nothing
        for recipe in recipes:
            parse_recipe(recipe)
    except CrescendoError as exc:
        print(f"beyond.py: {exc}", file=sys.stderr)
        return 2
    bench = bench_from_options(args)
    print(f"# {args.experiment}: {bench.model_name} {bench.protocol_id}, dense {bench.dense().perplexity:.3f}",
          file=sys.stderr, flush=True)
    {"lora": exp_lora, "finetune": exp_finetune, "share": exp_share}[args.experiment](bench, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
