"""The optimizer side of sparse execution (:mod:`prunelab.training.sparse_kernels`): one flat parameter per
optimizer parameter group holding the sparse layers' kept values and their biases (:class:`Pack`), and the
translation of optimizer state between the packed and the dense shapes and numbering.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import nn

if TYPE_CHECKING:
    from prunelab.training.sparse_kernels import SparseLinear

class Pack:
    """One flat parameter for the kept values of sparse layers and their biases (``members``: ``(dense
    parameter, layer, "weight" or "bias")``), which takes their place in one optimizer parameter group:
    the optimizer's per-tensor loop then runs once where it ran once per weight and bias (SGD with momentum
    over LeNet-300-100's six small tensors: 65 us against 27 us for one). Per-value optimizer state is the
    members' state at the kept positions, concatenated; the optimizer's ``state_dict`` shows it in the dense
    shapes and order (:meth:`SparseExecution._dense_state_dict`)."""

    def __init__(self, members: list[tuple[torch.Tensor, SparseLinear, str]]):
        self.members = members
        self.spans: list[tuple[int, int]] = []
        parts, at = [], 0
        with torch.no_grad():
            for dense, layer, kind in members:
                part = layer.gather(dense.detach()) if kind == "weight" else dense.detach().clone()
                self.spans.append((at, at + part.numel()))
                at += part.numel()
                parts.append(part)
            flat = torch.cat(parts) if parts else members[0][0].new_zeros(0)
        self.flat = nn.Parameter(flat, requires_grad=members[0][0].requires_grad)
        base = self.flat.detach()
        self.views = {span: base[span[0]:span[1]] for span in self.spans}
        for (dense, layer, kind), (a, b) in zip(members, self.spans):
            if kind == "weight":
                layer.values_slot = (self, a, b)
            else:
                layer.bias_slot, layer.bias = (self, a, b), dense

    def pack_state(self, states: list[dict]) -> dict:
        """The members' optimizer states (dense shapes) as the flat parameter's."""
        out = {}
        for key, value in states[0].items():
            if per_weight(value, self.members[0][0]):
                parts = [s[key].to(dense.device) for s, (dense, _, _) in zip(states, self.members)]
                out[key] = torch.cat([layer.gather(v) if kind == "weight" else v.reshape(-1)
                                      for v, (_, layer, kind) in zip(parts, self.members)])
            else:
                out[key] = value
        return out

    def unpack_state(self, state: dict) -> list[dict]:
        """The flat parameter's optimizer state as each member's, in its dense shape."""
        out = []
        for (dense, layer, kind), (a, b) in zip(self.members, self.spans):
            out.append({key: (layer.scatter(v[a:b]) if kind == "weight" else v[a:b].clone().view(dense.shape))
                        if per_weight(v, self.flat) else v for key, v in state.items()})
        return out

    def write_back(self) -> None:
        """The flat parameter into the members' dense tensors; under ``torch.no_grad()``."""
        flat = self.flat
        for (dense, layer, kind), (a, b) in zip(self.members, self.spans):
            if kind == "weight":  # scatter_: half the time of index_copy_ (4 against 9 us on a 300x784 layer)
                dense.view(-1).scatter_(0, layer.structure.flat, flat[a:b])
            else:
                dense.view(-1).copy_(flat[a:b])


def same_state(states: list[dict], members) -> bool:
    """Whether the members' optimizer states can be one: all with or all without state, the same keys, equal
    values where a value is not per weight (Adam's ``step``)."""
    if not any(states):
        return True
    if not all(states) or any(s.keys() != states[0].keys() for s in states):
        return False
    for key, value in states[0].items():
        for s, (dense, _, _) in zip(states[1:], members[1:]):
            other = s[key]
            if per_weight(other, dense) != per_weight(value, members[0][0]):
                return False
            if per_weight(other, dense):
                continue
            if isinstance(value, torch.Tensor) or isinstance(other, torch.Tensor):
                if not (isinstance(value, torch.Tensor) and isinstance(other, torch.Tensor)
                        and value.shape == other.shape and torch.equal(value.cpu(), other.cpu())):
                    return False
            elif value != other:
                return False
    return True


def numbered_state(state_dict: dict, per_group: list[list[dict | None]]) -> dict:
    """``state_dict`` with its parameters numbered anew in the order of ``per_group`` (each group's parameters'
    states, None for one without state), as ``torch.optim.Optimizer.state_dict`` numbers them."""
    state, groups, n = {}, [], 0
    for gi, states in enumerate(per_group):
        ids = list(range(n, n + len(states)))
        state.update({i: s for i, s in zip(ids, states) if s is not None})
        groups.append({**state_dict["param_groups"][gi], "params": ids})
        n += len(states)
    return {**state_dict, "state": state, "param_groups": groups}


def per_weight(value: Any, param: torch.Tensor) -> bool:
    return isinstance(value, torch.Tensor) and value.shape == param.shape and value.dim() > 0
