"""Local sweep workers die with the sweep that started them.

A worker process whose sweep was killed (kill -9, the OOM killer, a closed login session) would go on
computing for nobody, holding its run's lock: ``ls`` says the run is running and a rerun of the sweep waits
for it. Two guards, each enough alone:

- on Linux, ``prctl(PR_SET_PDEATHSIG, SIGKILL)``: the kernel kills the worker the moment its parent dies
  (strictly, when the parent's thread that started it ends; a sweep starts its workers from the thread that
  waits for them, which lives as long as they are needed);
- everywhere, a daemon thread that looks at the parent's pid every :data:`PARENT_POLL` seconds and kills its
  own process when the parent is gone (an orphan is re-parented, so ``os.getppid()`` changes).

SIGKILL and not SIGTERM: nothing in a worker needs to run on the way out, and nothing can stop it. The run
store's locks are ``flock``s that the kernel releases when their holder dies (see ``RunStore.lock``), every
write goes through a temporary file and a rename, and a run killed at any point resumes bitwise
(tests/test_crash_safety.py), so a rerun of the sweep takes the half-done runs over and finishes them.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal
import sys
import threading
import time

PARENT_POLL = 0.5  # seconds between two looks at the parent's pid (the backstop of the death signal)
_PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


def die_with_parent(parent_pid: int) -> None:
    """Make this process end when ``parent_pid`` (the process that started it) ends; call it first thing in a
    worker. Checks once at once: a parent that died before the guards were set sends no signal."""
    _set_death_signal()
    if os.getppid() != parent_pid:
        _die()
    threading.Thread(target=_watch_parent, args=(parent_pid,), name="prunelab-parent-watch", daemon=True).start()


def _set_death_signal() -> bool:
    """The Linux death signal; False where there is none (other systems: the watch thread alone guards)."""
    if not sys.platform.startswith("linux"):
        return False
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0) != 0:
        return False  # the watch thread still guards; a refused prctl is no reason to stop a sweep
    return True


def _watch_parent(parent_pid: int) -> None:
    while os.getppid() == parent_pid:
        time.sleep(PARENT_POLL)
    _die()


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)
