"""Find GPU bugs on a machine without a GPU: host synchronizations and tensors left on the host.

On CUDA, ``loss.item()``, ``if (x > 0).any():``, ``float(t)``, ``t.tolist()``, ``torch.nonzero(t)``,
boolean indexing, ``torch.equal`` or printing a tensor make the host wait for the GPU to drain its
queue; a tensor made without ``device=`` lives on the host and an op that mixes it with a GPU tensor
fails. On the CPU all of this runs silently. :class:`DeviceGuard` watches a block of CPU code at both
levels torch offers: a ``TorchFunctionMode`` (the Python calls: ``tolist``, ``numpy``, ``cpu``,
``__format__``, factory functions and their ``device`` argument) and a ``TorchDispatchMode`` (the ATen
ops that synchronize on CUDA: ``_local_scalar_dense`` behind ``item``/``bool``/``float``,
``is_nonzero``, ``nonzero``, ``masked_select``, ``unique``, ``equal``, boolean ``index``). Each finding
is an :class:`Event` with the first line of user code that caused it.

Device placement is tracked by tagging tensors. The code under test runs on ``cpu:0``, the stand-in for
``cuda:0`` (:attr:`DeviceGuard.device`); plain ``"cpu"`` is the host. A tensor made by a factory
function (``torch.zeros``, ``torch.tensor``, ``torch.from_numpy``, ...) without ``device=`` or with
``device="cpu"``, or by ``.cpu()``, is a host tensor; one made on or moved ``.to()`` the stand-in, or
computed from a device tensor, is a device tensor, and inside the guard its ``.device`` is ``cpu:0``;
tensors made before the guard are untagged and never reported. Reading a device tensor on the host is a
synchronization (reading a host tensor, such as the step count Adam keeps on the host, is not). An op
that takes a device tensor and a host tensor of one or more dimensions is a device mismatch (CUDA
accepts 0-dimensional host tensors). A blocking ``.to(device)`` of a host tensor is a synchronization
too (the copy waits for the stream); ``non_blocking=True`` is taken to be from pinned memory and not
counted. Limits: a synchronization inside a C++ kernel with no ATen op of its own is not seen, nor are
tensors made before the guard; on a real GPU, ``torch.cuda.set_sync_debug_mode("warn")`` sees what this
cannot (``bench/gpu_check.py``).

    with DeviceGuard() as guard:
        train(model, ds, settings, device=guard.device)   # cpu:0 stands in for cuda:0
    print(guard.summary()); assert not guard.mismatches

"""

from __future__ import annotations

import collections
import os
import traceback
from dataclasses import dataclass

import torch
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

_aten = torch.ops.aten
# ATen ops whose CUDA kernels copy a result to the host before they return.
SYNC_OPS = {
    _aten._local_scalar_dense.default: "item",
    _aten.is_nonzero.default: "bool",
    _aten.nonzero.default: "nonzero",
    _aten.masked_select.default: "masked_select",
    _aten.equal.default: "equal",
    _aten._unique2.default: "unique",
    _aten.unique_dim.default: "unique",
    _aten.unique_consecutive.default: "unique",
}
# Python-level calls that read a tensor on the host (the ATen ops they run, if any, are not counted again).
HOST_READS = {"item": "item", "__bool__": "bool", "__float__": "float", "__int__": "int", "__index__": "index",
              "tolist": "tolist", "numpy": "numpy", "__array__": "numpy", "__format__": "print",
              "__repr__": "print", "__str__": "print"}
_FACTORIES = {"zeros", "ones", "empty", "full", "arange", "linspace", "logspace", "eye", "rand", "randn", "randint",
              "randperm", "tensor", "as_tensor", "from_numpy", "scalar_tensor", "empty_strided", "normal"}
_MOVES = {"to", "cuda"}  # .cpu() is handled on its own
# Calls that take tensors of both places legitimately: copies across devices, and questions about a tensor.
_NO_COMPUTE = {"copy_", "cpu", "__get__", "__set__", "size", "dim", "numel", "data_ptr", "untyped_storage", "stride"}
_TAG = "_device_guard_place"
_HERE = os.path.abspath(__file__)
_TORCH = os.path.dirname(os.path.abspath(torch.__file__))


