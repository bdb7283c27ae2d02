"""Orthogonal Hadamard-type matrices for rotation-based quantization (QuaRot, QuIP#).

QuaRot (Ashkboos et al., 2024, "QuaRot: Outlier-Free 4-Bit Inference in Rotated LLMs") multiplies the
residual stream and the MLP's intermediate activations by (randomized) Hadamard matrices: orthogonal,
so the network computes the same function, and "incoherent", so that outlier channels are spread over
all channels and the tensors become easy to quantize.

A Hadamard matrix of order n exists only for n = 1, 2 or a multiple of 4, and no single construction
covers every such order. Model widths are of the form n = 2^k * m with a small odd m (576 = 64 * 9,
1536 = 512 * 3), so `hadamard_matrix` builds H_(2^(k-j)) (Sylvester) ⊗ H_(m*2^j) where the second
factor comes from Paley's constructions for the smallest j that has one (12, 20, 36, ... ), and falls
back to an orthonormal DCT-II block of order m when no Paley order fits. Everything is normalised so
that H @ H.T = I.

Pure tensor math: no logging, no devices chosen, no global state (random signs use a local generator).
"""

from __future__ import annotations

import math

import torch

from crescendo.errors import ConfigError


def _is_prime(q: int) -> bool:
    if q < 2:
        return False
    return all(q % d for d in range(2, math.isqrt(q) + 1))


def _jacobsthal(q: int) -> torch.Tensor:
    """Q[i, j] = Legendre symbol of (j - i) mod q for a prime q; the core of Paley's constructions."""
    residues = {(x * x) % q for x in range(1, q)}
    chi = torch.tensor([0.0] + [1.0 if a in residues else -1.0 for a in range(1, q)], dtype=torch.float64)
    idx = torch.arange(q)
    return chi[(idx[None, :] - idx[:, None]) % q]  # (q, q)


def _paley_i(q: int) -> torch.Tensor:
    """Hadamard matrix of order q + 1 for a prime q ≡ 3 (mod 4) (Paley I), entries ±1."""
    s = torch.zeros(q + 1, q + 1, dtype=torch.float64)  # skew-symmetric conference matrix
    s[0, 1:] = 1.0
    s[1:, 0] = -1.0
    s[1:, 1:] = _jacobsthal(q)
    return s + torch.eye(q + 1, dtype=torch.float64)


def _paley_ii(q: int) -> torch.Tensor:
    """Hadamard matrix of order 2(q + 1) for a prime q ≡ 1 (mod 4) (Paley II), entries ±1."""
    c = torch.zeros(q + 1, q + 1, dtype=torch.float64)  # symmetric conference matrix
    c[0, 1:] = 1.0
    c[1:, 0] = 1.0
    c[1:, 1:] = _jacobsthal(q)
    on_zero = torch.tensor([[1.0, -1.0], [-1.0, -1.0]], dtype=torch.float64)
    on_diag = torch.tensor([[1.0, 1.0], [1.0, -1.0]], dtype=torch.float64)
    return torch.kron(c, on_zero) + torch.kron(torch.eye(q + 1, dtype=torch.float64), on_diag)


def _sylvester(n: int) -> torch.Tensor:
    """Unnormalised Sylvester Hadamard matrix of order n (a power of two), entries ±1."""
    h = torch.ones(1, 1, dtype=torch.float64)
    while h.shape[0] < n:
        h = torch.cat([torch.cat([h, h], dim=1), torch.cat([h, -h], dim=1)], dim=0)
    return h


def _paley(order: int) -> torch.Tensor | None:
    """A ±1 Hadamard matrix of `order` (a multiple of 4) from Paley I or II, or None if neither applies."""
    if _is_prime(order - 1) and (order - 1) % 4 == 3:
        return _paley_i(order - 1)
    half = order // 2
    if _is_prime(half - 1) and (half - 1) % 4 == 1:
        return _paley_ii(half - 1)
    return None


