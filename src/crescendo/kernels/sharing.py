"""Basis Sharing's math (Wang et al., ICLR 2025): one whitened SVD basis for a group of weight matrices.

For n layers of one module type with weights W_i (out, in) and inputs X_i, stack the transposed
weights side by side, W = [W_1^T ... W_n^T] (in, n*out). With H = sum_i X_i^T X_i = L L^T (Cholesky)
the output error of any replacement W' is ||X (W - W')||_F^2 = ||L^T (W - W')||_F^2 summed over the
group (SVD-LLM's truncation-aware whitening), so the best rank-k replacement is the truncated SVD of
L^T W = U S V^T:

    W ~= B C,  B = L^-T U_k S_k (in, k), shared;  C = V_k^T (k, n*out), C_i = its i-th block (k, out)

and layer i computes y = x W_i^T ~= (x B) C_i: a shared basis, then its own coefficients.
"""

from __future__ import annotations

import torch


def whitening_factor(H: torch.Tensor) -> torch.Tensor:
    """Upper-triangular S = L^T with S^T S = H (in, in), float64.

    H must be symmetric positive semi-definite; when it is singular (inputs that are always zero, or
    fewer tokens than features) the smallest diagonal jitter that makes the Cholesky factorization
    succeed is added, 1e-8 times the mean diagonal and growing tenfold.
    """
    H = H.double()
    H = (H + H.T) / 2
    scale = float(torch.diagonal(H).mean().clamp_min(1e-30))
    jitter = 0.0
    eye = torch.eye(H.shape[0], dtype=H.dtype, device=H.device)
    for _ in range(12):
        L, info = torch.linalg.cholesky_ex(H + jitter * eye)
        if int(info) == 0:
            return L.T
        jitter = scale * 1e-8 if jitter == 0.0 else jitter * 10
    raise ValueError("the input statistic is not positive semi-definite (Cholesky failed with jitter)")


def shared_basis(weights: list[torch.Tensor], H: torch.Tensor, rank: int) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """The rank-`rank` shared factorization of `weights` [(out, in), ...] under input statistic H (in, in).

    Returns (basis (rank, in), [coefficients (out, rank), ...]) as float32 linear weights: layer i
    computes x -> coefficients_i @ (basis @ x), approximating weights[i] @ x.

    >>> W = [torch.eye(3), 2 * torch.eye(3)]
    >>> basis, (c1, c2) = shared_basis(W, torch.eye(3), rank=3)
    >>> torch.allclose(c2 @ basis, 2 * torch.eye(3), atol=1e-6)
    True
    """
    out_f, in_f = weights[0].shape
    if any(w.shape != (out_f, in_f) for w in weights):
        raise ValueError("shared weights must all have one shape")
    if not 1 <= rank <= min(in_f, len(weights) * out_f):
        raise ValueError(f"rank {rank} must be in 1..{min(in_f, len(weights) * out_f)}")
    S = whitening_factor(H)  # (in, in), upper triangular
    stacked = torch.cat([w.double().T for w in weights], dim=1)  # (in, n * out)
    U, sigma, Vh = torch.linalg.svd(S @ stacked, full_matrices=False)
    scaled = U[:, :rank] * sigma[:rank]  # (in, k)
    B = torch.linalg.solve_triangular(S, scaled, upper=True)  # S^-1 U_k S_k, (in, k)
    C = Vh[:rank]  # (k, n * out)
    coefficients = [C[:, i * out_f:(i + 1) * out_f].T.float().contiguous() for i in range(len(weights))]
    return B.T.float().contiguous(), coefficients


def shared_rank(in_features: int, out_features: int, members: int, removed_fraction: float) -> int:
    """The rank that removes `removed_fraction` of the group's parameters (Basis Sharing's
    `compute_num_basis`): k = (1 - removed) * n * in * out / (in + n * out), rounded down."""
    total = in_features * out_features * members
    return int(total * (1.0 - removed_fraction) // (in_features + out_features * members))
