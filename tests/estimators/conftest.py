"""Small models shared by the estimator tests."""

from __future__ import annotations

import pytest
import torch
from torch import nn


class TwoLayer(nn.Module):
    """A tiny tanh MLP: enough structure for selection and batching tests."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(3, 4)
        self.fc2 = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.tanh(self.fc1(x)))


@pytest.fixture
def mlp_problem():
    torch.manual_seed(0)
    model = TwoLayer()
    x = torch.randn(256, 3)
    with torch.no_grad():
        y = model(x) + 0.1 * torch.randn(256, 2)
    return model, (x, y)
