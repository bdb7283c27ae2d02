"""Mask selection for magnitude and Wanda pruning (pure functions on tensors).

Masks are boolean tensors of the weight's shape (out, in) where True means *pruned* (set to zero),
the convention of SparseGPT's `fasterprune`. `prior` is the mask of earlier pruning stages: those
weights stay pruned and a stage with ratio p prunes p of the matrix *in addition* (multi-stage
schedules P(p1) > Q > P(p2) reach p1 + p2).
"""

from __future__ import annotations

import torch

from ..types import NM


def _extra_count(numel: int, ratio: float) -> int:
    return int(round(numel * ratio))


def select_smallest(scores: torch.Tensor, ratio: float, prior: torch.Tensor | None, per_row: bool) -> torch.Tensor:
    """Prune the `ratio` fraction with the smallest scores, on top of `prior`.

    scores: (out, in). per_row=False uses one threshold for the whole matrix (SparseGPT's `--gmp`
    magnitude baseline); per_row=True compares within each output row (Wanda's comparison group).
    The pruned count is exact (ties are broken by the selection, deterministically).
    """
    scores = scores.float()
    if prior is not None:
        scores = scores.masked_fill(prior, float("-inf"))  # already pruned: taken first, not re-counted
    mask = torch.zeros_like(scores, dtype=torch.bool)
    if per_row:
        prior_per_row = prior.sum(dim=1) if prior is not None else torch.zeros(scores.shape[0], dtype=torch.long)
        k = prior_per_row + _extra_count(scores.shape[1], ratio)  # (out,)
        order = torch.argsort(scores, dim=1, stable=True)
        rank = torch.empty_like(order)
        rank.scatter_(1, order, torch.arange(scores.shape[1], device=scores.device).expand_as(order))
        mask = rank < k[:, None].to(rank.device)
    else:
        k = (int(prior.sum()) if prior is not None else 0) + _extra_count(scores.numel(), ratio)
        if k > 0:
            idx = torch.topk(scores.flatten(), k, largest=False, sorted=False).indices
            mask.view(-1)[idx] = True
    return mask


def select_nm(scores: torch.Tensor, nm: NM, prior: torch.Tensor | None) -> torch.Tensor:
    """In each group of M consecutive inputs of a row, prune the N smallest scores (plus `prior`).

    scores: (out, in) with in divisible by M.
    """
    out_f, in_f = scores.shape
    scores = scores.float()
    if prior is not None:
        scores = scores.masked_fill(prior, float("-inf"))
    groups = scores.reshape(out_f, in_f // nm.m, nm.m)  # (out, in/M, M)
    idx = torch.topk(groups, nm.n, dim=2, largest=False).indices
    mask = torch.zeros_like(groups, dtype=torch.bool).scatter_(2, idx, True).reshape(out_f, in_f)
    if prior is not None:
        mask |= prior
    return mask


def magnitude_scores(weight: torch.Tensor) -> torch.Tensor:
    """|W|: (out, in)."""
    return weight.abs()


def wanda_scores(weight: torch.Tensor, input_sq_norm: torch.Tensor) -> torch.Tensor:
    """Wanda (Sun et al., 2024): |W_ij| * ||X_j||_2. weight (out, in), input_sq_norm (in,) = sum_t x_tj^2."""
    return weight.abs() * torch.sqrt(input_sq_norm.float())[None, :]
