"""Runs the prunelab CLI and kills its own process with SIGKILL at a chosen point (fault injection).

    python tests/crash_harness.py POINT N [SIGNAL] -- prunelab-args...

SIGNAL (default KILL) is the signal sent instead, e.g. TERM (Slurm, timeout) or INT (Ctrl-C).

POINT is one of
  train       before the N-th optimizer step (counted over the whole process)
  prune       inside the N-th call of prunelab.prune, before it returns a mask
  checkpoint  halfway through writing the bytes of the N-th checkpoint file
  result      halfway through writing the N-th result.json
Nothing in prunelab itself knows about this: the harness wraps module functions from outside.
"""

import os
import signal
import sys

import prunelab
import prunelab.io
import prunelab.training.trainer as trainer
from prunelab.cli import main

SIGNAL = signal.SIGKILL


def die():
    os.kill(os.getpid(), SIGNAL)


def install(point: str, n: int) -> None:
    calls = {"count": 0}

    def nth() -> bool:
        calls["count"] += 1
        return calls["count"] == n

    if point == "train":
        real_set_lr = trainer.set_lr

        def set_lr(*args, **kwargs):
            if nth():
                die()
            return real_set_lr(*args, **kwargs)

        trainer.set_lr = set_lr
    elif point == "prune":
        real_prune = prunelab.prune

        def prune(*args, **kwargs):
            mask = real_prune(*args, **kwargs)
            if nth():
                die()
            return mask

        prunelab.prune = prune
    elif point in ("checkpoint", "result"):
        real_atomic_write = prunelab.io.atomic_write

        def atomic_write(path, write):
            name = os.path.basename(str(path))
            hit = name.endswith(".pt") and "mask" not in name if point == "checkpoint" else name == "result.json"
            if hit and nth():
                def half(f):
                    import io

                    buf = io.BytesIO()
                    write(buf)
                    data = buf.getvalue()
                    f.write(data[: len(data) // 2])
                    f.flush()
                    die()

                return real_atomic_write(path, half)
            return real_atomic_write(path, write)

        prunelab.io.atomic_write = atomic_write
    else:
        raise SystemExit(f"unknown point {point}")


if __name__ == "__main__":
    point, n = sys.argv[1], int(sys.argv[2])
    rest = sys.argv[3:]
    if rest[0] != "--":
        SIGNAL = signal.Signals[f"SIG{rest.pop(0)}"]
    assert rest[0] == "--"
    install(point, n)
    sys.exit(main(rest[1:]))
