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

--device DEV runs the device suite instead (bench/common.py), everything on that device:
  hamming_topk, k = 10, 1M base x 10k queries x 256 bit (--quick: 200k x 2k; --smoke: 2k x 50)
    torch_matmul_topk  the cdist-style torch baseline: bits unpacked to +-1 in float16 (float32
                       on the CPU), distance = (n - q . b) / 2 by matmul, torch.topk per query
                       chunk; distances checked equal to ours (ties may pick other indices)
    faiss_gpu_flat     faiss.GpuIndexBinaryFlat, when FAISS has GPUs (faiss.get_num_gpus())
    popcount_limit     (CUDA) seconds the popcounts alone take at the device's peak integer
                       popcount rate (SMs x clock x 16 32-bit popcounts per clock; sm_70+)
                       / ours: the fraction of that bound we reach
  hamming_distance 4096 x 4096 x 256 bit: bytes moved (the int32 output dominates) as a fraction
    of a device-to-device copy (copy_bandwidth/hamming_distance) and against the matmul baseline
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
from common import (copy_bandwidth, median, parse_args, synced, timeit,  # noqa: E402
                    timeit_interleaved, write_json)

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


def signs(codes, n_bits, dtype):
    """Packed codes [N, W] -> +-1 [N, n_bits] in ``dtype`` (on the codes' device)."""
    bits = ops.unpack_bits(codes, n_bits)
    return bits.to(dtype) * 2 - 1


def matmul_topk(queries, base_pm, n_bits, k, dtype, chunk):
    """Top-k Hamming distances by a +-1 matmul: d = (n - q . b) / 2, per chunk of queries."""
    out = []
    for q0 in range(0, queries.shape[0], chunk):
        dots = signs(queries[q0:q0 + chunk], n_bits, dtype) @ base_pm.T
        out.append(torch.topk(dots, k, dim=1).values)
    return ((n_bits - torch.cat(out).float()) / 2).round().int()


def popcount_seconds(device, M, Q, W):
    """Seconds of M * Q * W 64-bit popcounts at the device's peak rate, or None."""
    if device.type != "cuda":
        return None
    p = torch.cuda.get_device_properties(device)
    clock_hz = getattr(p, "clock_rate", 0) * 1e3  # kHz in the CUDA device properties
    if not clock_hz:
        try:  # NVML's current SM clock, in MHz (needs pynvml / nvidia-ml-py)
            clock_hz = torch.cuda.clock_rate(device) * 1e6
        except Exception:  # noqa: BLE001 (no clock known: no bound)
            return None
    if not clock_hz or p.major < 7:
        return None
    return 2 * M * Q * W / (p.multi_processor_count * clock_hz * 16)


def device_main(args):
    dev = args.device
    M, Q = (2_000, 50) if args.smoke else (200_000, 2_000) if args.quick else (1_000_000, 10_000)
    n_bits, W, repeat = 256, 4, 1 if args.smoke else 5
    dtype = torch.float16 if dev.type == "cuda" else torch.float32
    base, queries = random_codes(M, n_bits, 1).to(dev), random_codes(Q, n_bits, 2).to(dev)
    base_pm = signs(base, n_bits, dtype)
    chunk = max(1, min(Q, (1 << 28) // (2 * M)))  # [chunk, M] dot products near 512 MiB
    d, idx = ops.hamming_topk(queries, base, K)
    want = matmul_topk(queries, base_pm, n_bits, K, dtype, chunk)
    assert torch.equal(d, want), "hamming_topk distances differ from the matmul baseline"
    full = ops.hamming_distance(queries[:50], base)
    assert torch.equal(torch.gather(full, 1, idx[:50]), d[:50])
    fns = {"ours": lambda: ops.hamming_topk(queries, base, K),
           "torch_matmul_topk": lambda: matmul_topk(queries, base_pm, n_bits, K, dtype, chunk)}
    try:
        import faiss
    except ImportError:  # a GPU machine without FAISS: the matmul baseline and the bound
        faiss = None
    gpus = faiss.get_num_gpus() if faiss is not None and hasattr(faiss, "get_num_gpus") else 0
    if dev.type == "cuda" and gpus > 0:
        res = faiss.StandardGpuResources()
        index = faiss.GpuIndexBinaryFlat(res, n_bits)
        index.add(base.cpu().numpy().view(np.uint8))
        q_u8 = queries.cpu().numpy().view(np.uint8)
        D, _ = index.search(q_u8, K)
        assert np.array_equal(D, d.cpu().numpy()), "distances differ from FAISS GPU"
        fns["faiss_gpu_flat"] = lambda: index.search(q_u8, K)
    t = {k: median(v) for k, v in timeit_interleaved(
        {k: synced(f, dev) for k, f in fns.items()}, repeat, warmup=1).items()}
    tag = f"{n_bits}b M={M} Q={Q}"
    results = [{"label": f"{tag} hamming_topk (ours)", "seconds": t["ours"],
                "distances_per_s": M * Q / t["ours"]}]
    results += [{"label": f"{tag} {k}", "seconds": v} for k, v in t.items() if k != "ours"]
    ratios = {f"{k}/topk/{n_bits}b": v / t["ours"] for k, v in t.items() if k != "ours"}
    limit = popcount_seconds(dev, M, Q, W)
    if limit is not None:
        ratios[f"popcount_limit/topk/{n_bits}b"] = limit / t["ours"]
        results.append({"label": f"{tag} popcount limit", "seconds": limit})

    n = 64 if args.smoke else 4096
    a, b = random_codes(n, n_bits, 3).to(dev), random_codes(n, n_bits, 4).to(dev)
    a_pm, b_pm = signs(a, n_bits, dtype), signs(b, n_bits, dtype)
    dist = ops.hamming_distance(a, b)
    assert torch.equal(dist, ((n_bits - (a_pm @ b_pm.T).float()) / 2).round().int())
    td = {k: median(v) for k, v in timeit_interleaved({
        "ours": synced(lambda: ops.hamming_distance(a, b), dev),
        "torch_matmul": synced(lambda: a_pm @ b_pm.T, dev)}, repeat, warmup=1,
        number="auto").items()}
    bw = copy_bandwidth(dev, 1 << 20 if args.smoke else 1 << 28)
    moved = 4 * n * n + 2 * 8 * W * n
    results += [{"label": f"hamming_distance {n}x{n}x{n_bits}b (ours)", "seconds": td["ours"],
                 "bytes_moved": moved, "bytes_per_s": moved / td["ours"]},
                {"label": f"hamming_distance {n}x{n}x{n_bits}b torch +-1 matmul",
                 "seconds": td["torch_matmul"]}]
    ratios[f"copy_bandwidth/hamming_distance/{n_bits}b"] = moved / td["ours"] / bw
    ratios[f"torch_matmul/hamming_distance/{n_bits}b"] = td["torch_matmul"] / td["ours"]
    config = {"device": str(dev), "k": K, "base": M, "queries": Q, "n_bits": n_bits,
              "repeat": repeat, "smoke": args.smoke, "quick": args.quick,
              "matmul_dtype": str(dtype), "faiss_gpus": gpus,
              "faiss": getattr(faiss, "__version__", "not installed"), "copy_bytes_per_s": bw}
    if dev.type == "cuda":
        config["gpu"] = torch.cuda.get_device_name(dev)
    write_json(args.json, "hamming_knn", config, results, ratios)


def main():
    args = parse_args(__doc__)
    if args.device is not None:
        return device_main(args)
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
