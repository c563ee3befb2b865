"""Exact 2-D slices: ours against regioncam on planes through three Gaussian inputs.

MLPs 784-64x3 and 784-128x3 (He init, 10 outputs), planes through 3 Gaussian inputs:
  regioncam_2d   regioncam's Regioncam.through_points(points) (Rust, float32, one thread) with
                 the network added; ours gets the same plane and window (regioncam's plane
                 map composed in front of the model as a 2 -> 784 Linear, box = its square),
                 float64. Face counts are asserted identical before any ratio is written.
Then, ours only: plane_regions(model, a, b, c) (our own window), and a small CNN with
max-pooling on 1x8x8 inputs (1-3-4 channels) (faces per second). Torch runs one thread (--threads 1 default
here: regioncam has one).
"""
import numpy as np
import torch
from torch import nn

from activation_hash.slices import plane_regions
from common import cpu_only, median, parse_args, timeit_interleaved, write_json
from regions import he_mlp  # bench/regions.py: the same He-init MLPs


def cnn(seed=1):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Flatten(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 10)).eval()


def main():
    import sys
    if "--threads" not in " ".join(sys.argv):
        sys.argv += ["--threads", "1"]
    import regioncam as rc

    args = parse_args(__doc__.splitlines()[0])
    cpu_only(args, "slices", "its baseline, regioncam, is a CPU tool")
    widths = [64] if args.quick else [64, 128]
    repeat = 3 if args.quick else 5
    results, ratios = [], {}
    for width in widths:
        model = he_mlp(width=width, depth=3)
        torch.manual_seed(3)
        pts = torch.randn(3, 784)
        net = rc.nn.convert(model)

        def theirs():
            cam = rc.Regioncam.through_points(pts.numpy())
            cam.add(net)
            return cam
        cam = theirs()
        W = torch.tensor(np.asarray(cam.plane.weight))      # [2, 784] float32
        b = torch.tensor(np.asarray(cam.plane.bias))
        s = float(np.abs(np.asarray(cam.vertex_inputs)).max())
        lin = nn.Linear(2, 784)
        lin.weight.data, lin.bias.data = W.T.contiguous(), b.clone()
        composed = nn.Sequential(lin, *model).eval()
        box = (-s, s, -s, s)
        ours = plane_regions(composed, box=box)
        assert len(ours) == cam.num_faces, f"faces: ours {len(ours)}, regioncam {cam.num_faces}"
        times = timeit_interleaved({"ours": lambda: plane_regions(composed, box=box),
                                    "regioncam": theirs,
                                    "ours_abc": lambda: plane_regions(model, *pts)},
                                   repeat=repeat, warmup=1)
        t = {k: median(v) for k, v in times.items()}
        n_abc = len(plane_regions(model, *pts))
        label = f"mlp 784-{width}x3, plane through 3 gaussian inputs"
        results += [{"label": f"{label}, ours", "seconds": t["ours"], "faces": len(ours),
                     "faces_per_s": len(ours) / t["ours"]},
                    {"label": f"{label}, regioncam", "seconds": t["regioncam"],
                     "faces": cam.num_faces},
                    {"label": f"{label}, ours, own window (margin 0.25)",
                     "seconds": t["ours_abc"], "faces": n_abc,
                     "faces_per_s": n_abc / t["ours_abc"]}]
        ratios[f"regioncam_2d_784-{width}x3"] = t["regioncam"] / t["ours"]
    ratios["regioncam_2d"] = min(ratios.values())
    m = cnn()
    torch.manual_seed(4)
    a, b, c = torch.randn(3, 1, 8, 8)
    times = timeit_interleaved({"cnn": lambda: plane_regions(m, a, b, c)}, repeat=1, warmup=0)
    r = plane_regions(m, a, b, c)
    sec = median(times["cnn"])
    results.append({"label": "cnn max-pool 1x8x8, plane through 3 gaussian inputs, ours",
                    "seconds": sec, "faces": len(r), "faces_per_s": len(r) / sec,
                    "distinct_codes": int(torch.unique(r.codes.codes, dim=0).shape[0])})
    write_json(args.json, "slices", {"quick": args.quick, "widths": widths, "repeat": repeat},
               results, ratios)


if __name__ == "__main__":
    main()
