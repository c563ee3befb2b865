"""Exact Hamming K-NN over a base sharded across a process group."""
from __future__ import annotations

import torch

from activation_hash.codes import as_codes
from activation_hash.validation import check_int
from activation_hash.distributed.comm import _I64_MAX, _Comm, _set_last

# -------------------------------------------------------------------------- K-NN

def _merge_topk(dists: list[torch.Tensor], idxs: list[torch.Tensor], k: int):
    """Merge per-shard top-k lists (each sorted by (distance, index), shards in index order)
    into the global top-k: a stable sort by distance keeps equal distances in index order."""
    d = torch.cat(dists, dim=1)
    i = torch.cat(idxs, dim=1)
    order = torch.sort(d, dim=1, stable=True).indices[:, :k]
    return torch.gather(d, 1, order), torch.gather(i, 1, order)


def hamming_topk_distributed(queries, base_shard, k: int, *, shard_queries: bool = False,
                             group=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact K-NN over a base split across ranks: equal to
    :func:`~activation_hash.hamming.hamming_topk` on the concatenated base (indices global, in
    rank order; equal distances by lower global index).

    Every rank passes its own base shard (``[m_r, W]``, may be empty). With
    ``shard_queries=False`` every rank passes the same queries and gets every result; with
    ``shard_queries=True`` each rank passes its own queries and gets their results (the
    queries are gathered, every rank searches its shard, the results go back to the query's
    rank). ``k`` may be up to the total base size.
    """
    from activation_hash import ops

    q, _ = as_codes(queries, "queries")
    b, _ = as_codes(base_shard, "base")
    k = check_int(k, "k", min=0)
    comm = _Comm(group)
    info = comm.all_gather_int([b.shape[0], q.shape[0], q.shape[1]])
    sizes = info[:, 0]
    M = int(sizes.sum())
    if k > M:
        raise ValueError(f"k={k} exceeds the {M} base rows of all ranks")
    offset = int(sizes[:comm.rank].sum())
    W = q.shape[1]
    if b.shape[0] and b.shape[1] != W:
        raise ValueError(f"queries have {W} words per row, the base {b.shape[1]}")
    dev = q.device
    if shard_queries and comm.world > 1:
        qs = info[:, 1]
        qq = comm.all_gather_rows(q, qs.tolist()).to(b.device if b.shape[0] else dev)
    else:
        qs = None
        qq = q.to(b.device) if b.shape[0] else q
    kk = min(k, b.shape[0])
    Q = qq.shape[0]
    d = torch.full((Q, k), torch.iinfo(torch.int32).max, dtype=torch.int32)
    i = torch.full((Q, k), _I64_MAX, dtype=torch.int64)
    if kk:
        dl, il = ops.hamming_topk(qq, b, kk)
        d[:, :kk], i[:, :kk] = dl.cpu(), il.cpu() + offset
    if comm.world == 1:
        _set_last(comm.stats)
        return d.to(dev), i.to(dev)
    packed = torch.cat([d.to(torch.int64), i], dim=1)  # [Q, 2k]
    if shard_queries:
        recv = comm.all_to_all(packed, qs, "gather")[0]  # my queries' rows from every rank
        parts = recv.cpu().view(comm.world, q.shape[0], 2 * k)
    else:
        parts = comm.all_gather_rows(packed, [Q] * comm.world).view(comm.world, Q, 2 * k)
    dd = [p[:, :k].to(torch.int32) for p in parts]
    ii = [p[:, k:] for p in parts]
    out = _merge_topk(dd, ii, k)
    _set_last(comm.stats)
    return out[0].to(dev), out[1].to(dev)
