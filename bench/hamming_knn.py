"""Exact Hamming K-NN: our hamming_topk against FAISS IndexBinaryFlat and scikit-learn.

Random codes (each bit 1 with probability 1/2), k = 10, same thread count for everyone
(--threads, default 2: torch.set_num_threads and faiss.omp_set_num_threads). Ours and FAISS
are timed in interleaved rounds (medians), so a slow spell of the machine hits both alike.
--isa caps our kernels (bench/common.py); FAISS always runs its own best build.
  256 bits:  base 1M, 10k queries   (--quick: 200k base, 2k queries)
  1024 bits: base 250k, 2k queries  (--quick: 50k, 500)
  4096 bits: base 100k, 1k queries  (--quick: 20k, 200)
Baselines, same process, same codes:
  faiss_flat     faiss.IndexBinaryFlat(d).search on the codes' bytes; its distances must equal
                 ours exactly (asserted before timing)
  sklearn_brute  NearestNeighbors(metric="hamming", algorithm="brute", n_jobs=threads) on the
                 0/1 bits, timed on a subset (sklearn_base rows x sklearn_queries queries,
                 recorded in the config) and scaled linearly to the full base x queries; its
                 distances on the subset are checked against ours
"""
import os

# FAISS ships its own OpenMP runtime (libgomp) beside torch's: with the default wait policy the
# worker threads of each spin for a while after every parallel region, on the same 2 cores as
# the other library's next call. Passive waiting (set before either runtime starts; the
# per-ISA subprocesses inherit it) keeps the interleaved timings of ours and FAISS apart.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402

import activation_hash.ops as ops  # noqa: E402
from activation_hash import reference as ref  # noqa: E402
from common import median, parse_args, timeit, timeit_interleaved, write_json  # noqa: E402

K = 10


def random_codes(n, n_bits, seed):
    g = torch.Generator().manual_seed(seed)
    W = n_bits // 64
    return torch.randint(-2**63, 2**63 - 1, (n, W), generator=g, dtype=torch.int64)


def bench_width(n_bits, M, Q, sk_M, sk_Q, repeat, sk_repeat, threads):
    import faiss
    from sklearn.neighbors import NearestNeighbors

    base, queries = random_codes(M, n_bits, 1), random_codes(Q, n_bits, 2)
    base_u8 = base.numpy().view(np.uint8)
    q_u8 = queries.numpy().view(np.uint8)
    tag = f"{n_bits}b M={M} Q={Q}"

    # correctness first: identical distances to FAISS, and indices consistent with them
    d, idx = ops.hamming_topk(queries, base, K)
    index = faiss.IndexBinaryFlat(n_bits)
    index.add(base_u8)
    D, I = index.search(q_u8, K)
    assert np.array_equal(d.numpy(), D), "distances differ from FAISS"
    check = slice(0, min(Q, 50))
    full = ops.hamming_distance(queries[check], base)
    assert torch.equal(torch.gather(full, 1, idx[check]), d[check])
    assert torch.equal(torch.gather(full, 1, torch.from_numpy(I[check])), d[check])

    times = timeit_interleaved({"ours": lambda: ops.hamming_topk(queries, base, K),
                                "faiss": lambda: index.search(q_u8, K)}, repeat)
    t_ours, t_faiss = median(times["ours"]), median(times["faiss"])

    sk_base = ref.unpack_bits(base[:sk_M], n_bits).numpy()
    sk_q = ref.unpack_bits(queries[:sk_Q], n_bits).numpy()
    nn = NearestNeighbors(n_neighbors=K, metric="hamming", algorithm="brute", n_jobs=threads)
    nn.fit(sk_base)
    skd, _ = nn.kneighbors(sk_q)
    ours_sub, _ = ops.hamming_topk(queries[:sk_Q], base[:sk_M], K)
    assert np.array_equal(np.rint(skd * n_bits).astype(np.int32), ours_sub.numpy())
    t_sk_sub = median(timeit(lambda: nn.kneighbors(sk_q), max(1, sk_repeat), warmup=0))
    t_sk = t_sk_sub * (M * Q) / (sk_M * sk_Q)

    results = [
        {"label": f"{tag} hamming_topk (ours)", "seconds": t_ours,
         "distances_per_s": M * Q / t_ours},
        {"label": f"{tag} faiss IndexBinaryFlat", "seconds": t_faiss},
        {"label": f"{tag} sklearn brute (scaled)", "seconds": t_sk,
         "measured_seconds": t_sk_sub, "measured_base": sk_M, "measured_queries": sk_Q},
    ]
    ratios = {f"faiss_flat/{n_bits}b": t_faiss / t_ours, f"sklearn_brute/{n_bits}b": t_sk / t_ours}
    return results, ratios


def main():
    args = parse_args(__doc__)
    import faiss

    faiss.omp_set_num_threads(args.threads)
    if args.quick:
        widths = [(256, 200_000, 2_000), (1024, 50_000, 500), (4096, 20_000, 200)]
        sk_M, sk_Q, repeat, sk_repeat = 10_000, 100, 7, 2
    else:
        widths = [(256, 1_000_000, 10_000), (1024, 250_000, 2_000), (4096, 100_000, 1_000)]
        sk_M, sk_Q, repeat, sk_repeat = 20_000, 200, 5, 2
    results, ratios = [], {}
    for n_bits, M, Q in widths:
        r, q = bench_width(n_bits, M, Q, min(sk_M, M), min(sk_Q, Q), repeat, sk_repeat,
                           args.threads)
        results += r
        ratios.update(q)
    config = {"k": K, "widths": [{"n_bits": b, "base": M, "queries": Q} for b, M, Q in widths],
              "repeat": repeat, "timing": "ours and faiss interleaved, median of repeat rounds",
              "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
              "sklearn_repeat": sk_repeat, "quick": args.quick,
              "faiss_threads": args.threads, "faiss": faiss.__version__,
              "sklearn_subset": {"base": sk_M, "queries": sk_Q,
                                 "note": "sklearn timed on this subset, scaled linearly by "
                                         "base*queries to the full size"}}
    write_json(args.json, "hamming_knn", config, results, ratios)


if __name__ == "__main__":
    main()
