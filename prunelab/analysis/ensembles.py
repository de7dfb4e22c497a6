"""Predictions of several sub-networks: agreement and ensembles (Paganini & Forde 2020,
App. D, Table 2 and Fig. 14)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import nn


def _batches(batches) -> Iterable[tuple[torch.Tensor, torch.Tensor | None]]:
    for b in batches:
        if isinstance(b, torch.Tensor):
            yield b, None
        elif isinstance(b, Sequence) and len(b) >= 1 and isinstance(b[0], torch.Tensor):
            yield b[0], (b[1] if len(b) > 1 and isinstance(b[1], torch.Tensor) else None)
        else:
            raise ValueError(f"batches must yield (inputs, targets) pairs or input tensors, got {type(b).__name__}")


@torch.no_grad()
def predictions(model: nn.Module, batches, device: str | torch.device = "cpu", return_labels: bool = False):
    """The logits of ``model`` on every batch, concatenated on the CPU.

    ``batches``: an iterable of ``(inputs, targets)`` (a test loader) or of input tensors. The model
    runs in eval mode on ``device``; its modes and device are restored afterwards. With
    ``return_labels=True`` returns ``(logits, labels)``.
    """
    device = torch.device(device)
    first = next(model.parameters(), None)
    home = first.device if first is not None else device
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    if home != device:
        model.to(device)
    dtype = first.dtype if first is not None and first.is_floating_point() else None
    logits, labels = [], []
    try:
        for x, y in _batches(batches):
            x = x.to(device, dtype) if (dtype is not None and x.is_floating_point()) else x.to(device)
            logits.append(model(x).detach().cpu())
            if y is not None:
                labels.append(y.detach().cpu())
    finally:
        if home != device:
            model.to(home)
        for m, flag in modes:
            m.train(flag)
    if not logits:
        raise ValueError("predictions got no batch")
    out = torch.cat(logits)
    if return_labels:
        if len(labels) != len(logits):
            raise ValueError("return_labels=True needs (inputs, targets) batches")
        return out, torch.cat(labels)
    return out


def _classes(pred: torch.Tensor) -> torch.Tensor:
    pred = torch.as_tensor(pred)
    if pred.dim() == 2:
        return pred.argmax(dim=1)
    if pred.dim() == 1:
        return pred
    raise ValueError(f"predictions must be logits (examples x classes) or class indices, got shape {tuple(pred.shape)}")


def agreement(pred_a: torch.Tensor, pred_b: torch.Tensor) -> float:
    """Fraction of examples on which two networks predict the same class (Paganini & Forde 2020, App. D, Fig. 14).

    Each argument is logits (examples x classes) or predicted class indices."""
    a, b = _classes(pred_a), _classes(pred_b)
    if a.shape != b.shape or a.numel() == 0:
        raise ValueError(f"predictions of different or empty lengths: {tuple(a.shape)} and {tuple(b.shape)}")
    return float((a.cpu() == b.cpu()).to(torch.float64).mean())


def agreement_matrix(logits: Sequence[torch.Tensor]) -> torch.Tensor:
    """Pairwise :func:`agreement` of ``k`` networks: a symmetric ``k x k`` float64 matrix, ones on the diagonal."""
    k = len(logits)
    if k == 0:
        raise ValueError("agreement_matrix needs at least one set of predictions")
    out = torch.ones(k, k, dtype=torch.float64)
    for i in range(k):
        for j in range(i + 1, k):
            out[i, j] = out[j, i] = agreement(logits[i], logits[j])
    return out


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Fraction of examples whose highest logit is the label."""
    pred = _classes(logits).cpu()
    labels = torch.as_tensor(labels).cpu()
    if pred.shape != labels.shape or labels.numel() == 0:
        raise ValueError(f"{pred.numel()} predictions for {labels.numel()} labels")
    return float((pred == labels).to(torch.float64).mean())


def ensemble_accuracy(logits: Sequence[torch.Tensor], labels: torch.Tensor) -> float:
    """Accuracy of averaging the softmax probabilities of several networks (Paganini & Forde 2020, App. D, Table 2:
    "averaging all their predictions"); computed in float64."""
    if len(logits) == 0:
        raise ValueError("ensemble_accuracy needs at least one set of logits")
    shapes = {tuple(torch.as_tensor(l).shape) for l in logits}
    if len(shapes) != 1 or len(next(iter(shapes))) != 2:
        raise ValueError(f"ensemble_accuracy needs logits of one shape (examples x classes), got {sorted(shapes)}")
    probs = torch.stack([torch.as_tensor(l).detach().cpu().to(torch.float64).softmax(dim=1) for l in logits])
    return accuracy(probs.mean(dim=0), labels)
