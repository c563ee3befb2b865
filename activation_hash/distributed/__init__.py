"""torch.distributed versions of extraction, exact collision counting and Hamming K-NN.

Every function works inside any initialised process group (the user's own
``init_process_group`` program, or ``torchrun`` through :func:`init_from_env`), gloo on CPUs or
NCCL on GPUs; every rank of the group must call it, with its own shard of the samples. Global
sample ``i`` is row ``i - offset[r]`` of rank ``r``, ranks in order (rank 0's rows first), as
:func:`shard_range` splits a dataset and :func:`extract_codes_distributed` extracts it.

- :func:`count_collisions_distributed`: the report of
  :func:`~activation_hash.collisions.count_collisions` over the concatenated shards, exactly
  (largest groups in global indices, ties, mixed-class regions, occupancy, per-layer profile).
  Each rank groups its own rows exactly and sends its sorted 64-bit keys (8 bytes per
  sample) to the ranks that own their high bits (``all_to_all_single``); an owner finds the
  keys that came from two ranks or more and only those local groups travel again (count,
  smallest index, label range, one row), to be grouped exactly by full row, so a fingerprint
  clash costs time, never correctness (distributed/collisions_keys.py; per-layer prefixes and
  huge N take 128-bit records of 48 bytes per local group). No rank holds all N rows or all N
  fingerprints.
- :func:`hamming_topk_distributed`: each rank holds a shard of the base; local top-k merged
  into the global top-k, ties by global index (equal to :func:`~activation_hash.hamming.hamming_topk`
  over the whole base).
- :func:`extract_codes_distributed`: each rank extracts a contiguous share of the data into
  its own store part (resumable per rank; no sample dropped or repeated, unlike
  ``DistributedSampler``'s padding); rank 0 joins the parts into one store that
  :meth:`CodeBook.load <activation_hash.codes.CodeBook.load>` reads in dataset order.

Example (``torchrun --nproc-per-node 2 script.py``)::

    from activation_hash import distributed as ahd
    ahd.init_from_env()
    part = ahd.extract_codes_distributed(model, dataset, store="run/codes")
    rep = ahd.count_collisions_distributed(part.codebook, per_layer=True)
    d, idx = ahd.hamming_topk_distributed(queries, part.codebook, k=10)
"""
from __future__ import annotations

from activation_hash.distributed.collisions import count_collisions_distributed
from activation_hash.distributed.comm import (ExchangeStats, init_from_env, is_distributed,
                                              last_exchange, shard_range)
from activation_hash.distributed.extract import (DistributedCodes, extract_codes_distributed,
                                                 join_parts)
from activation_hash.distributed.knn import hamming_topk_distributed

__all__ = ["init_from_env", "is_distributed", "shard_range", "count_collisions_distributed",
           "hamming_topk_distributed", "extract_codes_distributed", "join_parts",
           "DistributedCodes", "ExchangeStats", "last_exchange"]
