"""Fused ReLU + bit packing against torch: relu_pack, pack_signs, forward+backward of ReLU.

Baselines (same process, same inputs, fp32, 2 threads by default):
  torch_relu          torch.relu(x), out of place (allocates its output, as relu_pack does)
  naive_torch_pack    the fastest of several bit packings written with plain torch ops
  torch_relu_and_pack torch.relu(x) plus that packing (what a researcher would do by hand)
  nn_relu_fwd_bwd     forward and backward of nn.ReLU vs of activation_hash.nn.ReLU
--device DEV runs the device suite instead (bench/common.py): relu_pack, pack_signs,
relu_mask_backward and unpack_bits on 4096x4096 (contiguous) and 256x256x16x16 (channels_last)
in float32, float16 and bfloat16, each against torch.relu on the same device and as a fraction
of a device-to-device copy of the same bytes (``copy_bandwidth/<op>/<case>``).
Every result of ours is checked equal to the baseline's before timing. Timing is interleaved
(rounds that call each candidate once in turn; medians), so a slow spell of the machine hits
all candidates alike; a timing of a fast call is several calls (about 2 ms).
"""
import torch

import activation_hash as ah
from activation_hash import ops
from activation_hash import reference as ref
from activation_hash.nn import ReLU
from common import copy_bandwidth, median, parse_args, synced, timeit_interleaved, write_json


def pack_sum_of_weighted_bytes(x):
    """bool -> uint8 bytes by a weighted sum of 8 bits, bytes viewed as int64 words."""
    B = x.shape[0]
    bits = (x > 0).reshape(B, -1)
    n = bits.shape[1]
    W = (n + 63) // 64
    if n != W * 64:
        bits = torch.nn.functional.pad(bits, (0, W * 64 - n))
    weights = torch.tensor([1, 2, 4, 8, 16, 32, 64, 128], dtype=torch.uint8)
    by = (bits.view(B, W * 8, 8).view(torch.uint8) * weights).sum(-1, dtype=torch.uint8)
    return by.view(torch.int64)


def pack_shift_or(x):
    """bool -> int64 words by shifting 64 bit-planes and or-ing them (log-depth reduction)."""
    B = x.shape[0]
    bits = (x > 0).reshape(B, -1)
    n = bits.shape[1]
    W = (n + 63) // 64
    if n != W * 64:
        bits = torch.nn.functional.pad(bits, (0, W * 64 - n))
    v = bits.view(B, W, 64).to(torch.int64) << torch.arange(64, dtype=torch.int64)
    while v.shape[-1] > 1:
        half = v.shape[-1] // 2
        v = v[..., :half] | v[..., half:]
    return v[..., 0]


def pack_matmul(x):
    """bool -> bytes with a float matmul against powers of two, bytes viewed as int64."""
    B = x.shape[0]
    bits = (x > 0).reshape(B, -1)
    n = bits.shape[1]
    W = (n + 63) // 64
    if n != W * 64:
        bits = torch.nn.functional.pad(bits, (0, W * 64 - n))
    weights = torch.tensor([1, 2, 4, 8, 16, 32, 64, 128], dtype=torch.float32)
    by = (bits.view(B, W * 8, 8).to(torch.float32) @ weights).to(torch.uint8)
    return by.view(torch.int64)


TORCH_PACKINGS = {"sum_of_weighted_bytes": pack_sum_of_weighted_bytes,
                  "shift_or": pack_shift_or, "matmul": pack_matmul}


