"""Run under torchrun by tests/test_score_batching.py: every rank scores its share of one batch.

Each rank scores the same float64 networks and batch with ``distributed=True`` (with and without
micro-batches) and saves what it got; the test compares them with the single-process scores.
"""

import sys
from pathlib import Path

import torch
import torch.distributed as dist

import prunelab


def main(out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    sys.path.insert(0, str(Path(__file__).parent))
    from test_score_batching import DDP_CASES, ddp_case

    got = {}
    for key in DDP_CASES:
        model, batch, method, options = ddp_case(*key)
        got[key] = dict(prunelab.score(model, method, batch=batch, distributed=True, **options))
    torch.save(got, Path(out) / f"rank{dist.get_rank()}.pt")
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
