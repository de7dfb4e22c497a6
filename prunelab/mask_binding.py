"""How an applied mask stays with its model: through copies, saves, loads and device moves.

:meth:`prunelab.Mask.apply` binds a mask to a model; :func:`remove_mask` unbinds it. While bound,
pruned weights stay exactly 0.0 through training with any elementwise optimizer, and the binding
travels with the model:

* ``copy.deepcopy(model)`` and ``torch.save(model)`` / ``torch.load(..., weights_only=False)`` of the
  whole module: the binding is an ordinary module hook object, so it is copied and pickled with the
  module; the copy re-arms itself on its first forward pass (zeroing its pruned weights once).
* ``model.load_state_dict(state)``: a load post-hook zeroes the pruned entries again at once, so
  rewinding by ``load_state_dict`` is safe (``assign=True`` included).
* ``model.to(...)`` with ``torch.__future__.set_swap_module_params_on_conversion(True)`` (or any
  other way a parameter is replaced by a new tensor): the next forward pass notices the new tensor
  and arms it.
* ``state_dict()`` keys are those of the unmasked model (no ``weight_orig``, no ``parametrizations``):
  checkpoints load into plain models.

The cost is one in-place multiply of each masked gradient by the mask (a post-accumulate-grad hook,
which runs before DDP's all-reduce hook, so the averaged gradients are masked too), and a few
dictionary look-ups per module per forward pass. A weight that is 0 and always receives a 0
gradient stays exactly 0 under SGD (momentum, Nesterov, weight decay: every term is a multiple of
the weight or the gradient), Adam and AdamW. A NaN or infinite gradient at a pruned position gives
NaN there (``nan * 0``); such a step is already divergent, and AMP's loss scaler skips it.

Direct in-place writes to a weight (``p.data.copy_(...)``, ``nn.init`` on a parameter) bypass the
binding; call ``mask.apply(model)`` again after them.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping

import torch
from torch import nn

__all__ = ["applied_mask", "bind", "remove_mask", "unbound_copy"]


class _GradMask:
    """Post-accumulate-grad hook: multiply the parameter's gradient by the keep-mask, in place.

    A multiply by a float copy of the mask (cached per device and dtype) rather than a masked fill:
    on the CPU it is about 10x cheaper for the same result on finite gradients.
    """

    def __init__(self, keep: torch.Tensor):
        self.keep = keep
        self._as: dict[tuple[torch.device, torch.dtype], torch.Tensor] = {}

    def __call__(self, param: torch.Tensor) -> None:
        g = param.grad
        if g is None:
            return
        key = (g.device, g.dtype)
        k = self._as.get(key)
        if k is None:
            k = self._as[key] = self.keep.to(device=g.device, dtype=g.dtype)
        if g.layout != torch.strided:  # sparse gradients (nn.Embedding(sparse=True))
            param.grad = (g * k).coalesce() if g.is_sparse else g * k
        else:
            g.mul_(k)


class _Binding:
    """The keep-masks of one module's own parameters, installed on that module as a forward pre-hook
    and a ``load_state_dict`` post-hook.

    It is copied and pickled with the module, without its record of which tensors it armed: a copy
    arms the copy's own parameters on its first forward pass. A parameter counts as armed while it is
    the same Python object (``id``) over the same tensor (``_cdata``) and still holds our hook:
    ``swap_tensors`` keeps the object but replaces the tensor, and its gradient hooks with it. No
    reference to the parameter is kept (``swap_tensors`` refuses tensors that have weak references).
    """

    def __init__(self, keep: Mapping[str, torch.Tensor]):
        self.keep = {n: k.detach().to("cpu", torch.bool) for n, k in keep.items()}
        self._reset()

    def _reset(self) -> None:
        self._pruned = {n: not bool(k.all()) for n, k in self.keep.items()}
        self._armed: dict[str, tuple] = {}  # local name -> (id(param), param._cdata, hook handle or None)

    def __getstate__(self) -> dict:
        return {"keep": self.keep}

    def __setstate__(self, state: dict) -> None:
        self.keep = state["keep"]
        self._reset()

    def arm(self, module: nn.Module, zero: bool = False) -> None:
        """Zero and hook every parameter not armed yet; with ``zero``, zero every pruned entry again."""
        for name, keep in self.keep.items():
            p = module._parameters.get(name)
            if not isinstance(p, nn.Parameter):
                continue  # temporarily replaced (torch.func.functional_call) or deleted
            armed = self._armed.get(name)
            fresh = (
                armed is None
                or armed[0] != id(p)
                or armed[1] != p._cdata
                or (armed[2] is None and p.requires_grad and self._pruned[name])
                or (armed[2] is not None and armed[2].id not in (p._post_accumulate_grad_hooks or ()))
            )
            if (fresh or zero) and self._pruned[name]:
                with torch.no_grad():
                    p.masked_fill_(~keep.to(p.device), 0.0)
            if fresh:
                if armed is not None and armed[2] is not None:
                    armed[2].remove()
                if p._post_accumulate_grad_hooks is not None:
                    # After swap_tensors the hook dict stays on the Python object but is no longer
                    # registered with the new tensor; setting it again registers it (idempotent).
                    p._post_accumulate_grad_hooks = p._post_accumulate_grad_hooks
                hook = None
                if p.requires_grad and self._pruned[name]:
                    hook = p.register_post_accumulate_grad_hook(_GradMask(keep))
                self._armed[name] = (id(p), p._cdata, hook)

    def disarm(self) -> None:
        for _, _, hook in self._armed.values():
            if hook is not None:
                hook.remove()
        self._armed = {}

    # the two module hooks (bound methods: copied and pickled together with their instance)
    def before_forward(self, module: nn.Module, args) -> None:
        self.arm(module)

    def after_load(self, module: nn.Module, incompatible_keys) -> None:
        self.arm(module, zero=True)


class _ArmAll:
    """Forward pre-hook of the model a mask was applied to: arms every binding below it.

    An owner's own pre-hook is not enough: ``nn.MultiheadAttention`` reads ``out_proj.weight``
    without calling ``out_proj``. References to the owners are copied and pickled with the model,
    so a copy's hook arms the copy's modules.
    """

    def __init__(self, owners: list[tuple[nn.Module, _Binding]]):
        self.owners = owners

    def __call__(self, module: nn.Module, args) -> None:
        for owner, binding in self.owners:
            binding.arm(owner)


def _bindings(module: nn.Module) -> list[tuple[int, _Binding]]:
    return [
        (key, hook.__self__)
        for key, hook in module._forward_pre_hooks.items()
        if isinstance(getattr(hook, "__self__", None), _Binding)
    ]


def remove_mask(model: nn.Module) -> None:
    """Unbind the mask applied to ``model`` (and its submodules); the weights stay as they are."""
    for module in model.modules():
        for key, hook in list(module._forward_pre_hooks.items()):
            if isinstance(hook, _ArmAll):
                del module._forward_pre_hooks[key]
        for key, binding in _bindings(module):
            binding.disarm()
            del module._forward_pre_hooks[key]
            for k, hook in list(module._load_state_dict_post_hooks.items()):
                if getattr(hook, "__self__", None) is binding:
                    del module._load_state_dict_post_hooks[k]


def bind(model: nn.Module, masks: Mapping[str, torch.Tensor]) -> None:
    """Bind ``{parameter name: bool keep-mask}`` to ``model`` (replacing any earlier binding), zero the
    pruned weights and hook their gradients. The caller has checked names and shapes."""
    remove_mask(model)
    by_module: dict[str, dict[str, torch.Tensor]] = {}
    for name, keep in masks.items():
        owner, _, local = name.rpartition(".")
        by_module.setdefault(owner, {})[local] = keep
    owners = []
    for owner, keep in by_module.items():
        module = model.get_submodule(owner)
        binding = _Binding(keep)
        module.register_forward_pre_hook(binding.before_forward)
        module.register_load_state_dict_post_hook(binding.after_load)
        binding.arm(module)
        owners.append((module, binding))
    model.register_forward_pre_hook(_ArmAll(owners))


def applied_mask(model: nn.Module) -> dict[str, torch.Tensor] | None:
    """``{parameter name: keep-mask}`` bound to ``model``, or None when no mask is applied."""
    out: dict[str, torch.Tensor] = {}
    for module_name, module in model.named_modules():
        for _, binding in _bindings(module):
            for local, keep in binding.keep.items():
                out[f"{module_name}.{local}" if module_name else local] = keep
    return out or None


def unbound_copy(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` without its applied mask: what an analysis that sets weights of its
    own (SynFlow's |w| network, reachability) works on, so the copy never re-zeroes them."""
    net = copy.deepcopy(model)
    remove_mask(net)
    return net
