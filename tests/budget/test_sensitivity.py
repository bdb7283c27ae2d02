"""Hutchinson's trace (HAWQ-V2) against exact Hessians, and the layer-wise output-error proxy."""

from __future__ import annotations

import itertools

import pytest
import torch
from conftest import VOCAB, tiny_llama
from torch.func import functional_call
from torch.nn.attention import SDPBackend, sdpa_kernel

from crescendo.budget.sensitivity import (
    hawq_v2_sensitivity,
    hessian_trace,
    hutchinson_trace,
    output_error_proxy,
    rademacher_like,
)
from crescendo.errors import ConfigError
from crescendo.grids import UniformGrid
from crescendo.models.adapters import get_weight

LAYER = "model.layers.0.mlp.down_proj"


def _quadratic(n: int = 7, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(n, n, generator=g, dtype=torch.float64)
    return a + a.T  # symmetric, indefinite: the Hessian of 0.5 z^T A z


def test_hutchinson_over_every_sign_pattern_is_the_exact_block_trace():
    """Averaged over all 2^n Rademacher vectors the cross terms cancel exactly, per block too."""
    A = _quadratic()
    x = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    y = torch.zeros(4, dtype=torch.float64, requires_grad=True)
    z = torch.cat([x, y]) + 1.0
    loss = 0.5 * z @ A @ z
    signs = [torch.tensor(s, dtype=torch.float64) for s in itertools.product((-1.0, 1.0), repeat=7)]
    estimates = hutchinson_trace(loss, [x, y], [(s[:3], s[3:]) for s in signs])
    assert estimates == pytest.approx([A[:3, :3].trace().item(), A[3:, 3:].trace().item()], rel=1e-12)


def test_hutchinson_with_random_probes_is_within_its_standard_error():
    A = _quadratic(seed=1)
    x = torch.ones(7, dtype=torch.float64, requires_grad=True)
    n = 2000
    g = torch.Generator().manual_seed(0)
    (estimate,) = hutchinson_trace(0.5 * x @ A @ x, [x], (rademacher_like([x], g) for _ in range(n)))
    off_diagonal = (A**2).sum() - (A.diagonal() ** 2).sum()
    std = (2 * off_diagonal / n).sqrt().item()  # Var[v^T A v] = 2 sum_{i != j} A_ij^2 for Rademacher v
    assert abs(estimate - A.trace().item()) < 4 * std
    with pytest.raises(ConfigError):
        hutchinson_trace(0.5 * x @ A @ x, [x], [])


@pytest.fixture
def small_lm():
    torch.manual_seed(0)
    model = tiny_llama(hidden_size=8, intermediate_size=16, num_hidden_layers=1, num_attention_heads=2,
                       num_key_value_heads=1, initializer_range=0.3).double().eval()
    g = torch.Generator().manual_seed(4)
    calibration = [torch.randint(0, VOCAB, (1, 12), generator=g) for _ in range(2)]
    return model, calibration


def _exact_hessian(model, calibration, name):
    """The full Hessian of the mean calibration loss w.r.t. one weight, by torch.autograd.functional."""
    w0 = dict(model.named_parameters())[f"{name}.weight"].detach().clone()

    def loss(w):
        total = 0.0
        for ids in calibration:
            total = total + functional_call(model, {f"{name}.weight": w}, kwargs={"input_ids": ids, "labels": ids}).loss
        return total / len(calibration)

    with sdpa_kernel(SDPBackend.MATH):
        H = torch.autograd.functional.hessian(loss, w0)
    return H.reshape(w0.numel(), w0.numel())


def test_hessian_trace_matches_the_exact_average_trace(small_lm):
    model, calibration = small_lm
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    H = _exact_hessian(model, calibration, LAYER)
    n_probes = 64
    traces = hessian_trace(model, calibration, [LAYER, "model.layers.0.self_attn.q_proj"], n_probes=n_probes, seed=3)
    numel = H.shape[0]
    exact = H.trace().item() / numel
    std = (2 * ((H**2).sum() - (H.diagonal() ** 2).sum()) / n_probes).sqrt().item() / numel
    assert abs(traces[LAYER] - exact) < 4 * std
    assert abs(exact) > 4 * std  # the test can tell a right estimate from noise
    # the model is untouched: weights, grad flags, mode
    assert all(torch.equal(p, before[n]) and p.requires_grad for n, p in model.named_parameters())
    assert not model.training
    again = hessian_trace(model, calibration, [LAYER, "model.layers.0.self_attn.q_proj"], n_probes=n_probes, seed=3)
    assert again == traces


def test_hessian_trace_rejects_bad_input(small_lm):
    model, calibration = small_lm
    with pytest.raises(ConfigError):
        hessian_trace(model, calibration, ["no.such.layer"])
    with pytest.raises(ConfigError):
        hessian_trace(model, calibration, [LAYER], n_probes=0)
    with pytest.raises(ConfigError):
        hessian_trace(model, [], [LAYER])


def test_output_error_proxy_is_tr_dW_H_dWT_and_grows_as_bits_shrink(calibration):
    torch.manual_seed(0)
    model = tiny_llama().eval()
    names = ["model.layers.0.mlp.down_proj", "model.layers.1.self_attn.q_proj", "model.layers.1.self_attn.k_proj"]
    errors = output_error_proxy(model, calibration, {n: [2, 3, 4, 6, 8] for n in names})
    for name in names:
        e = errors[name]
        assert e[2] > e[3] > e[4] > e[6] > e[8] > 0
    # by hand for one layer: capture its inputs, H = X^T X / tokens, dW = RTN_4(W) - W
    module = dict(model.named_modules())[names[0]]
    seen = []
    handle = module.register_forward_hook(lambda m, args, out: seen.append(args[0].reshape(-1, args[0].shape[-1])))
    with torch.no_grad():
        for ids in calibration:
            model(input_ids=ids)
    handle.remove()
    X = torch.cat(seen).double()  # (tokens, in)
    W = get_weight(module)
    dW = (UniformGrid(4).quantize(W) - W).double()
    expected = ((dW @ X.T) ** 2).sum().item() / X.shape[0]
    assert errors[names[0]][4] == pytest.approx(expected, rel=1e-4)
    # grids are accepted as candidates and keyed as given
    grid = UniformGrid(4, group_size=16)
    by_grid = output_error_proxy(model, calibration, {names[0]: [grid, 4]})[names[0]]
    assert by_grid[grid] < by_grid[4]  # finer groups, smaller error


def test_hawq_v2_sensitivity_is_trace_times_quantization_error(small_lm):
    model, _ = small_lm
    omega = hawq_v2_sensitivity(model, {LAYER: 2.0}, candidates=(2, 4, 8))[LAYER]
    W = get_weight(dict(model.named_modules())[LAYER])
    assert omega[4] == pytest.approx(2.0 * ((UniformGrid(4).quantize(W) - W) ** 2).sum().item())
    assert omega[2] > omega[4] > omega[8] > 0
