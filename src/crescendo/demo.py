"""The demo: both orders of a pruner and a quantizer on the embedded model, the dense figure, the order
advantage with its interval and verdict, and how long each part took.

Two plans. `QUICK`, the default on a CPU without fast bfloat16 (the two-core AVX2 machines most users
have): Wanda 50% with RTN 4-bit, per channel, a calibrated pair whose calibration is one pass of input
norms, under `sotu-v1-quick[n_eval_windows=16,n_calibration=8]` (the protocol's name says what was cut),
so that the whole first run, installation included, fits in about five minutes there. `FLAGSHIP`:
SparseGPT 50% with GPTQ 4-bit under the full `sotu-v1-quick`, the comparison the README and the quality
table cite; `crescendo demo --full` runs it anywhere, and it is the default on CUDA or a CPU with fast
bfloat16, where it costs what the quick plan costs on two AVX2 cores. Either way the demo's figures are
those of `crescendo order` on the same recipes and protocol (`DemoPlan.order_command`).
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TextIO

from .progress import Steps


@dataclass(frozen=True)
class DemoPlan:
    """What the demo compresses and under which protocol overrides (None: the protocol's own)."""

    name: str
    pruner: str
    quantizer: str
    eval_windows: int | None
    calibration: int | None
    why: str

    @property
    def recipes(self) -> tuple[str, str]:
        """(prune first, quantize first)."""
        return f"{self.pruner} > {self.quantizer}", f"{self.quantizer} > {self.pruner}"

    def order_command(self, model: str = "smollm2-135m") -> str:
        """The `crescendo order` command that measures the same two orders under the same protocol."""
        over = (f" --eval-windows {self.eval_windows}" if self.eval_windows else "") + (
            f" --nsamples {self.calibration}" if self.calibration else "")
        return f"crescendo order --model {model} --methods {self.pruner} {self.quantizer}{over}"


QUICK = DemoPlan("quick", "wanda:0.5", "rtn:w4", 16, 8,
                 "two CPU cores without fast bfloat16: a cheaper calibrated pair (Wanda needs one pass of input norms, "
                 "RTN no data), 8 calibration windows and 16 evaluation windows, so the first run fits in about five "
                 "minutes; `--full` runs the flagship SparseGPT x GPTQ comparison under the full protocol")
FLAGSHIP = DemoPlan("flagship", "sparsegpt:0.5", "gptq:w4", None, None,
                    "the flagship comparison under the full sotu-v1-quick protocol")


def choose_plan(full: bool, fast_hardware: bool) -> tuple[DemoPlan, str]:
    """The plan and why: the flagship when asked for or when the hardware runs it in the quick plan's time."""
    if full:
        return FLAGSHIP, "asked for with --full"
    if fast_hardware:
        return FLAGSHIP, ("this device computes bfloat16 fast (CUDA or AMX), so the flagship comparison takes about "
                          "what the quick plan takes on two AVX2 cores")
    return QUICK, QUICK.why


@dataclass
class DemoResult:
    plan: DemoPlan
    why: str
    bench: Any
    dense: Any  # Evaluation
    orders: list[dict[str, Any]]  # per order: recipe, metric, evaluation, summary, stage seconds
    comparison: Any  # uncertainty.Comparison of prune first against quantize first
    race: Any = None  # sequential.RaceResult when raced
    timings: dict[str, float] = field(default_factory=dict)  # step -> seconds
    total_seconds: float = 0.0


def _window_seconds(bench) -> float:
    """A prior for one evaluation window's seconds before any is measured: 2 FLOPs per parameter per token
    at 50 GFLOP/s (about what two AVX2 cores sustain in float32)."""
    params = sum(p.numel() for p in bench.model.parameters())
    return 2.0 * params * bench.protocol.seqlen / 50e9


def _stage_seconds(stage: str, window: float, n_calibration: int) -> float:
    """A stage's estimated seconds: data-free stages about a second, calibrated ones two passes of their
    calibration windows, plus Hessians for the OBS methods."""
    from .recipe import parse_stage

    parsed = parse_stage(stage)
    if not parsed.spec.calibrated:
        return 1.0
    return 2.0 * n_calibration * window * (1.4 if parsed.method in ("sparsegpt", "gptq") else 1.0)


def run_demo(load_bench: Callable[[], Any], plan: DemoPlan, why: str = "", race=None, *, progress: bool = True,
             stream: TextIO | None = None) -> DemoResult:
    """Load the bench (`load_bench()`), evaluate the dense model, apply the plan's four stages (each order
    built stage by stage) and evaluate both orders in full, or race them (`race`: RaceSettings). Progress
    lines go to `stream` (stderr) when `progress` and it is a terminal."""
    from .analysis.sequential import race_comparison, race_models
    from .analysis.uncertainty import compare
    from .api import summarize
    from .recipe import Recipe, parse_stage

    p, q = plan.pruner, plan.quantizer
    first, second = plan.recipes
    names = ["load the model and the protocol's data", "evaluate the dense model", f"{p} on the dense model",
             f"{q} after {p}", f"{q} on the dense model", f"{p} after {q}",
             "race both orders" if race is not None else "evaluate both orders"]
    steps = Steps(names, {names[0]: 20.0}, stream=stream, enabled=progress, prefix="crescendo demo ")
    steps.start(names[0])
    bench = load_bench()
    if race is not None:
        race.check(bench.n_units)
    window = _window_seconds(bench)
    n_cal, n_eval = len(bench.data.calibration), bench.n_units

    def refine(window: float) -> None:
        steps.estimate(names[1], n_eval * window)
        for name, stage in zip(names[2:6], (p, q, q, p)):
            steps.estimate(name, _stage_seconds(stage, window, n_cal))
        steps.estimate(names[6], 2 * n_eval * window * (0.5 if race is not None else 1.0))

    refine(window)
    steps.start(names[1])
    dense = bench.evaluation(bench.model)
    refine(dense.seconds / max(len(dense.units), 1))
    built: dict[str, dict[str, Any]] = {}
    for recipe, (a, b), (name_a, name_b) in ((first, (p, q), names[2:4]), (second, (q, p), names[4:6])):
        seconds = []
        steps.start(name_a)
        start = time.perf_counter()
        model = copy.deepcopy(bench.model)
        bench.compress_inplace(model, Recipe((parse_stage(a),)))
        seconds.append(time.perf_counter() - start)
        if a == p and parse_stage(p).spec.calibrated:
            steps.estimate(names[5], seconds[-1])  # the same method again, on the quantized model
        steps.start(name_b)
        start = time.perf_counter()
        bench.compress_inplace(model, Recipe((parse_stage(b),)))
        seconds.append(time.perf_counter() - start)
        built[recipe] = {"model": model, "stage_seconds": seconds}
    steps.start(names[6])
    if race is None:
        found = {r: bench.evaluation(entry["model"]) for r, entry in built.items()}
        comparison = compare(found[first].units, found[second].units, margin=bench.margin, labels=(first, second))
        raced = None
    else:
        raced, found = race_models(bench, {r: entry["model"] for r, entry in built.items()}, race)
        comparison = race_comparison(raced, first, second)
    steps.done()
    orders = [{"recipe": r, "metric": found[r].metric, "evaluation": found[r],
               "summary": summarize(entry["model"]).to_dict(), "stage_seconds": entry["stage_seconds"]}
              for r, entry in built.items()]
    return DemoResult(plan=plan, why=why, bench=bench, dense=dense, orders=orders, comparison=comparison,
                      race=raced, timings=dict(steps.taken), total_seconds=steps.total)
