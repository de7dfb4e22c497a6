"""Pruning criteria: one module per family, each criterion a plain function registered by name.

``basic``: random, magnitude. ``gradient``: snip, iterative_snip, grasp, grasp_abs. ``synflow``:
synflow. ``structured``: l1_channel, l2_channel, linf_channel, lneginf_channel, random_channel,
hybrid. Published since (issue 31): ``progressive``: force, iter_snip_dejorge; ``prospr``: prospr;
``phew``: phew; ``lamp``: lamp; ``ntk_sap``: ntk_sap; ``path_kernel``: px;
``node_path_balance``: npb. See :mod:`prunelab.scores.registry` for the contract a criterion fulfils
and how to add one.
"""

from prunelab.scores import (  # noqa: F401  (registers the criteria)
    basic,
    gradient,
    lamp,
    node_path_balance,
    ntk_sap,
    path_kernel,
    phew,
    progressive,
    prospr,
    structured,
    synflow,
)
from prunelab.scores.registry import METHODS, Method, Scores, get_method, methods, register_method

__all__ = ["METHODS", "Method", "Scores", "get_method", "methods", "register_method"]
