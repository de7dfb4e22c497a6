"""GPU bugs found on the CPU: host synchronizations and host tensors meeting device tensors (DeviceGuard).

The guard is first checked on hand-written snippets whose syncs and mismatches are counted by hand; then
the training step, every criterion's scoring and every criterion's pruning run under it. The bounds are
the counts of the code as it is; lower them when a sync goes away (the counts are printed, ``-s``).
"""

from __future__ import annotations

import pytest
import torch
from conftest import make_learnable_images
from torch import nn

import prunelab
from prunelab import data
from prunelab.testing import DeviceGuard, host_syncs_per_step
from prunelab.training import TrainSettings, train

# Host syncs per training step measured by the stand-in (SGD and Adam alike): the finiteness check of the
# loss, which the trainer does every step on the CPU and every 25 steps on CUDA. It was 4 before the
# augmentation draws moved to one non-blocking copy per epoch (3 blocking copies per step).
SYNCS_PER_STEP = 1
# Host syncs of one prunelab.prune call (selection and removal work on the CPU mask, by design: the mask
# lives on the host): per criterion family, at most, with 2 iterations; each iteration adds one more for the
# check that the scores are not all zero (which would prune in layer order). Scoring syncs only where noted below.
PRUNE_SYNCS = {"unstructured": 42, "structured": 122}
SCORE_SYNCS = {"random": 3, "random_channel": 3, "synflow": 1,  # CPU-seeded draws copied over; R's finiteness
               "phew": 3,  # PHEW's walks are drawn on the CPU: each covered tensor is copied to the host once
               # NTK-SAP draws its weights, perturbations and noise on the CPU from its seed (the same scores on
               # every device) and copies them over: two per covered tensor, the noise and the finiteness check
               "ntk_sap": 16,
               "npb": 10,  # NPB solves each layer on the host (closed form or HiGHS): its path counts go there
               "px": 3}  # PX's two linearized passes: the batch's ReLU patterns and the finiteness of R


def test_guard_counts_what_it_is_shown():
    with DeviceGuard() as g:
        d = torch.ones(3, device=g.device)  # on the stand-in device
        h = torch.zeros(3)  # no device: the host
        assert d.device == g.device and h.device == torch.device("cpu")
        d.sum().item()  # 1 item
        if (d > 0).any():  # 1 bool
            pass
        d.tolist()  # 1 tolist
        f"{d.sum():.1f}"  # 1 print (the item inside it is not counted again)
        torch.nonzero(d)  # 1 nonzero
        d[d > 0]  # 1 boolean index
        d.cpu()  # 1 copy to host
        h.to(g.device)  # 1 blocking copy to device
        d + h  # 1 mismatch
    assert sorted(e.what for e in g.syncs) == sorted(
        ["item", "bool", "tolist", "print", "nonzero", "boolean index", "copy to host", "blocking copy to device"])
    assert len(g.mismatches) == 1 and "add" in g.mismatches[0].what
    assert all("test_device_guard.py:" in e.where for e in g.events), [str(e) for e in g.events]


def test_guard_lets_correct_code_through():
    with DeviceGuard() as g:
        d = torch.ones(3, device=g.device)
        h = torch.zeros(3)
        step = torch.tensor(1.0)  # a host scalar (Adam keeps its step count so)
        h.sum().item()  # reading a host tensor is no sync
        d * step  # 0-dim host tensors mix with device tensors on CUDA too
        h.to(g.device, non_blocking=True)
        torch.zeros_like(d) + d.new_ones(3) + torch.zeros(3, device=d.device)
        model = nn.Linear(3, 2, device=g.device)
        model(d.view(1, 3)).sum().backward()
    assert g.events == []


def test_guard_strict_raises_at_the_first_finding():
    with pytest.raises(RuntimeError, match="DeviceGuard: sync item"), DeviceGuard(strict=True) as g:
        torch.ones(2, device=g.device).sum().item()


def tiny_cifar_like():
    train_set = make_learnable_images(64, 4, 8, seed=0)
    test_set = make_learnable_images(32, 4, 8, seed=1)
    return data.from_tensors(train_set, test_set, augment="shift")


def conv_net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                         nn.Linear(4 * 8 * 8, 4))


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_training_step_host_syncs_and_devices(optimizer):
    ds = tiny_cifar_like()
    settings = dict(batch_size=8, lr=0.01, momentum=0.9, optimizer=optimizer)

    def run(steps):
        model = conv_net()
        mask = prunelab.prune(model, "random", 0.5, seed=0)
        train(model, ds, TrainSettings(train=f"{steps}it", **settings), mask=mask, device=DeviceGuard.device)

    per_step, guard = host_syncs_per_step(run, 2, 6)
    print(f"\n{optimizer}: {per_step:g} host syncs per training step (stand-in)\n{guard.summary()}")
    assert guard.mismatches == []
    assert per_step <= SYNCS_PER_STEP


def _scoring_case():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1),
                          nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))
    x = torch.randn(6, 3, 6, 6)
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    return model, x, y


@pytest.mark.filterwarnings("ignore::prunelab.scores.batching.MicroBatchWarning")  # BatchNorm: said elsewhere
@pytest.mark.parametrize("method", list(prunelab.methods()))
def test_scoring_and_pruning_every_criterion_on_the_device(method):
    model, x, y = _scoring_case()
    meta = prunelab.get_method(method)
    with DeviceGuard() as g:
        model.to(g.device)
        batch = (x.to(g.device), y.to(g.device))
        before = len(g.syncs)
        options = {"score_batch_size": 4} if meta.needs_data else {}
        budget = {"sparsity": 0.5} if "sparsity" in meta.options else {}  # PHEW builds its mask to a budget
        prunelab.score(model, method, batch=batch, input_shape=(3, 6, 6), **options, **budget)
        scored = len(g.syncs) - before
        prunelab.prune(model, method, 0.5, batch=batch, input_shape=(3, 6, 6), iterations=2, **options)
        pruned = len(g.syncs) - before - scored
    print(f"\n{method}: {scored} host syncs scoring, {pruned} pruning\n{g.summary()}")
    assert g.mismatches == []
    assert scored <= SCORE_SYNCS.get(method, 0)
    # pruning scores once per iteration (2 here): the criterion's own syncs each time, and the selection's
    assert pruned <= PRUNE_SYNCS["structured" if meta.structured else "unstructured"] + 2 * SCORE_SYNCS.get(method, 0)