def _dct_ii(m: int) -> torch.Tensor:
    """Orthonormal DCT-II matrix of order m: the deterministic fallback when no Hadamard order fits."""
    k = torch.arange(m, dtype=torch.float64)[:, None]
    i = torch.arange(m, dtype=torch.float64)[None, :]
    c = torch.cos(math.pi * (i + 0.5) * k / m) * math.sqrt(2.0 / m)
    c[0] /= math.sqrt(2.0)
    return c


def hadamard_matrix(n: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Deterministic orthogonal Hadamard-type matrix H of order n, with H @ H.T = I.

    n = 2^k gives Sylvester's matrix / sqrt(n). For n = 2^k * m with m odd, the result is
    H_(2^(k-j)) ⊗ P / sqrt(n) where P is a Paley Hadamard matrix of order m * 2^j for the smallest
    j >= 2 that has one (order 12 = 4*3 from q = 11, 36 = 4*9 from q = 17, ...), as in QuaRot's
    `get_hadK`, which hard-codes such blocks. When no j works, the odd factor is an orthonormal
    DCT-II block: still orthogonal, though its entries are no longer of equal magnitude.

    Args:
        n: order of the matrix, >= 1.
        dtype: dtype of the result (built in float64, then cast).

    Example:
        >>> H = hadamard_matrix(576)  # 16 x 36 (Paley II, q = 17)
        >>> torch.allclose(H @ H.T, torch.eye(576, dtype=H.dtype))
        True
    """
    if n < 1:
        raise ConfigError(f"Hadamard order must be >= 1, got {n}")
    k, m = 0, n
    while m % 2 == 0:
        k, m = k + 1, m // 2
    if m == 1:
        return (_sylvester(n) / math.sqrt(n)).to(dtype)
    for j in range(2, k + 1):
        block = _paley(m * 2**j)
        if block is not None:
            h = torch.kron(_sylvester(2 ** (k - j)), block) / math.sqrt(n)
            return h.to(dtype)
    h = torch.kron(_sylvester(2**k) / math.sqrt(2**k), _dct_ii(m))
    return h.to(dtype)


def random_signs(n: int, seed: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """n independent ±1 values drawn from a local generator seeded with `seed` (shape (n,))."""
    generator = torch.Generator().manual_seed(seed)
    bits = torch.randint(0, 2, (n,), generator=generator)
    return (bits * 2 - 1).to(dtype)


def random_hadamard_matrix(n: int, seed: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """QuaRot's randomized Hadamard matrix Q = diag(s) @ H with random signs s, orthogonal.

    The signs act on the *input* side (x @ Q = (x * s) @ H): a sign flip before the mixing is what
    makes the rotated coordinates incoherent for every x (QuIP#'s randomized Hadamard transform). A
    flip after the mixing (H @ diag(s)) would leave |x @ H| unchanged and add no randomness.

    Args:
        n: order, >= 1.
        seed: seed of the sign generator; the same (n, seed) always gives the same matrix.
        dtype: dtype of the result.

    Example:
        >>> Q = random_hadamard_matrix(64, seed=0)
        >>> torch.allclose(Q @ Q.T, torch.eye(64, dtype=Q.dtype))
        True
    """
    h = hadamard_matrix(n)
    return (random_signs(n, seed)[:, None] * h).to(dtype)


def apply_hadamard(x: torch.Tensor, H: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """x @ H * scale along the last dimension, computed in at least float32, returned in x's dtype.

    Half-precision inputs are upcast so that the rotation itself adds no rounding beyond the final
    cast; `scale` lets a caller keep H in an exactly representable ±1 form and apply 1/sqrt(n) here.

    Args:
        x: (..., n) activations.
        H: (n, n) matrix.
        scale: scalar applied to the product.
    """
    compute = torch.promote_types(x.dtype, torch.float32)
    y = x.to(compute) @ H.to(device=x.device, dtype=compute)  # (..., n)
    if scale != 1.0:
        y = y * scale
    return y.to(x.dtype)
