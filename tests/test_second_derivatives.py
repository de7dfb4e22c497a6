"""GraSP's Hessian-gradient product through layers torch cannot differentiate twice (Wang et al. 2020, §4).

The expectation is GraSP on a twin network that computes hardsigmoid by its definition, relu6(x + 3) / 6,
in ordinary ops: the same numbers, computed without prunelab's replacement.
"""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import prunelab


class Gate(nn.Module):
    """A squeeze-and-excitation-like gate: x * hardsigmoid(W x), as MobileNetV3 has."""

    def __init__(self, by_definition: bool = False):
        super().__init__()
        self.fc1 = nn.Linear(6, 8)
        self.fc2 = nn.Linear(8, 8)
        self.head = nn.Linear(8, 3)
        self.act = (lambda x: F.relu6(x + 3.0) / 6.0) if by_definition else nn.Hardsigmoid()

    def forward(self, x):
        h = torch.relu(self.fc1(x))
        return self.head(h * self.act(self.fc2(h)))


class RawHardsigmoid(Gate):
    """The ATen op itself, which no torch function mode sees: torch has no double backward for it."""

    def forward(self, x):
        h = torch.relu(self.fc1(x))
        return self.head(h * torch._C._nn.hardsigmoid(self.fc2(h)))


def _data():
    g = torch.Generator().manual_seed(0)
    return torch.randn(16, 6, generator=g) * 3, torch.randint(0, 3, (16,), generator=g)


def test_grasp_goes_through_hardsigmoid_as_its_definition():
    x, y = _data()
    torch.manual_seed(0)
    model = Gate()
    twin = Gate(by_definition=True)
    twin.load_state_dict(model.state_dict())
    got = prunelab.score(model, "grasp", batch=(x, y))
    want = prunelab.score(twin, "grasp", batch=(x, y))
    assert any(bool(v.any()) for v in want.values())
    for n in want:
        torch.testing.assert_close(got[n], want[n], rtol=0, atol=0)
    assert isinstance(model.act, nn.Hardsigmoid)  # the model is left as it was


def test_an_operation_without_second_derivatives_is_named_in_one_line():
    x, y = _data()
    with pytest.raises(ValueError, match=r"grasp needs second derivatives .* none for aten::hardsigmoid_backward"):
        prunelab.score(RawHardsigmoid(), "grasp", batch=(x, y))
