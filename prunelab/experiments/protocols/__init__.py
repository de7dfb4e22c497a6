"""The protocols of the papers and what comes next, one class each, in one registry (:data:`PROTOCOLS`).

===========  ==========  ==============================================================================
command      kind        what it does
===========  ==========  ==============================================================================
``train``    dense       the dense network of a replicate, shared by every other protocol
``run``      prune       prune at step t (init, early, after training), ablate, retrain (Frankle et al. 2021,
                         2021, §3, §5, §6)
``lottery``  lottery     lottery-ticket rewinding and IMP (Frankle et al. 2021, §3; Paganini & Forde 2020)
``gradual``  gradual     gradual magnitude pruning during training (Zhu & Gupta 2018)
``set``      set         sparse evolutionary training (Mocanu et al. 2018)
``rigl``     rigl        rigging the lottery (Evci et al. 2020)
===========  ==========  ==============================================================================

A new protocol is one module: a frozen dataclass of its hyperparameters (with its checks), and a subclass
of :class:`Protocol` naming it as ``hparams`` and its TOML table as ``section``, registered with
:func:`register_protocol`. The CLI grows a command, configs and sweeps accept its section and
``protocol = ...``, ``ls``/``show`` describe its runs and the report labels them (:meth:`Protocol.label`);
nothing else is edited. ``tests/test_toy_protocol.py`` does exactly that.
"""

from prunelab.experiments.protocols.base import (
    PROTOCOLS,
    Protocol,
    get_protocol,
    protocol_of_kind,
    register_protocol,
    unregister_protocol,
)
from prunelab.experiments.protocols.dense import Dense
from prunelab.experiments.protocols.lottery import (
    LOTTERY,
    Lottery,
    check_lottery,
    lottery,
    lottery_id,
    lottery_level,
)
from prunelab.experiments.protocols.prune_at import (
    PRUNE_AT_STEP,
    PruneAtStep,
    check_prune,
    find_mask,
    prune_at_step,
    prune_id,
)
from prunelab.experiments.protocols.sparse import Gradual, RigLProtocol, SetProtocol

for _protocol in (Dense(), PRUNE_AT_STEP, LOTTERY, Gradual(), SetProtocol(), RigLProtocol()):
    register_protocol(_protocol)

__all__ = [
    "PROTOCOLS",
    "Dense",
    "Gradual",
    "Lottery",
    "Protocol",
    "PruneAtStep",
    "RigLProtocol",
    "SetProtocol",
    "check_lottery",
    "check_prune",
    "find_mask",
    "get_protocol",
    "lottery",
    "lottery_id",
    "lottery_level",
    "protocol_of_kind",
    "prune_at_step",
    "prune_id",
    "register_protocol",
    "unregister_protocol",
]
