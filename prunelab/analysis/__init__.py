"""Analyses of pruned networks: pure functions over models, masks, scores and predictions.

- :mod:`~prunelab.analysis.layerwise`: per-layer counts (Frankle et al. 2021, App. J).
- :mod:`~prunelab.analysis.collapse`: layer collapse, max and critical compression (Tanaka et al.
  2020, §3), neuron collapse (Frankle et al. 2021, §5, Fig. 5).
- :mod:`~prunelab.analysis.connectivity`: effective mask and sparsity (Frankle et al. 2021, App. M;
  Paganini & Forde 2020, App. B).
- :mod:`~prunelab.analysis.conservation`: conservation of synaptic saliency (Tanaka et al. 2020, §4).
- :mod:`~prunelab.analysis.similarity`: Jaccard similarity of masks, weight stability (Paganini &
  Forde §4-5).
- :mod:`~prunelab.analysis.ensembles`: prediction agreement and ensembles (Paganini & Forde 2020, App. D).
- :mod:`~prunelab.analysis.structure`: emergent input-channel structure (Paganini & Forde 2020, §4, App. E).
"""

from prunelab.analysis.collapse import critical_compression, layer_collapse, max_compression, neuron_collapse
from prunelab.analysis.connectivity import effective_mask, effective_parameter_ratio, effective_sparsity
from prunelab.analysis.conservation import conservation
from prunelab.analysis.ensembles import accuracy, agreement, agreement_matrix, ensemble_accuracy, predictions
from prunelab.analysis.layerwise import layer_labels, layer_table
from prunelab.analysis.similarity import jaccard, jaccard_distance, jaccard_per_layer, weight_stability
from prunelab.analysis.structure import emergent_structure, prob_slice_removed, slice_count_variance

__all__ = [
    "accuracy",
    "agreement",
    "agreement_matrix",
    "conservation",
    "critical_compression",
    "effective_mask",
    "effective_parameter_ratio",
    "effective_sparsity",
    "emergent_structure",
    "ensemble_accuracy",
    "jaccard",
    "jaccard_distance",
    "jaccard_per_layer",
    "layer_collapse",
    "layer_labels",
    "layer_table",
    "max_compression",
    "neuron_collapse",
    "predictions",
    "prob_slice_removed",
    "slice_count_variance",
    "weight_stability",
]
