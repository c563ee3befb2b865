"""activation-hash: ReLU networks as hash encoders.

Every input of a ReLU network falls in one linear region, named by the on/off pattern of its
ReLU-like units (its *neural code*). This package records those codes bit-packed during the
forward pass and computes the statistics of the hash-encoder view on top.
"""
from activation_hash import ops
from activation_hash.ops import backend, pack_signs, relu_mask_backward, relu_pack, unpack_bits

__version__ = "0.1.0"

__all__ = [
    "backend",
    "ops",
    "pack_signs",
    "relu_pack",
    "relu_mask_backward",
    "unpack_bits",
    "__version__",
]
