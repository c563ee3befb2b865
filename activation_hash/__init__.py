"""activation-hash: ReLU networks as hash encoders.

Every input of a ReLU network falls in one linear region, named by the on/off pattern of its
ReLU-like units (its *neural code*). This package records those codes bit-packed during the
forward pass and computes the statistics of the hash-encoder view on top.

The main names are importable from the top level; the heavier ones (FAISS, scikit-learn) are
imported on first use. (``ah.collisions`` is the module; :func:`count_collisions` counts.)::

    import activation_hash as ah
    cb = ah.extract_codes(model, loader)             # CodeBook: int64 [N, W] codes + Layout
    ah.count_collisions(cb).redundancy               # (N - distinct codes) / N
    dist, idx = ah.hamming_topk(test_cb, cb, k=9)    # exact Hamming K-NN
    ah.categorize(cb, test_cb)                       # K-NN / K-Means / logistic-regression probes
"""
from __future__ import annotations

import importlib

from activation_hash import ops
from activation_hash import record as _record_module
from activation_hash.ops import backend, pack_signs, relu_mask_backward, relu_pack, unpack_bits

# The function, not its module of the same name: bound once here, so that later imports of
# activation_hash.record (already loaded) leave ``ah.record`` as it is.
record = _record_module.record

__version__ = "0.1.0"

# name -> submodule that defines it (imported lazily by __getattr__)
_LAZY = {
    "Layout": "layout",
    "ReLU": "nn", "LeakyReLU": "nn", "convert": "nn",
    "Recorder": "record", "Site": "record", "find_sites": "record",
    "CodeBook": "codes", "as_codes": "codes", "extract_codes": "extract",
    "model_fingerprint": "extract",
    "count_collisions": "collisions", "CollisionReport": "collisions",
    "CollisionCounter": "collisions",
    "hamming_distance": "hamming", "hamming_topk": "hamming", "hamming_consecutive": "hamming",
    "CodeIndex": "index",
    "categorize": "probes", "CategorizationReport": "probes", "knn_accuracy": "probes",
    "kmeans_accuracy": "probes", "logreg_accuracy": "probes",
    "PlaneRegions": "slices", "plane_regions": "slices", "sampled_plane_regions": "slices",
    "regions_in_box": "slices", "region_map": "slices",
}

__all__ = ["backend", "ops", "record", "pack_signs", "relu_pack", "relu_mask_backward", "unpack_bits",
           "__version__", *_LAZY]


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'activation_hash' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"activation_hash.{module}"), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
