"""Exact collision counting: ours against np.unique(axis=0), np.unique on a void row view and
torch.unique(dim=0), side by side, with identical counts asserted.

Cases:
  * 10M x 256-bit codes with 1% planted duplicates (--quick: 1M);
  * 100k x 277k-bit codes (VGG-sized rows, 1% duplicates; --quick: 5k rows);
  * the streaming CollisionCounter: state bytes per sample, and the peak memory per sample
    of compute() (resident-set growth of a fresh process fed the codes batch by batch).

Baselines: np.unique(axis=0) on one uint8 per bit (what the original code does; the unpacking
is timed with it), np.unique(axis=0) on the packed bytes, np.unique on a np.void view of the
packed rows (the best plain numpy), torch.unique(dim=0) on the int64 words.
Ratios: baseline seconds / our seconds, keys np_unique_axis0, np_unique_axis0_packed,
np_unique_void, torch_unique (the wide case: *_wide).
"""
from __future__ import annotations

import os
import subprocess
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import median, parse_args, timeit, write_json  # noqa: E402

from activation_hash.collisions import CollisionCounter, collisions  # noqa: E402


def planted_codes(n: int, words: int, dup: float = 0.01, seed: int = 0) -> torch.Tensor:
    """Random int64 codes [n, words] where a fraction ``dup`` of the rows copy another row."""
    g = torch.Generator().manual_seed(seed)
    codes = torch.randint(-2**63, 2**63 - 1, (n, words), generator=g, dtype=torch.int64)
    k = int(n * dup)
    src = torch.randint(n, (k,), generator=g)
    dst = torch.randperm(n, generator=g)[:k]  # distinct targets: a deterministic result
    codes[dst] = codes[src]
    return codes


def distinct_ours(codes):
    return collisions(codes, top=10).n_distinct


def distinct_np_axis0(raw):
    """The original implementation's way: np.unique(axis=0) on one uint8 byte per bit."""
    bits = np.unpackbits(raw, axis=1, bitorder="little")
    return np.unique(bits, axis=0).shape[0]


def distinct_np_axis0_packed(raw):
    return np.unique(raw, axis=0).shape[0]


def distinct_np_void(raw):
    v = np.ascontiguousarray(raw).view(np.dtype((np.void, raw.shape[1]))).ravel()
    return np.unique(v).shape[0]


def distinct_torch(codes):
    return torch.unique(codes, dim=0).shape[0]


def run_case(tag: str, codes: torch.Tensor, repeat: int, baseline_rows: int | None,
             results: list, ratios: dict, suffix: str = "") -> None:
    n, w = codes.shape
    raw = codes.numpy().view(np.uint8)  # [n, 8 w] bytes, the rows as the baselines see them
    ours_t = median(timeit(lambda: distinct_ours(codes), repeat=repeat, warmup=1))
    U = distinct_ours(codes)
    results.append({"label": f"ours collisions() {tag}", "seconds": ours_t, "n": n,
                    "bits": 64 * w, "n_distinct": U})
    print(f"ours {tag}: {ours_t:.3f} s, U={U}", flush=True)
    bn = n if baseline_rows is None else min(n, baseline_rows)
    sub_codes, sub_raw = codes[:bn], raw[:bn]
    U_sub = U if bn == n else distinct_ours(sub_codes)
    ours_sub = ours_t if bn == n else median(timeit(lambda: distinct_ours(sub_codes),
                                                    repeat=repeat, warmup=1))
    if bn != n:
        results.append({"label": f"ours collisions() {tag} first {bn} rows", "seconds": ours_sub,
                        "n": bn, "bits": 64 * w, "n_distinct": U_sub})
    for key, label, fn, arg in [
            ("np_unique_axis0", "np.unique(axis=0) one uint8 per bit", distinct_np_axis0,
             sub_raw),
            ("np_unique_axis0_packed", "np.unique(axis=0) packed uint8 rows",
             distinct_np_axis0_packed, sub_raw),
            ("np_unique_void", "np.unique void row view", distinct_np_void, sub_raw),
            ("torch_unique", "torch.unique(dim=0)", distinct_torch, sub_codes)]:
        t0 = time.perf_counter()
        got = fn(arg)
        t = time.perf_counter() - t0
        assert got == U_sub, (key, got, U_sub)
        results.append({"label": f"{label} {tag}" + ("" if bn == n else f" first {bn} rows"),
                        "seconds": t, "n": bn, "bits": 64 * w, "n_distinct": got})
        ratios[key + suffix] = t / ours_sub
        print(f"{key}{suffix}: {t:.3f} s (x{t / ours_sub:.1f})", flush=True)


_COUNTER_CHILD = r"""
import resource, sys, torch
from activation_hash.collisions import CollisionCounter
torch.set_num_threads(int(sys.argv[3]))
n, words, batch = int(sys.argv[1]), int(sys.argv[2]), 1 << 16
g = torch.Generator().manual_seed(0)
pool = torch.randint(-2**63, 2**63 - 1, (max(1, n // 100), words), generator=g)
c = CollisionCounter()
for lo in range(0, n, batch):
    b = min(batch, n - lo)
    x = torch.randint(-2**63, 2**63 - 1, (b, words), generator=g)
    k = b // 100
    x[:k] = pool[torch.randint(pool.shape[0], (k,), generator=g)]
    c.update(x)
del x
state = c.state_bytes
def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()
before = rss()
peak0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
rep = c.compute()
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(state, before, peak0, peak, rep.n, rep.n_distinct)
"""


def counter_memory(n: int, words: int, threads: int) -> dict:
    """State bytes and peak extra memory of compute(), per sample, in a fresh process."""
    out = subprocess.run([sys.executable, "-c", _COUNTER_CHILD, str(n), str(words), str(threads)],
                         capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    state, before, peak0, peak, n_out, U = map(int, out.stdout.split())
    assert n_out == n
    # the peak of compute() above the resident set it started from (state included)
    extra = max(peak, before) - before
    return {"state_bytes_per_sample": state / n,
            "compute_peak_extra_bytes_per_sample": extra / n,
            "peak_rss_bytes_per_sample": max(peak, peak0) / n, "n_distinct": U}


def main():
    args = parse_args(__doc__.splitlines()[0])
    n = 1_000_000 if args.quick else 10_000_000
    wide_n = 5_000 if args.quick else 100_000
    wide_words = (277_000 + 63) // 64
    results, ratios = [], {}

    codes = planted_codes(n, 4, seed=1)
    run_case(f"{n} x 256 bits", codes, repeat=3, baseline_rows=None, results=results,
             ratios=ratios)
    del codes

    wide = planted_codes(wide_n, wide_words, seed=2)
    run_case(f"{wide_n} x {64 * wide_words} bits", wide, repeat=3, baseline_rows=None,
             results=results, ratios=ratios, suffix="_wide")
    del wide

    t0 = time.perf_counter()
    mem = counter_memory(n, 4, args.threads)
    results.append({"label": f"CollisionCounter {n} x 256 bits (update + compute, subprocess)",
                    "seconds": time.perf_counter() - t0, **mem})
    write_json(args.json, "collisions",
               {"n": n, "bits": 256, "duplicates": 0.01, "wide_n": wide_n,
                "wide_bits": 64 * wide_words, "quick": args.quick}, results, ratios)


if __name__ == "__main__":
    main()