@dataclass(frozen=True)
class Event:
    kind: str  # "sync" or "mismatch"
    what: str  # item, bool, nonzero, tolist, print, ... or the op that mixed devices
    where: str  # file:line of the first frame outside torch and this module

    def __str__(self) -> str:
        return f"{self.kind} {self.what} at {self.where}"


def _where() -> str:
    for frame in reversed(traceback.extract_stack()[:-2]):
        path = os.path.abspath(frame.filename)
        if path != _HERE and not path.startswith(_TORCH) and "/contextlib.py" not in path:
            return f"{os.path.relpath(path)}:{frame.lineno}"
    return "?"


def _place(t) -> str | None:
    return getattr(t, _TAG, None) if isinstance(t, torch.Tensor) else None


def _tag(out, place: str | None) -> None:
    if place is None:
        return
    for t in tree_flatten(out)[0]:
        if isinstance(t, torch.Tensor):
            setattr(t, _TAG, place)


class _Dispatch(TorchDispatchMode):
    def __init__(self, guard: DeviceGuard):
        super().__init__()
        self.guard = guard

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        what = SYNC_OPS.get(func)
        if what is None and func in (_aten.index.Tensor, _aten.index_put_.default, _aten.index_put.default):
            indices = args[1] if len(args) > 1 else []
            if any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in indices or []):
                what = "boolean index"
        if what is not None and self.guard._quiet == 0 and _place(args[0]) == "device":
            self.guard._record("sync", what)
        return func(*args, **kwargs)


def _stand_in(device) -> bool | None:
    """True for the stand-in device ``cpu:0``, False for the host (``"cpu"``), None for no device at all."""
    if device is None:
        return None
    if isinstance(device, torch.Tensor):
        return _place(device) == "device"
    try:
        d = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        return None  # a dtype or memory format given positionally
    return d.type != "cpu" or d.index == 0


def _move_target(args, kwargs):
    """Where ``t.to(...)``/``t.cuda()`` sends a tensor: stand-in (True), host (False) or unchanged (None)."""
    if "device" in kwargs:
        return _stand_in(kwargs["device"])
    for a in args[1:]:
        if isinstance(a, (str, torch.device, torch.Tensor)):
            return _stand_in(a)
    return None


