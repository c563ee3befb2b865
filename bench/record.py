"""What recording the neural codes costs over the forward pass alone.

For three models (eval, no_grad; MLP 784-512x3 at batch 256, MLP 784-64 at batch 64, the
ResNet of ``experiments.models`` on 3x32x32 at batch 128):
  plain_inference        the model's forward alone / ``with record(model)`` around it, the
                         model converted (our ReLU modules hand their words to the recorder)
  plain_inference_hooks  the unconverted model (torch's nn.ReLU) alone / recorded through hooks
  plain_inference_torch  the unconverted model alone / the converted model recorded: the whole
                         cost for a user who converts to record
And ``extract_codes`` over a DataLoader of 60k MNIST-sized random inputs (10k with --quick)
against the same loop without recording (``plain_loop``). Every recorded code is checked
against the pure-PyTorch sign pattern before timing. Interleaved rounds (each timing about 10 ms
of calls: the ratios are within a few percent of 1, and shorter timings spread them by about as
much on a noisy machine), medians.
The heap is kept steady (common.steady_heap): with glibc's defaults the ResNet's page faults
alone moved its ratios between 0.77 and 1.06; --default-heap keeps the defaults.
--device DEV: the same cases with the models and inputs on that device (the loader's batches
moved there by extract_codes, as by the plain loop), each timing synchronized; --smoke: 512
loader samples, one round.
"""
import copy

import torch
from torch.utils.data import DataLoader, TensorDataset

import activation_hash as ah
from activation_hash import reference as ref
from activation_hash.experiments.models import MLP, ResNet
from activation_hash.nn import convert
from common import median, parse_args, steady_heap, synced, timeit_interleaved, write_json


def models(device):
    torch.manual_seed(0)
    for label, net, x in [
            ("mlp 784-512x3", MLP((1, 28, 28), 10, width=512, depth=3), torch.randn(256, 1, 28, 28)),
            ("mlp 784-64", MLP((1, 28, 28), 10, width=64, depth=1), torch.randn(64, 1, 28, 28)),
            ("resnet 16-32-64", ResNet((3, 32, 32), 10), torch.randn(128, 3, 32, 32))]:
        yield label, net.to(device), x.to(device)


def recorded(model, x):
    with ah.record(model) as rec:
        model(x)
    return rec.codes


def check_codes(model, x, codes) -> None:
    """The recorded code equals the signs of every ReLU input, computed by hand."""
    want = []
    hooks = [m.register_forward_pre_hook(lambda m, a: want.append(ref.pack_signs(a[0])))
             for m in model.modules() if isinstance(m, torch.nn.ReLU)]
    model(x)  # unconverted: torch ReLU modules
    for h in hooks:
        h.remove()
    assert torch.equal(codes, torch.cat(want, 1)), "recorded codes differ from the sign pattern"


def main():
    args = parse_args(__doc__.splitlines()[0], lambda p: p.add_argument(
        "--default-heap", action="store_true",
        help="glibc's malloc defaults (the heap trimmed and large blocks mapped afresh)"))
    heap = "default" if args.default_heap else steady_heap()
    dev = args.device or torch.device("cpu")
    repeat = 1 if args.smoke else 15 if args.quick else 41
    results, ratios = [], {}
    with torch.no_grad():
        for label, conv_model, x in models(dev):
            conv_model = conv_model.eval()
            torch_model = convert(copy.deepcopy(conv_model), reverse=True).eval()
            check_codes(torch_model, x, recorded(conv_model, x))
            check_codes(torch_model, x, recorded(torch_model, x))
            times = timeit_interleaved({k: synced(f, args.device) for k, f in {
                "plain": lambda: conv_model(x),
                "record": lambda: recorded(conv_model, x),
                "plain_torch": lambda: torch_model(x),
                "record_hooks": lambda: recorded(torch_model, x),
            }.items()}, repeat=repeat, warmup=2, number="auto", seconds=1e-3 if args.smoke else 1e-2)
            t = {k: median(v) for k, v in times.items()}
            for k, v in t.items():
                results.append({"label": f"{label} {k}", "seconds": v, "batch": x.shape[0]})
            ratios[f"plain_inference[{label}]"] = t["plain"] / t["record"]
            ratios[f"plain_inference_hooks[{label}]"] = t["plain_torch"] / t["record_hooks"]
            ratios[f"plain_inference_torch[{label}]"] = t["plain_torch"] / t["record"]

    n = 512 if args.smoke else 10_000 if args.quick else 60_000
    torch.manual_seed(1)
    data = TensorDataset(torch.randn(n, 1, 28, 28), torch.randint(0, 10, (n,)))
    loader = DataLoader(data, batch_size=256)
    model = MLP((1, 28, 28), 10, width=512, depth=3).to(dev).eval()

    def plain_loop():
        with torch.no_grad():
            for xb, _ in loader:
                model(xb.to(dev, non_blocking=True))

    def extract():
        return ah.extract_codes(model, loader, progress=False)

    cb = extract()
    assert len(cb) == n and torch.equal(cb.labels.cpu(), data.tensors[1])
    times = timeit_interleaved({"plain_loop": synced(plain_loop, args.device),
                                "extract_codes": synced(extract, args.device)},
                               repeat=1 if args.smoke else 3 if args.quick else 9, warmup=1)
    t = {k: median(v) for k, v in times.items()}
    for k, v in t.items():
        results.append({"label": f"loader {n} x 784, mlp 784-512x3, {k}", "seconds": v})
    ratios["plain_loop"] = t["plain_loop"] / t["extract_codes"]
    config = {"quick": args.quick, "smoke": args.smoke, "repeat": repeat, "samples": n,
              "device": str(dev), "heap": heap}
    if dev.type == "cuda":
        config["gpu"] = torch.cuda.get_device_name(dev)
    write_json(args.json, "record", config, results, ratios)


if __name__ == "__main__":
    main()
