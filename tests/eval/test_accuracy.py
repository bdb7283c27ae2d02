"""accuracy(): exact counts on a hand-made classifier, eval mode, no grad, batching."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from crescendo.errors import DataError
from crescendo.eval.accuracy import accuracy


class Brightest(nn.Module):
    """Logits = the pixels of a 1x2x2 image: predicts the index of the brightest pixel. Records its calls."""

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))
        self.calls = []

    def forward(self, x):
        self.calls.append((self.training, torch.is_grad_enabled(), len(x)))
        return x.flatten(1) * self.scale


def test_counts_known_predictions_in_batches():
    images = torch.eye(4).repeat(3, 1).view(12, 1, 2, 2)  # predictions 0,1,2,3,0,1,2,3,...
    labels = torch.tensor([0, 1, 2, 3, 0, 0, 0, 0, 1, 1, 2, 3])  # right: 4 + 1 + 3 = 8
    model = Brightest().train()
    result = accuracy(model, images, labels, batch_size=5)
    assert (result.correct, result.total) == (8, 12)
    assert result.accuracy == pytest.approx(100 * 8 / 12) and result.seconds >= 0
    assert model.calls == [(False, False, 5), (False, False, 5), (False, False, 2)]  # eval mode, no grad, batched
    assert model.training  # restored


def test_refuses_mismatched_inputs():
    with pytest.raises(DataError, match="3 images but labels"):
        accuracy(Brightest(), torch.zeros(3, 1, 2, 2), torch.zeros(2, dtype=torch.long))
    with pytest.raises(DataError, match="no images"):
        accuracy(Brightest(), torch.zeros(0, 1, 2, 2), torch.zeros(0, dtype=torch.long))
    with pytest.raises(DataError, match="batch_size"):
        accuracy(Brightest(), torch.zeros(3, 1, 2, 2), torch.zeros(3, dtype=torch.long), batch_size=0)
