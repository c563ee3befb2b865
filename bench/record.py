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
against the pure-PyTorch sign pattern before timing. Interleaved rounds, medians.
"""
import copy

import torch
from torch.utils.data import DataLoader, TensorDataset

import activation_hash as ah
from activation_hash import reference as ref
from activation_hash.experiments.models import MLP, ResNet
from activation_hash.nn import convert
from common import median, parse_args, timeit_interleaved, write_json


def models(quick: bool):
    torch.manual_seed(0)
    yield "mlp 784-512x3", MLP((1, 28, 28), 10, width=512, depth=3), torch.randn(256, 1, 28, 28)
    yield "mlp 784-64", MLP((1, 28, 28), 10, width=64, depth=1), torch.randn(64, 1, 28, 28)
    yield "resnet 16-32-64", ResNet((3, 32, 32), 10), torch.randn(128, 3, 32, 32)


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
    args = parse_args(__doc__.splitlines()[0])
    repeat = 7 if args.quick else 21
    results, ratios = [], {}
    with torch.no_grad():
        for label, conv_model, x in models(args.quick):
            conv_model = conv_model.eval()
            torch_model = convert(copy.deepcopy(conv_model), reverse=True).eval()
            check_codes(torch_model, x, recorded(conv_model, x))
            check_codes(torch_model, x, recorded(torch_model, x))
            times = timeit_interleaved({
                "plain": lambda: conv_model(x),
                "record": lambda: recorded(conv_model, x),
                "plain_torch": lambda: torch_model(x),
                "record_hooks": lambda: recorded(torch_model, x),
            }, repeat=repeat, warmup=2)
            t = {k: median(v) for k, v in times.items()}
            for k, v in t.items():
                results.append({"label": f"{label} {k}", "seconds": v, "batch": x.shape[0]})
            ratios[f"plain_inference[{label}]"] = t["plain"] / t["record"]
            ratios[f"plain_inference_hooks[{label}]"] = t["plain_torch"] / t["record_hooks"]
            ratios[f"plain_inference_torch[{label}]"] = t["plain_torch"] / t["record"]

    n = 10_000 if args.quick else 60_000
    torch.manual_seed(1)
    data = TensorDataset(torch.randn(n, 1, 28, 28), torch.randint(0, 10, (n,)))
    loader = DataLoader(data, batch_size=256)
    model = MLP((1, 28, 28), 10, width=512, depth=3).eval()

    def plain_loop():
        with torch.no_grad():
            for xb, _ in loader:
                model(xb)

    def extract():
        return ah.extract_codes(model, loader, progress=False)

    cb = extract()
    assert len(cb) == n and torch.equal(cb.labels, data.tensors[1])
    times = timeit_interleaved({"plain_loop": plain_loop, "extract_codes": extract},
                               repeat=3 if args.quick else 5, warmup=1)
    t = {k: median(v) for k, v in times.items()}
    for k, v in t.items():
        results.append({"label": f"loader {n} x 784, mlp 784-512x3, {k}", "seconds": v})
    ratios["plain_loop"] = t["plain_loop"] / t["extract_codes"]
    write_json(args.json, "record", {"quick": args.quick, "repeat": repeat, "samples": n},
               results, ratios)


if __name__ == "__main__":
    main()
