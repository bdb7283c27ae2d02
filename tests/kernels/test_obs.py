"""The OBS column sweep (GPTQ and SparseGPT) against hand-computed cases."""

from __future__ import annotations

import pytest
import torch

from crescendo.grids import UniformGrid
from crescendo.kernels.obs import obs_sweep, prepare_hessian
from crescendo.types import NM


def _w(rows: int = 6, cols: int = 16, seed: int = 0) -> torch.Tensor:
    return torch.randn(rows, cols, generator=torch.Generator().manual_seed(seed))


def test_identity_hessian_makes_gptq_equal_rtn_exactly():
    # With H = I the inverse-Hessian factor is diagonal: no error reaches later columns, so GPTQ is RTN.
    W = _w()
    for grid in (UniformGrid(4), UniformGrid(3, symmetric=True), UniformGrid(4, group_size=4)):
        result = obs_sweep(W, prepare_hessian(torch.eye(16)), grid=grid, block_size=8)
        assert torch.equal(result.weight, grid.quantize(W))
        assert result.mask is None


def test_identity_hessian_nm_mask_is_magnitude_within_groups():
    W = torch.tensor([[4.0, -1.0, 0.5, 3.0, 0.1, 0.2, -5.0, 6.0],
                      [1.0, 2.0, 3.0, 4.0, -4.0, -3.0, -2.0, -1.0]])
    result = obs_sweep(W, prepare_hessian(torch.eye(8)), nm=NM(2, 4), block_size=8)
    expected = torch.tensor([[0, 1, 1, 0, 1, 1, 0, 0],
                             [1, 1, 0, 0, 0, 0, 1, 1]], dtype=torch.bool)  # the two smallest |w| of each 4
    assert torch.equal(result.mask, expected)
    assert torch.equal(result.weight, W.masked_fill(expected, 0.0))  # survivors untouched: no error spread


def test_unstructured_sparsity_is_exact_per_block_and_compensates():
    W = _w(8, 32, seed=1)
    X = torch.randn(256, 32, generator=torch.Generator().manual_seed(2))
    H = X.t() @ X / 256
    result = obs_sweep(W, prepare_hessian(H), sparsity=0.5, block_size=16)
    for s in (0, 16):
        assert int(result.mask[:, s:s + 16].sum()) == 8 * 16 // 2  # half of every 16-column block
    assert torch.all(result.weight[result.mask] == 0)
    plain = W.masked_fill(result.mask, 0.0)
    err = lambda w: float(((w - W) @ H @ (w - W).t()).trace())  # noqa: E731  output error on X
    assert err(result.weight) < err(plain)  # OBS updates beat zeroing the same weights


def test_prior_mask_is_kept_and_recorded_grid_is_respected():
    W = _w(4, 16, seed=3)
    prior = torch.zeros(4, 16, dtype=torch.bool)
    prior[:, :3] = True
    grid = UniformGrid(4)
    params = grid.fit_all(W)
    result = obs_sweep(W, prepare_hessian(torch.eye(16) + 0.1), prior_mask=prior, sparsity=0.25, grid=grid,
                       grid_params=params, block_size=16)
    assert torch.all(result.mask[prior]) and torch.all(result.weight[result.mask] == 0)
    assert torch.equal(grid.project_all(result.weight, params), result.weight)  # on the recorded grid
    assert result.grid_params is params


def test_dead_inputs_are_left_alone_not_zeroed():
    # An input that was zero on every calibration token (its row and column of H are 0) carries no
    # information about its weights: they are quantized like any other, not set to zero.
    W = _w(4, 8, seed=4)
    X = torch.randn(64, 8, generator=torch.Generator().manual_seed(5))
    X[:, 2] = 0
    prepared = prepare_hessian(X.t() @ X)
    assert prepared.dead.tolist() == [False, False, True, False, False, False, False, False]
    grid = UniformGrid(8)
    result = obs_sweep(W, prepared, grid=grid, block_size=8)
    assert torch.equal(result.weight[:, 2], grid.quantize(W)[:, 2])  # rounded onto the grid, nothing more
    assert result.weight[:, 2].abs().sum() > 0  # the reference codes would have zeroed the column


def test_act_order_permutation_is_undone():
    W = _w(4, 16, seed=6)
    diag = torch.arange(16, dtype=torch.float32) + 1
    prepared = prepare_hessian(torch.diag(diag), act_order=True)
    assert prepared.perm.tolist() == list(range(15, -1, -1))
    grid = UniformGrid(4)
    result = obs_sweep(W, prepared, grid=grid)
    assert torch.equal(result.weight, grid.quantize(W))  # diagonal H: still RTN, columns in place


@pytest.mark.parametrize("n", [8, 130, 513])
def test_the_in_place_inverse_factor_is_the_textbook_one_bit_for_bit(n):
    """inverse_hessian_factor_ overwrites H to save memory; its numbers are those of the plain steps."""
    from crescendo.kernels.obs import inverse_hessian_factor, inverse_hessian_factor_

    g = torch.Generator().manual_seed(n)
    X = torch.randn(3 * n, n, generator=g)
    H = X.t() @ X / (3 * n)
    damped = H.clone()
    damped.diagonal().add_(0.01 * torch.mean(torch.diag(H)))
    textbook = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(damped)), upper=True)
    kept = H.clone()
    assert torch.equal(inverse_hessian_factor(H, 0.01), textbook) and torch.equal(H, kept)  # H left as it was
    work = H.clone()
    assert torch.equal(inverse_hessian_factor_(work, 0.01), textbook) and torch.equal(work, textbook)