class DeviceGuard(TorchFunctionMode):
    """Record (or, with ``strict=True``, raise on) every host synchronization and device mismatch in a block.

    Run the code under test on :attr:`device` (``cpu:0``), which stands in for ``cuda:0``: inside the
    guard, a device tensor reports ``t.device == cpu:0``, so code that follows its tensors' devices keeps
    them apart from the host (plain ``"cpu"``). ``events`` lists the findings in order; ``syncs`` and
    ``mismatches`` are the two kinds; ``counts()`` groups them by kind, what and where. Not re-entrant.
    """

    device = torch.device("cpu", 0)

    def __init__(self, strict: bool = False):
        super().__init__()
        self.strict = strict
        self.events: list[Event] = []
        self._quiet = 0
        self._dispatch = _Dispatch(self)

    # ---- results ---------------------------------------------------------------------------------
    @property
    def syncs(self) -> list[Event]:
        return [e for e in self.events if e.kind == "sync"]

    @property
    def mismatches(self) -> list[Event]:
        return [e for e in self.events if e.kind == "mismatch"]

    def counts(self) -> collections.Counter:
        return collections.Counter(self.events)

    def summary(self) -> str:
        lines = [f"{len(self.syncs)} host syncs, {len(self.mismatches)} device mismatches"]
        lines += [f"  {n:5d} x {e}" for e, n in self.counts().most_common()]
        return "\n".join(lines)

    # ---- the modes -------------------------------------------------------------------------------
    def __enter__(self):
        # nn.Parameter(data) makes a new Python object without a torch-function call: copy the data's place
        # (deepcopy and pickling of a module go through it).
        self._parameter_new = new = nn.Parameter.__new__

        def parameter_new(cls, data=None, requires_grad=True):
            p = new(cls, data, requires_grad)
            _tag(p, _place(data))
            return p

        nn.Parameter.__new__ = parameter_new
        super().__enter__()
        self._dispatch.__enter__()
        return self

    def __exit__(self, *exc):
        self._dispatch.__exit__(*exc)
        nn.Parameter.__new__ = self._parameter_new
        return super().__exit__(*exc)

    def _record(self, kind: str, what: str) -> None:
        event = Event(kind, what, _where())
        self.events.append(event)
        if self.strict:
            raise RuntimeError(f"DeviceGuard: {event}")

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        owner = getattr(func, "__self__", None)
        if owner is torch._C.TensorBase.device:  # the ``t.device`` property
            return self.device if _place(args[0]) == "device" else func(*args, **kwargs)
        if owner is torch._C.TensorBase.data and getattr(func, "__name__", "") == "__set__":  # p.data = moved
            func(*args, **kwargs)
            _tag(args[0], _place(args[1]))
            return None
        name = getattr(func, "__name__", "")
        first = _place(args[0] if args else None)
        read = HOST_READS.get(name)
        if self._quiet == 0:
            self._check(name, args, kwargs, first, read)
        if read is not None:
            self._quiet += 1
        try:
            out = func(*args, **kwargs)
        finally:
            if read is not None:
                self._quiet -= 1
        place = self._place_of(name, args, kwargs)
        if (name in _MOVES or name == "cpu") and args and out is args[0] and place != _place(out):
            out = out.view_as(out)  # on CUDA the move makes a new tensor; here the source must keep its place
        _tag(out, place)
        return out

    def _check(self, name, args, kwargs, first, read) -> None:
        if read is not None and first == "device":
            self._record("sync", read)
        if name == "cpu" and first == "device":
            self._record("sync", "copy to host")
        if name in _MOVES and not kwargs.get("non_blocking"):
            target = True if name == "cuda" else _move_target(args, kwargs)
            if first == "host" and target:
                self._record("sync", "blocking copy to device")
            elif first == "device" and target is False:
                self._record("sync", "copy to host")
        if name in _MOVES or name in _NO_COMPUTE or name.startswith(("is_", "_has_")):
            return
        inputs = [t for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)]
        if any(_place(t) == "device" for t in inputs):
            host = [t for t in inputs if _place(t) == "host" and t.dim() > 0]
            if host:
                shape = tuple(host[0].shape)
                self._record("mismatch", f"{name} of a device tensor with a host tensor of shape {shape}")

    @staticmethod
    def _place_of(name: str, args, kwargs) -> str | None:
        if name == "cpu":
            return "host"
        if name in _MOVES:
            target = True if name == "cuda" else _move_target(args, kwargs)
            return _place(args[0]) if target is None else ("device" if target else "host")
        if kwargs.get("device") is not None:  # zeros_like(t, device=...), new_zeros(..., device=...)
            return "device" if _stand_in(kwargs["device"]) else "host"
        if name in _FACTORIES and not any(isinstance(a, torch.Tensor) for a in args):
            return "host"  # no device: the default device, the host
        places = {_place(t) for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)}
        if "device" in places:
            return "device"
        if "host" in places:
            return "host"
        return None


def host_syncs_per_step(run, short: int, long: int) -> tuple[float, DeviceGuard]:
    """Host syncs per training step, and the guard of the longer run: ``run(n)`` trains ``n`` steps.

    The difference between a ``long`` and a ``short`` run, divided by ``long - short``, leaves out what
    happens once per run (set-up, evaluation); a first, uncounted run of ``short`` steps fills the caches
    that live longer than one run (such as the normalization constants of a dataset on a device).
    """
    counts = []
    for n in (short, short, long):
        with DeviceGuard() as guard:
            run(n)
        counts.append(len(guard.syncs))
    return (counts[2] - counts[1]) / (long - short), guard
