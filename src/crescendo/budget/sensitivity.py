"""Per-layer sensitivities that drive mixed-precision bit allocation.

Two measures, from expensive to cheap:

- `hessian_trace`: HAWQ-V2's average Hessian trace (Dong et al., NeurIPS 2020, "Hessian aware
  trace-weighted quantization"), Tr(H_l) / n_l for each linear weight W_l of the calibration loss (the
  causal-LM loss), estimated with Hutchinson's method: Tr(H) = E_v[v^T H v] for Rademacher v. One
  Hessian-vector product per probe, by double back-propagation. `hawq_v2_sensitivity` turns the traces
  into HAWQ-V2's criterion Omega_l(b) = Tr(H_l)/n_l * ||Q_b(W_l) - W_l||^2.
- `output_error_proxy`: the layer-wise output error of round-to-nearest at each candidate bit-width,
  tr(dW H dW^T) with H = X^T X (the GPTQ / OBC layer-wise objective), from one calibration pass.

Seed 003 (Figure 10, App. C) allocates bits with HAWQ-V2 and applies the allocation in two orders;
`crescendo.budget.allocation` does the allocation and builds both recipes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence

import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from ..analysis.metrics import output_error_from_gram
from ..engine.stats import InputStatistics
from ..errors import ConfigError
from ..grids import Grid, UniformGrid
from ..models.adapters import get_adapter, get_weight

Candidate = int | Grid  # a bit-width (asymmetric per-channel RTN grid) or any quantization grid


def rademacher_like(tensors: Sequence[torch.Tensor], generator: torch.Generator) -> list[torch.Tensor]:
    """Independent +-1 entries with probability 1/2 each, one tensor per input (Hutchinson's probe)."""
    out = []
    for t in tensors:
        bits = torch.randint(0, 2, t.shape, generator=generator, dtype=torch.int8)  # drawn on CPU: reproducible
        out.append((bits.to(device=t.device, dtype=t.dtype) * 2 - 1))
    return out


def hutchinson_trace(
    loss: torch.Tensor, params: Sequence[torch.Tensor], probes: Iterable[Sequence[torch.Tensor]]
) -> list[float]:
    """Hutchinson estimates of the trace of each diagonal Hessian block d^2 loss / d params_l^2.

    For one joint probe v = (v_1, ..., v_L), (Hv)_l = sum_k H_lk v_k and E[v_l^T (Hv)_l] = Tr(H_ll):
    the cross terms vanish in expectation because the v_k are independent with mean 0 (HAWQ-V2, Sec. 3.2).
    Returns the mean of v_l^T (Hv)_l over the probes, for each l (not divided by the block size).

    `loss` must still have its graph; it is kept (retain_graph) so the caller may reuse it.

    Example (loss = 0.5 x^T A x, Hessian A, a diagonal A is recovered exactly by any probe):
        >>> x = torch.ones(3, requires_grad=True)
        >>> A = torch.diag(torch.tensor([1.0, 2.0, 3.0]))
        >>> hutchinson_trace(0.5 * x @ A @ x, [x], [rademacher_like([x], torch.Generator().manual_seed(0))])
        [6.0]
    """
    grads = torch.autograd.grad(loss, params, create_graph=True)
    totals = [0.0] * len(params)
    count = 0
    for v in probes:
        hv = torch.autograd.grad(grads, params, grad_outputs=list(v), retain_graph=True)
        for i, (vi, hvi) in enumerate(zip(v, hv)):
            totals[i] += float((vi * hvi).sum())
        count += 1
    if count == 0:
        raise ConfigError("Hutchinson's estimator needs at least one probe")
    return [t / count for t in totals]


def _probe_stream(params: Sequence[torch.Tensor], n_probes: int, seed: int) -> Callable[[], list[list[torch.Tensor]]]:
    # probe k is regenerated from seed + k for every calibration batch: the same v for every batch
    # (so the batch average is Hutchinson on the mean loss) without holding n_probes copies of the weights
    def probes():
        for k in range(n_probes):
            yield rademacher_like(params, torch.Generator().manual_seed(seed + k))

    return probes


def _modules(model: nn.Module, layers: Iterable[str] | None) -> dict[str, nn.Module]:
    if layers is None:
        return get_adapter(model).all_block_linears(model)
    layers = list(layers)
    named = dict(model.named_modules())
    missing = [n for n in layers if n not in named]
    if missing:
        raise ConfigError(f"no module named {missing[0]!r} in the model")
    return {n: named[n] for n in layers}


def hessian_trace(
    model: nn.Module,
    calibration: Sequence[torch.Tensor],
    layers: Iterable[str] | None = None,
    n_probes: int = 8,
    seed: int = 0,
    labels: Sequence[torch.Tensor] | None = None,
) -> dict[str, float]:
    """HAWQ-V2 average Hessian trace Tr(H_l) / n_l of the calibration loss, per layer weight.

    The loss of a batch is the causal-LM loss `model(input_ids=ids, labels=ids).loss`, or, for an
    image classifier, the cross-entropy of `model(images)` against `labels[i]` (one label tensor per
    calibration batch; HAWQ-V2's training loss). The estimate is over the mean of the batch losses; each
    batch contributes v^T H_b v for the same `n_probes` Rademacher probes (Hutchinson), so the result
    is the estimator applied to the mean loss. Scaled dot-product attention runs on its math backend
    here, the only one that is twice differentiable. Only the requested weights require grad during
    the call; every flag is restored afterwards. The model is not changed.

    Parameters:
        model: a Hugging Face causal LM, or a crescendo vision classifier (with `labels`).
        calibration: batches of input ids, each (batch, seqlen), or images (batch, C, H, W).
        layers: full module names of the linears (default: every decoder-block linear).
        n_probes: Rademacher probes per batch (HAWQ-V2 uses a few hundred for CNNs; 8 ranks layers).
        seed: probe k is drawn from torch.Generator().manual_seed(seed + k).

    Example:
        >>> traces = hessian_trace(model, calibration, ["model.layers.0.mlp.down_proj"], n_probes=16)  # doctest: +SKIP
    """
    if n_probes < 1:
        raise ConfigError(f"n_probes must be >= 1, got {n_probes}")
    if not calibration:
        raise ConfigError("hessian_trace needs calibration batches")
    image = get_adapter(model).modality == "image"
    if image and (labels is None or len(labels) != len(calibration)):
        raise ConfigError("hessian_trace on an image classifier needs one label tensor per calibration batch")
    modules = _modules(model, layers)
    params = [m.weight for m in modules.values()]
    flags = {id(p): p.requires_grad for p in model.parameters()}
    was_training = model.training
    sums = [0.0] * len(params)
    try:
        model.eval()
        for p in model.parameters():
            p.requires_grad_(False)
        for p in params:
            p.requires_grad_(True)
        probes = _probe_stream(params, n_probes, seed)
        with torch.enable_grad(), sdpa_kernel(SDPBackend.MATH):
            for i, ids in enumerate(calibration):
                ids = ids.to(params[0].device)
                if image:
                    loss = torch.nn.functional.cross_entropy(model(ids), labels[i].to(ids.device))
                else:
                    loss = model(input_ids=ids, labels=ids).loss
                for i, t in enumerate(hutchinson_trace(loss, params, probes())):
                    sums[i] += t
                del loss
    finally:
        for p in model.parameters():
            p.requires_grad_(flags[id(p)])
        model.train(was_training)
    return {name: s / len(calibration) / p.numel() for (name, p), s in zip(zip(modules, params), sums)}


def _grid(candidate: Candidate) -> Grid:
    if isinstance(candidate, Grid):
        return candidate
    if isinstance(candidate, bool) or not isinstance(candidate, int):
        raise ConfigError(f"a candidate must be a bit-width or a Grid, got {candidate!r}")
    return UniformGrid(candidate)


def hawq_v2_sensitivity(
    model: nn.Module, traces: Mapping[str, float], candidates: Sequence[Candidate] = (2, 3, 4, 5, 6, 7, 8)
) -> dict[str, dict[Candidate, float]]:
    """HAWQ-V2's criterion Omega_l(b) = Tr(H_l)/n_l * ||Q_b(W_l) - W_l||_F^2 for each candidate grid.

    `traces` are average traces from `hessian_trace`. Q_b is round-to-nearest onto the candidate grid
    (an int b means UniformGrid(b), asymmetric per output channel, as `rtn:wB`).
    """
    named = dict(model.named_modules())
    out: dict[str, dict[Candidate, float]] = {}
    for name, trace in traces.items():
        w = get_weight(named[name])  # (out, in)
        out[name] = {c: float(trace) * float(((_grid(c).quantize(w) - w) ** 2).sum()) for c in candidates}
    return out


@torch.no_grad()
def output_error_proxy(
    model: nn.Module,
    calibration: Sequence[torch.Tensor],
    candidates: Mapping[str, Sequence[Candidate]],
) -> dict[str, dict[Candidate, float]]:
    """Layer-wise output error of round-to-nearest per layer and candidate: tr(dW H dW^T).

    H = X^T X / tokens is the input Gram matrix of each linear in the dense model, collected once over
    `calibration` (`InputStatistics`), and dW = Q_b(W) - W with Q_b = UniformGrid(b).quantize (or the
    candidate Grid itself). This is the GPTQ / OBC layer-wise objective ||dW X^T||^2 before any error
    feedback, a cheap stand-in for HAWQ-V2's Hessian criterion.

    Parameters:
        candidates: module name -> the bit-widths (or Grids) to score for that layer.

    Returns:
        name -> {candidate: error}, keyed by the candidates exactly as given.

    Example:
        >>> err = output_error_proxy(model, calibration, {"model.layers.0.mlp.down_proj": [2, 4, 8]})  # doctest: +SKIP
        >>> err["model.layers.0.mlp.down_proj"][2] > err["model.layers.0.mlp.down_proj"][8]  # doctest: +SKIP
        True
    """
    if not calibration:
        raise ConfigError("output_error_proxy needs calibration batches")
    modules = _modules(model, list(candidates))
    grids = {name: [(c, _grid(c)) for c in cands] for name, cands in candidates.items()}
    device = next(model.parameters()).device
    adapter = get_adapter(model)
    with InputStatistics(modules, "hessian") as stats:
        for batch in calibration:
            adapter.run(model, batch.to(device))
    out: dict[str, dict[Candidate, float]] = {}
    for name, module in modules.items():
        w = get_weight(module)  # (out, in)
        gram = stats.result(name).matrix.to(w.device)  # (in, in)
        out[name] = {c: output_error_from_gram(w, grid.quantize(w), gram) for c, grid in grids[name]}
    return out
