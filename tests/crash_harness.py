"""Runs the prunelab CLI and kills its own process with SIGKILL at a chosen point (fault injection).

    python tests/crash_harness.py POINT N [SIGNAL] -- prunelab-args...

SIGNAL (default KILL) is the signal sent instead, e.g. TERM (Slurm, timeout) or INT (Ctrl-C).

POINT is one of
  train       before the N-th optimizer step (counted over the whole process)
  prune       inside the N-th call of prunelab.prune, before it returns a mask
  checkpoint  halfway through writing the bytes of the N-th checkpoint file
  result      halfway through writing the N-th result.json
  background  in the training thread, two steps after the checkpoint submitted at the N-th optimizer step
              began to be written by the background writer thread, which hangs halfway through its bytes
Nothing in prunelab itself knows about this: the harness wraps module functions from outside.
"""

import io
import os
import signal
import sys
import threading
import time

import prunelab
import prunelab.io
import prunelab.training.checkpoints as checkpoints
import prunelab.training.loop as loop
from prunelab.cli import main

SIGNAL = signal.SIGKILL


def die():
    os.kill(os.getpid(), SIGNAL)


def half_write(write, then):
    """A writer that writes the first half of what ``write`` would, flushes it, then calls ``then``."""
    def half(f):
        buf = io.BytesIO()
        write(buf)
        data = buf.getvalue()
        f.write(data[: len(data) // 2])
        f.flush()
        then()

    return half


def install(point: str, n: int) -> None:
    calls = {"count": 0}

    def nth() -> bool:
        calls["count"] += 1
        return calls["count"] == n

    if point == "train":
        real_set_lr, real_submit = loop.set_lr, checkpoints.BackgroundWriter.submit
        writers = set()

        def submit(self, *args, **kwargs):
            writers.add(self)
            return real_submit(self, *args, **kwargs)

        def set_lr(*args, **kwargs):
            if nth():
                for writer in writers:  # the kill falls between steps, after the earlier checkpoints are on disk
                    writer.flush()      # (a kill while a checkpoint is written: the "background" point)
                die()
            return real_set_lr(*args, **kwargs)

        loop.set_lr, checkpoints.BackgroundWriter.submit = set_lr, submit
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
                return real_atomic_write(path, half_write(write, die))
            return real_atomic_write(path, write)

        prunelab.io.atomic_write = atomic_write
    elif point == "background":
        install_background(n)
    else:
        raise SystemExit(f"unknown point {point}")


def install_background(n: int) -> None:
    """The writes of the checkpoint submitted at step ``n`` hang halfway; the training thread must go on
    (a writer that stalled training would hang here for good) and kills the process two steps later."""
    steps, after = [], []
    submitted, writing, in_writer = threading.Event(), threading.Event(), threading.local()
    real_set_lr, real_submit, real_atomic_write = loop.set_lr, checkpoints.BackgroundWriter.submit, \
        prunelab.io.atomic_write

    def set_lr(*args, **kwargs):
        if submitted.is_set():
            assert writing.wait(60), "the background write never started"
            after.append(1)
            if len(after) == 2:
                die()
        steps.append(1)
        return real_set_lr(*args, **kwargs)

    def submit(self, fn, *args, **kwargs):
        if len(steps) == n and not submitted.is_set():
            submitted.set()

            def hanging(*a, **kw):
                in_writer.hang = True
                return fn(*a, **kw)

            return real_submit(self, hanging, *args, **kwargs)
        return real_submit(self, fn, *args, **kwargs)

    def atomic_write(path, write):
        if not getattr(in_writer, "hang", False):
            return real_atomic_write(path, write)

        def hang():
            writing.set()
            time.sleep(600)

        return real_atomic_write(path, half_write(write, hang))

    loop.set_lr, checkpoints.BackgroundWriter.submit, prunelab.io.atomic_write = set_lr, submit, atomic_write


if __name__ == "__main__":
    point, n = sys.argv[1], int(sys.argv[2])
    rest = sys.argv[3:]
    if rest[0] != "--":
        SIGNAL = signal.Signals[f"SIG{rest.pop(0)}"]
    assert rest[0] == "--"
    if SIGNAL == signal.SIGINT:
        # Python leaves SIGINT ignored when it starts ignored (a background job of a non-interactive shell,
        # as CI may run us); Ctrl-C is what this harness stands in for, so Python's own handler is put back.
        signal.signal(signal.SIGINT, signal.default_int_handler)
    install(point, n)
    sys.exit(main(rest[1:]))