def bench_shape(shape, repeat):
    x = torch.randn(shape)
    results, ratios = [], {}
    tag = "x".join(map(str, shape))

    words = ah.pack_signs(x)
    y, words2 = ah.relu_pack(x, 0.0)
    assert torch.equal(y, torch.relu(x)) and torch.equal(words2, words)

    for name, fn in TORCH_PACKINGS.items():
        assert torch.equal(fn(x), words), name

    xa = x.clone().requires_grad_()
    g = torch.randn(shape)
    ours_mod, theirs_mod = ReLU(), torch.nn.ReLU()

    def fwd_bwd(mod):
        def run():
            xa.grad = None
            mod(xa).backward(g)
        return run

    # The shift_or packing is an order of magnitude slower than the others: fewer rounds.
    packs = {name: median(t) for name, t in timeit_interleaved(
        {name: (lambda fn=fn: fn(x)) for name, fn in TORCH_PACKINGS.items()},
        max(3, repeat // 3)).items()}
    best_name = min(packs, key=packs.get)
    best = TORCH_PACKINGS[best_name]
    t = {name: median(v) for name, v in timeit_interleaved({
        "relu": lambda: torch.relu(x),
        "ours": lambda: ah.relu_pack(x, 0.0),
        "sign": lambda: ah.pack_signs(x),
        "best_pack": lambda: best(x),
        "relu_and_pack": lambda: (torch.relu(x), best(x)),
        "fb_torch": fwd_bwd(theirs_mod),
        "fb_ours": fwd_bwd(ours_mod),
    }, repeat, number="auto").items()}  # small shapes: several calls a timing
    t_relu, t_ours, t_sign = t["relu"], t["ours"], t["sign"]
    packs[best_name] = t["best_pack"]  # the best packing, timed alongside ours
    t_relu_pack_torch, t_fb_torch, t_fb_ours = t["relu_and_pack"], t["fb_torch"], t["fb_ours"]

    results += [
        {"label": f"{tag} torch.relu", "seconds": t_relu},
        {"label": f"{tag} relu_pack (ours)", "seconds": t_ours},
        {"label": f"{tag} pack_signs (ours)", "seconds": t_sign},
        *[{"label": f"{tag} torch packing: {k}", "seconds": v} for k, v in packs.items()],
        {"label": f"{tag} torch.relu + {best_name}", "seconds": t_relu_pack_torch},
        {"label": f"{tag} nn.ReLU fwd+bwd", "seconds": t_fb_torch},
        {"label": f"{tag} ah.nn.ReLU fwd+bwd (ours)", "seconds": t_fb_ours},
    ]
    ratios[f"torch_relu/{tag}"] = t_relu / t_ours
    ratios[f"naive_torch_pack/{tag}"] = packs[best_name] / t_sign
    ratios[f"torch_relu_and_pack/{tag}"] = t_relu_pack_torch / t_ours
    ratios[f"nn_relu_fwd_bwd/{tag}"] = t_fb_torch / t_fb_ours
    return results, ratios


def device_case(x, repeat, bw, device):
    """relu_pack & co. on one device tensor: seconds, bytes moved, fraction of the copy."""
    tag = f"{'x'.join(map(str, x.shape))} {str(x.dtype).removeprefix('torch.')}" + (
        " channels_last" if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last)
        and not x.is_contiguous() else "")
    n_units = x[0].numel() if x.dim() > 1 else x.numel()
    y, words = ops.relu_pack(x, 0.0)
    cpu_x = x.cpu()
    assert torch.equal(words.cpu(), ref.pack_signs(cpu_x)), tag
    want, got = ref.relu_pack(cpu_x, 0.0)[0], y.cpu()  # equal values (NaN as NaN, +0 as -0)
    assert bool(((got == want) | (got.isnan() & want.isnan())).all()), tag
    assert y.stride() == x.stride(), f"{tag}: y strides {y.stride()} != x strides {x.stride()}"
    grad = torch.randn_like(x)
    bits = ops.unpack_bits(words, n_units)
    assert torch.equal(bits.cpu(), ref.unpack_bits(words.cpu(), n_units)), tag
    fns = {"relu_pack": lambda: ops.relu_pack(x, 0.0),
           "pack_signs": lambda: ops.pack_signs(x),
           "relu_mask_backward": lambda: ops.relu_mask_backward(grad, words, 0.0),
           "unpack_bits": lambda: ops.unpack_bits(words, n_units),
           "torch_relu": lambda: torch.relu(x)}
    t = {k: median(v) for k, v in timeit_interleaved(
        {k: synced(f, device) for k, f in fns.items()}, repeat, warmup=2, number="auto").items()}
    e, wb = x.element_size() * x.numel(), 8 * words.numel()
    moved = {"relu_pack": 2 * e + wb, "pack_signs": e + wb, "relu_mask_backward": 2 * e + wb,
             "unpack_bits": wb + bits.numel(), "torch_relu": 2 * e}
    results = [{"label": f"{tag} {k}" + (" (ours)" if k != "torch_relu" else ""),
                "seconds": v, "bytes_moved": moved[k], "bytes_per_s": moved[k] / v}
               for k, v in t.items()]
    ratios = {f"copy_bandwidth/{k}/{tag}": moved[k] / t[k] / bw for k in t}
    ratios[f"torch_relu/{tag}"] = t["torch_relu"] / t["relu_pack"]
    return results, ratios


def device_main(args):
    device = args.device
    if args.smoke:
        shapes, repeat, copy_bytes = [(64, 100), (2, 8, 5, 3)], 1, 1 << 20
    else:
        shapes, repeat, copy_bytes = [(4096, 4096), (256, 256, 16, 16)], 9 if args.quick else 21, 1 << 28
    bw = copy_bandwidth(device, copy_bytes)
    print(f"device-to-device copy on {device}: {bw / 1e9:.1f} GB/s (read + write)", flush=True)
    results, ratios = [{"label": "device-to-device copy", "seconds": 2 * copy_bytes / bw,
                        "bytes_moved": 2 * copy_bytes, "bytes_per_s": bw}], {}
    g = torch.Generator().manual_seed(0)
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        for shape in shapes:
            x = torch.randn(shape, generator=g).to(dtype)
            x.view(-1)[:7] = torch.tensor([0.0, -0.0, float("nan"), float("inf"), -float("inf"),
                                           1e-40, -1e-40]).to(dtype)[:min(7, x.numel())]
            if x.dim() == 4:
                x = x.to(memory_format=torch.channels_last)
            r, q = device_case(x.to(device), repeat, bw, device)
            results += r
            ratios.update(q)
    config = {"device": str(device), "smoke": args.smoke, "quick": args.quick, "shapes": shapes,
              "repeat": repeat, "copy_bytes": copy_bytes, "copy_bytes_per_s": bw,
              "bytes_moved": "inputs read + outputs written once (words 8 B each, bits 1 B)"}
    if device.type == "cuda":
        config["gpu"] = torch.cuda.get_device_name(device)
    write_json(args.json, "relu_pack", config, results, ratios)


def main():
    args = parse_args(__doc__)
    if args.device is not None:
        return device_main(args)
    shapes = [(4096, 4096), (256, 4096), (128, 64, 32, 32), (256, 128, 16, 16)]
    if args.quick:
        shapes = [(4096, 4096), (256, 1024), (64, 64, 32, 32)]
    repeat = 9 if args.quick else 21
    results, ratios = [], {}
    for shape in shapes:
        r, q = bench_shape(shape, repeat)
        results += r
        ratios.update(q)
    write_json(args.json, "relu_pack", {"shapes": shapes, "dtype": "float32", "repeat": repeat,
                                        "quick": args.quick}, results, ratios)


if __name__ == "__main__":
    main()
