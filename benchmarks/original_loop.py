"""A faithful re-implementation of the original SparseGPT / GPTQ sequential loop, as a speed baseline.

Written from the papers and the structure of the reference repositories (IST-DASLab/sparsegpt and
IST-DASLab/gptq, `llama.py` / `opt.py` with `fasterprune` / `fasterquant`), not copied from them:

- a catcher records the inputs of the first decoder block, one calibration window per call (batch 1);
- per block, all seven linears are hooked and every linear accumulates its own Hessian
  (H *= n / (n + 1); H += (sqrt(2 / n) x)(sqrt(2 / n) x)^T per window, in float32);
- one pass over the windows collects the statistics, then each linear is solved on its own
  (dead inputs zeroed, dampening 0.01 * mean diag, Cholesky inverse, upper factor), with the
  column sweep on (rows, cols) buffers: SparseGPT picks the mask per block of 128 columns by
  w^2 / [Hinv]_jj^2, GPTQ quantizes per channel (asymmetric min-max fitted up front);
- one more pass over the windows produces the next block's inputs.

Only the benchmark uses this module; it is not part of crescendo.
"""

from __future__ import annotations

import math

import torch
from torch import nn


class _Solver:
    """One linear's Hessian and its column sweep, as the reference `SparseGPT` / `GPTQ` classes."""

    def __init__(self, layer: nn.Linear) -> None:
        self.layer = layer
        cols = layer.weight.shape[1]
        self.H = torch.zeros(cols, cols, device=layer.weight.device)
        self.nsamples = 0

    def add_batch(self, inp: torch.Tensor) -> None:
        tmp = inp.shape[0] if inp.dim() == 3 else 1
        inp = inp.reshape(-1, inp.shape[-1]).t()
        self.H *= self.nsamples / (self.nsamples + tmp)
        self.nsamples += tmp
        inp = math.sqrt(2 / self.nsamples) * inp.float()
        self.H += inp.matmul(inp.t())

    def _factor(self, W: torch.Tensor, percdamp: float) -> torch.Tensor:
        H = self.H
        del self.H
        dead = torch.diag(H) == 0
        H[dead, dead] = 1
        W[:, dead] = 0
        damp = percdamp * torch.mean(torch.diag(H))
        diag = torch.arange(H.shape[0], device=H.device)
        H[diag, diag] += damp
        H = torch.linalg.cholesky(H)
        H = torch.cholesky_inverse(H)
        return torch.linalg.cholesky(H, upper=True)

    def fasterprune(self, sparsity: float, blocksize: int = 128, percdamp: float = 0.01) -> None:
        W = self.layer.weight.data.clone().float()
        rows, cols = W.shape
        Hinv = self._factor(W, percdamp)
        losses = torch.zeros(rows, device=W.device)
        for i1 in range(0, cols, blocksize):
            i2 = min(i1 + blocksize, cols)
            count = i2 - i1
            W1 = W[:, i1:i2].clone()
            Q1 = torch.zeros_like(W1)
            Err1 = torch.zeros_like(W1)
            Losses1 = torch.zeros_like(W1)
            Hinv1 = Hinv[i1:i2, i1:i2]
            tmp = W1**2 / (torch.diag(Hinv1).reshape((1, -1))) ** 2
            thresh = torch.sort(tmp.flatten())[0][int(tmp.numel() * sparsity)]
            mask1 = tmp <= thresh
            for i in range(count):
                w = W1[:, i]
                d = Hinv1[i, i]
                q = w.clone()
                q[mask1[:, i]] = 0
                Q1[:, i] = q
                Losses1[:, i] = (w - q) ** 2 / d**2
                err1 = (w - q) / d
                W1[:, i:] -= err1.unsqueeze(1).matmul(Hinv1[i, i:].unsqueeze(0))
                Err1[:, i] = err1
            W[:, i1:i2] = Q1
            losses += torch.sum(Losses1, 1) / 2
            W[:, i2:] -= Err1.matmul(Hinv[i1:i2, i2:])
        self.layer.weight.data = W.to(self.layer.weight.dtype)

    def fasterquant(self, bits: int, blocksize: int = 128, percdamp: float = 0.01) -> None:
        W = self.layer.weight.data.clone().float()
        rows, cols = W.shape
        maxq = torch.tensor(2**bits - 1, device=W.device)
        xmin = torch.minimum(W.min(1).values, torch.zeros(rows, device=W.device))
        xmax = torch.maximum(W.max(1).values, torch.zeros(rows, device=W.device))
        tmp = (xmin == 0) & (xmax == 0)
        xmin[tmp], xmax[tmp] = -1, +1
        scale = ((xmax - xmin) / maxq).unsqueeze(1)
        zero = torch.round(-xmin / scale.squeeze(1)).unsqueeze(1)
        Hinv = self._factor(W, percdamp)
        losses = torch.zeros_like(W)
        Q = torch.zeros_like(W)
        for i1 in range(0, cols, blocksize):
            i2 = min(i1 + blocksize, cols)
            count = i2 - i1
            W1 = W[:, i1:i2].clone()
            Q1 = torch.zeros_like(W1)
            Err1 = torch.zeros_like(W1)
            Losses1 = torch.zeros_like(W1)
            Hinv1 = Hinv[i1:i2, i1:i2]
            for i in range(count):
                w = W1[:, i]
                d = Hinv1[i, i]
                q = torch.clamp(torch.round(w.unsqueeze(1) / scale) + zero, 0, maxq)
                q = (scale * (q - zero)).flatten()
                Q1[:, i] = q
                Losses1[:, i] = (w - q) ** 2 / d**2
                err1 = (w - q) / d
                W1[:, i:] -= err1.unsqueeze(1).matmul(Hinv1[i, i:].unsqueeze(0))
                Err1[:, i] = err1
            Q[:, i1:i2] = Q1
            losses[:, i1:i2] = Losses1 / 2
            W[:, i2:] -= Err1.matmul(Hinv[i1:i2, i2:])
        self.layer.weight.data = Q.to(self.layer.weight.dtype)


