"""Run under torchrun by tests/test_distributed.py: a short DDP training whose evaluations are split
across 2 CPU processes and all-reduced. Each rank saves its metrics; rank 0 also its network."""

import sys
from pathlib import Path

import torch
from conftest import make_learnable_images
from test_speed_options import convnet

from prunelab import data
from prunelab.training import TrainSettings, distributed, train


def main(out: str) -> None:
    torch.set_num_threads(1)
    device = distributed.init_from_env("cpu")
    # 513 test images, evaluated in batches of 256: 256, 256 and 1, so rank 1's part of the last is empty
    ds = data.from_tensors(make_learnable_images(64, 4, 8, seed=0), make_learnable_images(513, 4, 8, seed=1))
    model = convnet()
    result = train(model, ds, TrainSettings(train="1ep", batch_size=16, lr=0.05, eval_every="2it"), device=device,
                   evaluate_at_start=True)
    rank = distributed.rank()
    torch.save({"metrics": result.metrics, "state": model.state_dict() if rank == 0 else None},
               Path(out) / f"rank{rank}.pt")
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
