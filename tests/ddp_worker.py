"""Run under torchrun by tests/test_distributed.py: one prune-at-init run with DDP over 2 CPU processes.

Each rank records what it holds after training (weights and mask) and whether it ran the criterion
(SNIP: every rank scores its share of the batch);
ranks other than 0 fail loudly if they try to write any file through prunelab's writers.
"""

import sys
from pathlib import Path

import torch

import prunelab.io
from prunelab.experiments import protocols
from prunelab.experiments.hparams import DataHparams, ModelHparams, PruneHparams
from prunelab.experiments.protocols import prune_at
from prunelab.experiments.runner import Replicate, Runner
from prunelab.experiments.store import RunStore
from prunelab.training import TrainSettings, distributed


def main(data_root: str, root: str, out: str) -> None:
    torch.set_num_threads(1)
    device = distributed.init_from_env("cpu")
    rank = distributed.rank()
    out = Path(out)
    if rank != 0:
        def refuse(path, *args, **kwargs):
            raise AssertionError(f"rank {rank} tried to write {path}")

        prunelab.io.atomic_write = refuse

    real_find_mask = prune_at.find_mask

    def counted_find_mask(*args, **kwargs):
        (out / f"pruned_by_rank{rank}").touch()
        return real_find_mask(*args, **kwargs)

    prune_at.find_mask = counted_find_mask

    class Recording(Runner):
        def run_training(self, model, rep, folder, **kwargs):
            result = super().run_training(model, rep, folder, **kwargs)
            mask = kwargs.get("mask")
            record = {"state": model.state_dict(), "mask": mask.state_dict() if mask is not None else None}
            torch.save(record, out / f"rank{rank}_{folder.name}.pt")
            return result

    runner = Recording(RunStore(root), data_root=data_root, device=device)
    training = TrainSettings(train="2ep", batch_size=16, lr=0.05, momentum=0.9)
    rep = Replicate(ModelHparams("lenet_300_100"), DataHparams("mnist"), training, seed=0)
    result = protocols.prune_at_step(runner, rep, PruneHparams(method="snip", sparsity=0.8, batch_per_class=2))
    assert result["status"] == "done", result
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(*sys.argv[1:4])
