"""Exact linear regions along segments: ours against a numpy counter and regioncam.

MLP 784-512x4 (He init), segments between two Gaussian inputs (100; 10 with --quick):
  numpy_hanin_rolnick  a numpy float64 layer-by-layer 1-D counter in the Hanin-Rolnick style
                       (each layer splits every piece at its units' zero crossings), one
                       segment at a time, vectorized over the pieces of the segment
  regioncam            regioncam's Regioncam1D (Rust, float32, one thread) through the two end
                       points with size=2.0, which covers exactly the segment
Counts are asserted identical before any ratio is written. Then, ours only, on 3x32x32: a CNN
with max-pooling and a 2-block residual CNN: segments and regions per second of the exact
walk, and the fraction of the walk's distinct codes that dense sampling (n points) misses
(--quick: one segment each, its first 5%, 1000 dense points; the full run: 8 whole segments,
100,000 points).
"""
import time

from common import cpu_only, median, parse_args, timeit_interleaved, write_json  # first: it
# sets OPENBLAS_THREAD_TIMEOUT before numpy loads OpenBLAS (bench/common.py says why)
import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from activation_hash.regions import sampled_segment_regions, segment_regions  # noqa: E402


def he_mlp(d_in=784, width=512, depth=4, n_out=10, seed=0):
    torch.manual_seed(seed)
    layers, d = [], d_in
    for _ in range(depth):
        lin = nn.Linear(d, width)
        nn.init.kaiming_normal_(lin.weight, nonlinearity="relu")
        nn.init.zeros_(lin.bias)
        layers += [lin, nn.ReLU()]
        d = width
    return nn.Sequential(*layers, nn.Linear(d, n_out)).eval()


def numpy_counter(weights, x0, x1):
    """Pieces of one segment: numpy, float64, layer by layer (the baseline)."""
    lo, hi = np.zeros(1), np.ones(1)
    a, b = x0[None].astype(np.float64), (x1 - x0)[None].astype(np.float64)
    for W, c in weights:
        za, zb = a @ W.T + c, b @ W.T
        with np.errstate(divide="ignore", invalid="ignore"):
            t = -za / zb
        inside = (t > lo[:, None]) & (t < hi[:, None])
        new_lo, new_hi, new_a, new_b = [], [], [], []
        for p in range(za.shape[0]):
            cuts = np.sort(t[p, inside[p]])
            edges = np.concatenate([[lo[p]], cuts, [hi[p]]])
            mids = 0.5 * (edges[:-1] + edges[1:])
            z_mid = za[p][None] + mids[:, None] * zb[p][None]
            on = z_mid > 0
            new_lo.append(edges[:-1])
            new_hi.append(edges[1:])
            new_a.append(np.where(on, za[p][None], 0.0))
            new_b.append(np.where(on, zb[p][None], 0.0))
        lo, hi = np.concatenate(new_lo), np.concatenate(new_hi)
        a, b = np.concatenate(new_a), np.concatenate(new_b)
    return lo.shape[0]


def cnn_maxpool(seed=1):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Flatten(), nn.Linear(32 * 8 * 8, 64), nn.ReLU(),
                         nn.Linear(64, 10)).eval()


class Block(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)
        self.c2, self.b2 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)

    def forward(self, x):
        return F.relu(x + self.b2(self.c2(F.relu(self.b1(self.c1(x))))))


def resnet(seed=2):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), Block(16), Block(16),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10)).eval()


def main():
    import regioncam as rc

    args = parse_args(__doc__.splitlines()[0], lambda p: p.add_argument(
        "--mlp-only", action="store_true",
        help="only the MLP against regioncam and numpy (the full run's CNN walks take ~45 min)"))
    cpu_only(args, "regions", "its baselines, regioncam and numpy, are CPU tools")
    n_seg = 10 if args.quick else 100
    model = he_mlp()
    torch.manual_seed(3)
    x0, x1 = torch.randn(n_seg, 784), torch.randn(n_seg, 784)
    weights = [(m.weight.detach().double().numpy(), m.bias.detach().double().numpy())
               for m in model if isinstance(m, nn.Linear)][:-1]
    net = rc.nn.convert(model)
    ours = segment_regions(model, x0, x1)
    counts = ours.counts.tolist()
    n_np = min(n_seg, 3 if args.quick else 10)  # the numpy counter is slow: a subset, scaled
    assert [numpy_counter(weights, x0[i].numpy(), x1[i].numpy()) for i in range(n_np)] == \
        counts[:n_np], "numpy counter disagrees"

    def regioncam_all():
        out = []
        for i in range(n_seg):
            cam = rc.Regioncam1D.through_points(np.stack([x0[i].numpy(), x1[i].numpy()]),
                                                size=2.0)
            cam.add(net)
            out.append(cam.num_edges)
        return out
    assert regioncam_all() == counts, "regioncam disagrees"
    repeat = 3 if args.quick else 5
    times = timeit_interleaved({
        "ours": lambda: segment_regions(model, x0, x1),
        "regioncam": regioncam_all,
        "numpy_subset": lambda: [numpy_counter(weights, x0[i].numpy(), x1[i].numpy())
                                 for i in range(n_np)],
    }, repeat=repeat, warmup=1)
    t = {k: median(v) for k, v in times.items()}
    t["numpy_hanin_rolnick"] = t.pop("numpy_subset") * n_seg / n_np
    results = [{"label": f"mlp 784-512x4, {n_seg} gaussian segments, {k}", "seconds": v,
                "per_segment": v / n_seg} for k, v in t.items()]
    results[0]["pieces_mean"] = float(np.mean(counts))
    ratios = {"numpy_hanin_rolnick": t["numpy_hanin_rolnick"] / t["ours"],
              "regioncam": t["regioncam"] / t["ours"]}

    n_cnn = 1 if args.quick else 8
    n_dense = 1_000 if args.quick else 100_000
    frac = 0.05 if args.quick else 1.0  # --quick: the first 5% of each segment (minutes else)
    cnns = () if args.mlp_only else (("cnn max-pool 3x32x32", cnn_maxpool),
                                     ("resnet 2 blocks 3x32x32", resnet))
    for label, make in cnns:
        m = make()
        torch.manual_seed(4)
        a, b = torch.randn(n_cnn, 3, 32, 32), torch.randn(n_cnn, 3, 32, 32)
        b = a + frac * (b - a)
        t0 = time.perf_counter()  # one timed walk (seconds per segment: minutes)
        r = segment_regions(m, a, b)
        sec = time.perf_counter() - t0
        dense = sampled_segment_regions(m, a[:1], b[:1], n=n_dense)
        missed = 1 - int(dense[0]) / int(r.n_distinct[0])
        results.append({"label": f"{label}, {n_cnn} segments, walk", "seconds": sec,
                        "segment_fraction": frac,
                        "segments_per_s": n_cnn / sec,
                        "regions_per_s": float(r.counts.sum()) / sec,
                        "pieces_mean": float(r.counts.double().mean()),
                        "distinct_codes_mean": float(r.n_distinct.double().mean()),
                        f"dense_{n_dense}_missed_fraction": missed})
    write_json(args.json, "regions", {"quick": args.quick, "mlp_only": args.mlp_only,
                                      "segments": n_seg,
                                      "numpy_segments_timed": n_np, "repeat": repeat},
               results, ratios)


if __name__ == "__main__":
    main()
