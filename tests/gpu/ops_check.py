"""Every compiled op once per edge case on one device, compared with the pure-PyTorch reference.

Small inputs, so that it stays short under compute-sanitizer (tests/gpu/run.sh runs it under
memcheck, racecheck and synccheck): widths around the 64-bit word and the kernels' tiles,
empty batches, a single row, k = 0 and k = M, channels_last, -0.0 / NaN / inf, every dtype.
Exit status 1 and one line per mismatch when any result differs.

    python tests/gpu/ops_check.py --device cuda
"""
from __future__ import annotations

import argparse
import sys

import torch

from activation_hash import ops
from activation_hash import reference as ref

FLOATS = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
SMALL = [False]  # --small: every kernel instance, fewer shapes (for the sanitizers' slow runs)


def _pick(cases: list) -> list:
    return cases[::3] + cases[-1:] if SMALL[0] else cases


def same_values(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal shapes and values, NaN equal to NaN (+0.0 and -0.0 compare equal)."""
    a, b = a.cpu(), b.cpu()
    return a.shape == b.shape and bool(((a == b) | (a.isnan() & b.isnan())).all())


def activations(shape, dtype, g, channels_last=False) -> torch.Tensor:
    x = torch.randn(shape, generator=g).to(dtype)
    flat = x.view(-1)
    edge = torch.tensor([0.0, -0.0, float("nan"), float("inf"), -float("inf"), 1e-40, -1e-40])
    flat[:min(7, flat.numel())] = edge[:min(7, flat.numel())].to(dtype)
    return x.to(memory_format=torch.channels_last) if channels_last else x


def codes(n, w, g, bits=64) -> torch.Tensor:
    c = torch.randint(-2**63, 2**63 - 1, (n, w), generator=g, dtype=torch.int64)
    if bits < 64:  # few distinct values: ties and duplicates
        c &= (1 << bits) - 1
    return c


def check_pack(dev, g, fails):
    cases = [((0, 5), False), ((1, 1), False), ((3, 64), False), ((5, 100), False),
             ((4, 129), False), ((2, 3, 7, 5), True), ((3, 16, 4, 4), True), ((2, 1000), False)]
    for dtype in FLOATS:
        for shape, cl in _pick(cases):
            x = activations(shape, dtype, g, cl)
            n = x[0].numel() if x.shape[0] else int(torch.tensor(shape[1:]).prod())
            tag = f"{tuple(shape)} {dtype} channels_last={cl}"
            xd = x.to(dev)
            w = ops.pack_signs(xd)
            if not torch.equal(w.cpu(), ref.pack_signs(x)):
                fails.append(f"pack_signs {tag}")
            for slope in (0.0, 0.125):
                y, w2 = ops.relu_pack(xd, slope)
                ry, rw = ref.relu_pack(x, slope)
                if not (same_values(y, ry) and torch.equal(w2.cpu(), rw)):
                    fails.append(f"relu_pack slope={slope} {tag}")
                grad = activations(shape, dtype, g, cl)
                gx = ops.relu_mask_backward(grad.to(dev), w2, slope)
                if not same_values(gx, ref.relu_mask_backward(grad, rw, slope)):
                    fails.append(f"relu_mask_backward slope={slope} {tag}")
            if not torch.equal(ops.unpack_bits(w, n).cpu(), ref.unpack_bits(w.cpu(), n)):
                fails.append(f"unpack_bits {tag}")


def check_fingerprints(dev, g, fails):
    for n, w in _pick([(0, 3), (1, 1), (33, 4), (257, 7), (70, 64)]):
        c = codes(n, w, g)
        cd = c.to(dev)
        if not torch.equal(ops.fingerprint128(cd).cpu(), ref.fingerprint128(c)):
            fails.append(f"fingerprint128 [{n}, {w}]")
        ends = sorted({0, w // 2, w, min(1, w)})
        if not torch.equal(ops.fingerprint128(cd, ends).cpu(), ref.fingerprint128(c, ends)):
            fails.append(f"fingerprint128 [{n}, {w}] ends={ends}")
        many = list(range(w + 1)) * 3  # more ends than any by-value capacity
        if not torch.equal(ops.fingerprint128(cd, sorted(many)).cpu(),
                           ref.fingerprint128(c, sorted(many))):
            fails.append(f"fingerprint128 [{n}, {w}] {len(many)} ends")
        bits = max(1, (max(n, 1) - 1).bit_length())
        if not torch.equal(ops.fingerprint_key(cd, bits).cpu(), ref.fingerprint_key(c, bits)):
            fails.append(f"fingerprint_key [{n}, {w}]")


def check_hamming(dev, g, fails):
    for n, m, w, bits in _pick([(0, 4, 2, 64), (1, 1, 1, 64), (1, 300, 4, 64), (300, 1, 4, 64),
                                (17, 33, 3, 64), (70, 45, 5, 64), (20, 20, 16, 64),
                                (9, 50, 129, 64), (40, 600, 4, 3)]):
        a, b = codes(n, w, g, bits), codes(m, w, g, bits)
        ad, bd = a.to(dev), b.to(dev)
        if not torch.equal(ops.hamming_distance(ad, bd).cpu(), ref.hamming_distance(a, b)):
            fails.append(f"hamming_distance [{n}, {w}] x [{m}, {w}]")
        for k in sorted({0, 1, min(10, m), m}):
            d, i = ops.hamming_topk(ad, bd, k)
            rd, ri = ref.hamming_topk(a, b, k)
            if not (torch.equal(d.cpu(), rd) and torch.equal(i.cpu(), ri)):
                fails.append(f"hamming_topk [{n}, {w}] x [{m}, {w}] k={k} bits={bits}")
        if not torch.equal(ops.hamming_consecutive(bd).cpu(), ref.hamming_consecutive(b)):
            fails.append(f"hamming_consecutive [{m}, {w}]")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--small", action="store_true", help="fewer shapes (for compute-sanitizer)")
    args = p.parse_args(argv)
    SMALL[0] = args.small
    if ops.backend() != "extension":
        print("ops_check: the compiled extension is not loaded (backend "
              f"{ops.backend()!r}): build it first")
        return 1
    dev = torch.device(args.device)
    g = torch.Generator().manual_seed(0)
    fails: list[str] = []
    for check in (check_pack, check_fingerprints, check_hamming):
        check(dev, g, fails)
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    for f in fails:
        print(f"MISMATCH on {dev}: {f}")
    print(f"ops_check on {dev}: {'all equal to the reference' if not fails else f'{len(fails)} mismatches'}")
    return 1 if fails else 0


if __name__ == "__main__":
    sys.exit(main())