class _Catcher(Exception):
    pass


@torch.no_grad()
def original_sequential(model: nn.Module, windows: list[torch.Tensor], method: str, amount: float) -> None:
    """Compress a LLaMA-family `model` in place with the original loop: method "sparsegpt" (amount =
    sparsity) or "gptq" (amount = bits, per channel)."""
    layers = model.model.layers
    inps: list[torch.Tensor] = []
    kwargs: dict = {}

    def catch(module, args, kw):
        inps.append(args[0] if args else kw["hidden_states"])
        kwargs.update({k: v for k, v in kw.items() if k != "hidden_states"})
        raise _Catcher

    handle = layers[0].register_forward_pre_hook(catch, with_kwargs=True)
    for ids in windows:
        try:
            model(ids, use_cache=False)
        except _Catcher:
            pass
    handle.remove()
    outs = [None] * len(inps)
    for layer in layers:
        subset = {n: m for n, m in layer.named_modules() if isinstance(m, nn.Linear)}
        solvers = {n: _Solver(m) for n, m in subset.items()}
        handles = [m.register_forward_hook(lambda mod, inp, out, n=n: solvers[n].add_batch(inp[0].data))
                   for n, m in subset.items()]
        for x in inps:  # the statistics pass (its outputs are discarded, as in the reference)
            layer(x, **kwargs)
        for h in handles:
            h.remove()
        for solver in solvers.values():
            if method == "sparsegpt":
                solver.fasterprune(float(amount))
            else:
                solver.fasterquant(int(amount))
        for j, x in enumerate(inps):
            out = layer(x, **kwargs)
            outs[j] = out[0] if isinstance(out, tuple) else out
        inps, outs = outs, inps
