"""The Optimal-Brain-Surgeon column sweep behind GPTQ and SparseGPT.

GPTQ (Frantar et al., 2023) and SparseGPT (Frantar & Alistarh, 2023) are the same algorithm: walk the
columns of W (out, in) left to right in blocks, decide each column's new value (quantized, pruned, or
both), and spread its error over the not-yet-visited columns with the inverse-Hessian Cholesky factor.
They differ only in the decision, so one kernel serves both, and their composition with earlier
stages falls out naturally: a prior pruning mask forces zeros (GPTQ after pruning keeps them exactly
zero while compensating their removal), and a prior quantization grid projects every updated column
back onto that grid (SparseGPT after a quantizer keeps its weights on the grid).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..grids import Grid, Params
from ..types import NM


@dataclass(frozen=True)
class SweepResult:
    weight: torch.Tensor  # (out, in) new weight, float32
    mask: torch.Tensor | None  # (out, in) True = pruned, or None when nothing is pruned
    grid_params: Params | None  # {name: (out, n_groups)} parameters of the grid the weight lies on


@dataclass(frozen=True)
class PreparedHessian:
    """What the column sweep needs from a layer Hessian, computed once per distinct input.

    Linears fed the same input (q/k/v, gate/up) share one Hessian, hence one preparation.
    """

    factor: torch.Tensor  # (in, in) upper Cholesky factor of (H + λI)^-1, in visiting order
    perm: torch.Tensor | None  # visiting order of the columns (act-order), or None for 0..in-1
    dead: torch.Tensor  # (in,) bool: inputs that were exactly zero on every calibration token


def inverse_hessian_factor(H: torch.Tensor, dampening_fraction: float) -> torch.Tensor:
    """Upper Cholesky factor of (H + λI)^-1 with λ = dampening_fraction * mean(diag H). H: (in, in)."""
    return inverse_hessian_factor_(H.clone(), dampening_fraction)


def inverse_hessian_factor_(H: torch.Tensor, dampening_fraction: float) -> torch.Tensor:
    """`inverse_hessian_factor` computed in H's own memory (H is overwritten and returned): the same
    numbers, with one (in, in) matrix where the out-of-place steps hold four (for a 5632-wide input,
    127 MB each; what lets a block-wise run compress a LLaMA MLP within a small budget)."""
    damp = dampening_fraction * torch.mean(torch.diag(H))
    H.diagonal().add_(damp)
    torch.linalg.cholesky(H, out=H)  # L, lower
    torch.cholesky_inverse(H, out=H)  # (L L^T)^-1
    return torch.linalg.cholesky(H, upper=True, out=H)


def prepare_hessian(H: torch.Tensor, dampening_fraction: float = 0.01, act_order: bool = False) -> PreparedHessian:
    """Dampen, order and factor a layer Hessian H = X^T X (in, in) for `obs_sweep`.

    Inputs whose diagonal is 0 never carried a nonzero value on the calibration set: their row and
    column of H are zero, so they get a unit diagonal (the references' `H[dead, dead] = 1`) to keep
    H invertible. Unlike the reference code, their weights are *not* zeroed: after an activation
    quantizer such inputs may merely round to zero on every calibration token and still be live at
    evaluation, and a stage must not change what it was not asked to change. With zero rows in H
    the sweep spreads no error through them; they are quantized and are pruning candidates like any
    other weight. act_order: visit columns in decreasing diag(H) (GPTQ's act-order).
    """
    return prepare_hessian_(H.detach().float().clone(memory_format=torch.contiguous_format), dampening_fraction,
                            act_order)


def prepare_hessian_(H: torch.Tensor, dampening_fraction: float = 0.01, act_order: bool = False) -> PreparedHessian:
    """`prepare_hessian` in H's own memory (a float32 contiguous H the caller gives up): the factor
    takes H's place instead of a copy beside it."""
    dead = torch.diag(H) == 0
    H[dead, dead] = 1
    perm = None
    if act_order:
        perm = torch.argsort(torch.diag(H), descending=True)
        H = H[perm][:, perm]
    return PreparedHessian(inverse_hessian_factor_(H, dampening_fraction), perm, dead)


def obs_sweep(
    W: torch.Tensor,
    hessian: PreparedHessian,
    *,
    sparsity: float = 0.0,
    nm: NM | None = None,
    prior_mask: torch.Tensor | None = None,
    grid: Grid | None = None,
    grid_params: Params | None = None,
    block_size: int = 128,
) -> SweepResult:
    """Prune and/or quantize W (out, in) given its prepared layer Hessian (`prepare_hessian`).

    sparsity / nm: fraction (or N:M pattern) to prune in addition to `prior_mask`, chosen per block of
    `block_size` columns by SparseGPT's saliency w^2 / [Hinv]_jj^2 (N:M: within each group of M).
    grid / grid_params: quantize every column onto `grid`; with `grid_params` given (a recorded grid of
    an earlier stage) those parameters are used, otherwise they are fitted as GPTQ does (per channel up
    front, per group when the sweep reaches the group's first column). With act-order, groups stay
    contiguous in the original column order (their parameters are fitted up front, GPTQ's
    `static_groups`).
    """
    W = W.detach().float().clone(memory_format=torch.contiguous_format)
    rows, cols = W.shape
    if prior_mask is not None:
        W[prior_mask] = 0

    perm = hessian.perm
    static_params = grid_params
    if grid is not None and static_params is None and (grid.group_size is None or perm is not None):
        static_params = grid.fit_all(W)
    group = grid.group_size or cols if grid is not None else cols

    invperm = None
    if perm is not None:
        invperm = torch.argsort(perm)
        W = W[:, perm]
        prior_mask = prior_mask[:, perm] if prior_mask is not None else None
    col_index = perm.tolist() if perm is not None else list(range(cols))  # host list: no per-column sync

    Hinv = hessian.factor  # (in, in) upper triangular
    mask = torch.zeros_like(W, dtype=torch.bool) if prior_mask is None else prior_mask.clone()
    prune = sparsity > 0 or nm is not None
    fitted: dict[int, Params] = {}
    projectors: dict[int, Callable[[torch.Tensor], torch.Tensor]] = {}  # per column group

    for i1 in range(0, cols, block_size):
        i2 = min(i1 + block_size, cols)
        # Block buffers are kept transposed, (b, out): column i of the block is the contiguous row
        # W1[i], so the per-column rank-1 update touches contiguous memory (half the time of a
        # strided column slice on a CPU).
        W1 = W[:, i1:i2].t().contiguous()  # (b, out)
        Q1 = torch.zeros_like(W1)
        Err1 = torch.zeros_like(W1)
        Hinv1 = Hinv[i1:i2, i1:i2]
        d = torch.diag(Hinv1)  # (b,)
        mask1 = mask[:, i1:i2].t().contiguous()  # (b, out), written back after the block

        if prune and nm is None:
            saliency = W1**2 / d[:, None] ** 2  # (b, out)
            saliency[mask1] = float("-inf")  # already pruned: counted in k, not re-chosen
            k = int(mask1.sum()) + int(round(saliency.numel() * sparsity))
            if k > 0:
                idx = torch.topk(saliency.flatten(), k, largest=False, sorted=False).indices
                mask1.view(-1)[idx] = True

        d_host = d.tolist()  # python floats: no tensor indexing per column
        for i in range(i2 - i1):
            j = i1 + i
            w = W1[i]  # (out,)
            if nm is not None and i % nm.m == 0:
                sal = (W1[i : i + nm.m] ** 2 / d[i : i + nm.m, None] ** 2).t()  # (out, m)
                sal = sal.masked_fill(mask1[i : i + nm.m].t(), float("-inf"))
                pick = torch.topk(sal, nm.n, dim=1, largest=False).indices
                chosen = torch.zeros_like(sal, dtype=torch.bool).scatter_(1, pick, True)
                mask1[i : i + nm.m] |= chosen.t()
            q = w
            if grid is not None:
                gi = col_index[j] // group
                if gi not in projectors:
                    if static_params is not None:
                        params = {k_: v[:, gi] for k_, v in static_params.items()}
                    else:  # first column of a group: fit on the current (updated) weights
                        width = min(group, cols - j)
                        current = torch.cat([W1[i:].t(), W[:, i2:]], dim=1)[:, :width]
                        params = fitted[gi] = grid.fit(current)
                    projectors[gi] = grid.column_projector(params)
                q = projectors[gi](q)
            q = q.masked_fill(mask1[i], 0.0)
            Q1[i] = q
            err = (w - q).div_(d_host[i])
            W1[i:].addr_(Hinv1[i, i:], err, alpha=-1.0)  # spread the error over later columns
            Err1[i] = err

        W[:, i1:i2] = Q1.t()
        mask[:, i1:i2] = mask1.t()
        W[:, i2:] -= Err1.t() @ Hinv[i1:i2, i2:]

    if invperm is not None:
        W, mask = W[:, invperm], mask[:, invperm]
    out_params = None
    if grid is not None:
        if static_params is not None:
            out_params = static_params
        else:
            keys = fitted[0].keys()
            out_params = {k_: torch.stack([fitted[g][k_] for g in sorted(fitted)], dim=1) for k_ in keys}
    return SweepResult(weight=W, mask=mask if (prune or prior_mask is not None) else None, grid_params=out_params)
