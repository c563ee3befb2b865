"""Experiment datasets (readers on files written in the real formats), subsets, label noise,
models and training."""
import gzip
import pickle
import struct

import numpy as np
import pytest
import torch

from activation_hash.experiments import datasets as ds
from activation_hash.experiments.models import MLP, build_model
from activation_hash.experiments.training import (TrainConfig, log_checkpoints, paper_checkpoints,
                                                  make_optimizer, paper_mlp, split_decay,
                                                  train)
from activation_hash import ReLU, record


# ---- IDX ------------------------------------------------------------------------------------

def write_idx(path, array, gz=False):
    a = np.asarray(array, dtype=np.uint8)
    head = bytes([0, 0, 0x08, a.ndim]) + struct.pack(f">{a.ndim}I", *a.shape)
    raw = head + a.tobytes()
    if gz:
        path = path.with_name(path.name + ".gz")
        with gzip.open(path, "wb") as f:
            f.write(raw)
    else:
        path.write_bytes(raw)
    return path


def fake_idx_dir(d, gz, n_train=30, n_test=10, seed=0):
    rng = np.random.default_rng(seed)
    imgs = {"train": rng.integers(0, 256, (n_train, 28, 28)), "t10k": rng.integers(0, 256, (n_test, 28, 28))}
    labels = {"train": np.arange(n_train) % 10, "t10k": np.arange(n_test) % 10}
    for part in ("train", "t10k"):
        write_idx(d / f"{part}-images-idx3-ubyte", imgs[part], gz)
        write_idx(d / f"{part}-labels-idx1-ubyte", labels[part], gz)
    return imgs, labels


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("name", ["mnist", "fashion-mnist"])
def test_idx_reader(tmp_path, gz, name):
    imgs, labels = fake_idx_dir(tmp_path, gz)
    raw = ds.read_idx(next(tmp_path.glob("train-images*")))
    assert raw.shape == (30, 28, 28) and raw.dtype == np.uint8
    assert np.array_equal(raw, imgs["train"])
    data = ds.load_dataset(name, root=tmp_path)
    assert data.x_train.shape == (30, 1, 28, 28) and data.x_test.shape == (10, 1, 28, 28)
    assert data.y_train.tolist() == labels["train"].tolist()
    assert data.y_test.tolist() == labels["t10k"].tolist()
    # standardized with the training statistics: pixel order preserved
    flat = torch.tensor(imgs["train"], dtype=torch.float32).flatten()
    assert torch.corrcoef(torch.stack([flat, data.x_train.flatten()]))[0, 1] > 0.9999
    assert abs(float(data.x_train.mean())) < 1e-4


@pytest.mark.parametrize("name", ["mnist", "fashion-mnist"])
@pytest.mark.parametrize("dotted", [False, True, "mixed"])
@pytest.mark.parametrize("gz", [False, True])
def test_idx_dotted_file_names(tmp_path, name, dotted, gz):
    """Both train-images-idx3-ubyte and train-images.idx3-ubyte (raw or .gz) are found."""
    rng = np.random.default_rng(1)
    stems = ["train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
             "t10k-labels-idx1-ubyte"]
    arrays = [rng.integers(0, 256, (12, 28, 28)), np.arange(12) % 10,
              rng.integers(0, 256, (5, 28, 28)), np.arange(5) % 10]
    d = tmp_path / ("MNIST" if name == "mnist" else "FashionMNIST") / "raw"
    d.mkdir(parents=True)
    written = []
    for i, (stem, a) in enumerate(zip(stems, arrays)):
        dot = dotted is True or (dotted == "mixed" and i % 2 == 1)
        written.append(write_idx(d / (stem.replace("-idx", ".idx") if dot else stem), a, gz))
    assert any(".idx" in p.name for p in written) == bool(dotted)
    data = ds.load_dataset(name, root=tmp_path)
    assert data.y_train.tolist() == arrays[1].tolist() and data.y_test.tolist() == arrays[3].tolist()
    assert data.x_train.shape == (12, 1, 28, 28) and data.x_test.shape == (5, 1, 28, 28)
    assert sorted(data.meta["files"].values()) == sorted(str(p) for p in written)
    assert ds.idx_names("train-images-idx3-ubyte") == [
        "train-images-idx3-ubyte", "train-images-idx3-ubyte.gz", "train-images.idx3-ubyte",
        "train-images.idx3-ubyte.gz"]


def test_idx_subdirectory_and_int_types(tmp_path):
    sub = tmp_path / "mnist"
    sub.mkdir()
    fake_idx_dir(sub, gz=True)
    assert len(ds.load_dataset("mnist", root=tmp_path).y_train) == 30
    # a big-endian int32 IDX file
    a = np.arange(6, dtype=">i4").reshape(2, 3)
    p = tmp_path / "ints"
    p.write_bytes(bytes([0, 0, 0x0C, 2]) + struct.pack(">2I", 2, 3) + a.tobytes())
    assert ds.read_idx(p).tolist() == [[0, 1, 2], [3, 4, 5]]


def test_idx_errors(tmp_path):
    with pytest.raises(FileNotFoundError) as e:
        ds.load_dataset("mnist", root=tmp_path)
    msg = str(e.value)
    assert "train-images-idx3-ubyte" in msg and "t10k-labels-idx1-ubyte" in msg and str(tmp_path) in msg
    assert "train-images.idx3-ubyte" in msg
    bad = tmp_path / "bad"
    bad.write_bytes(b"\x01\x02\x03\x04rest")
    with pytest.raises(ValueError, match="not an IDX file"):
        ds.read_idx(bad)
    short = tmp_path / "short"
    short.write_bytes(bytes([0, 0, 8, 1]) + struct.pack(">I", 10) + b"\x00" * 5)
    with pytest.raises(ValueError, match="10"):
        ds.read_idx(short)


# ---- CIFAR-10 -------------------------------------------------------------------------------

def fake_cifar(d, binary, n=4, seed=0):
    rng = np.random.default_rng(seed)
    out = {}
    for i, name in enumerate(ds.CIFAR_PY):
        data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        labels = [(i + j) % 10 for j in range(n)]
        out[name] = (data, labels)
        if binary:
            rec = np.concatenate([np.array(labels, dtype=np.uint8)[:, None], data], 1)
            (d / (name + ".bin")).write_bytes(rec.tobytes())
        else:
            batch = {b"batch_label": b"fake", b"labels": labels, b"data": data,
                     b"filenames": [b"f%d.png" % j for j in range(n)]}
            (d / name).write_bytes(pickle.dumps(batch, protocol=2))
    return out


@pytest.mark.parametrize("binary", [False, True])
def test_cifar_reader(tmp_path, binary):
    sub = tmp_path / ("cifar-10-batches-bin" if binary else "cifar-10-batches-py")
    sub.mkdir()
    truth = fake_cifar(sub, binary)
    data = ds.load_dataset("cifar10", root=tmp_path)
    assert data.x_train.shape == (20, 3, 32, 32) and data.x_test.shape == (4, 3, 32, 32)
    assert data.y_train.tolist() == sum((truth[f"data_batch_{i}"][1] for i in range(1, 6)), [])
    assert data.y_test.tolist() == truth["test_batch"][1]
    imgs, _ = ds.load_cifar_batch(sub / ("test_batch" + (".bin" if binary else "")))
    assert np.array_equal(imgs.reshape(4, -1), truth["test_batch"][0])
    assert data.meta["format"] == ("binary" if binary else "python")


def test_cifar_numpy_protocol5_pickle(tmp_path):
    data = np.arange(2 * 3072, dtype=np.uint8).reshape(2, 3072)
    p = tmp_path / "b"
    p.write_bytes(pickle.dumps({"data": data, "labels": [1, 2]}, protocol=5))
    imgs, labels = ds.load_cifar_batch(p)
    assert np.array_equal(imgs.reshape(2, -1), data) and labels.tolist() == [1, 2]


RAN = []


def _side_effect(arg):  # what a malicious pickle would call
    RAN.append(arg)
    return {"data": np.zeros((1, 3072), np.uint8), "labels": [0]}


class _Evil:
    def __reduce__(self):
        return (_side_effect, ("pwned",))


def test_cifar_malicious_pickle_runs_no_code(tmp_path):
    p = tmp_path / "data_batch_1"
    p.write_bytes(pickle.dumps(_Evil()))
    pickle.loads(p.read_bytes())  # the plain unpickler would run it ...
    assert RAN == ["pwned"]
    RAN.clear()
    with pytest.raises(pickle.UnpicklingError, match="refusing"):
        ds.load_cifar_batch(p)  # ... ours refuses before calling anything
    assert RAN == []
    p.write_bytes(pickle.dumps({"data": [__import__("os").getcwd], "labels": []}))
    with pytest.raises(pickle.UnpicklingError, match="posix.getcwd|refusing"):
        ds.load_cifar_batch(p)


def test_cifar_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match="data_batch_1.*cifar-10-batches-py"):
        ds.load_dataset("cifar10", root=tmp_path)


# ---- digits, synthetic, subsets, noise ------------------------------------------------------

def test_digits_fixed_split():
    a, b = ds.load_dataset("digits", seed=0), ds.load_dataset("digits", seed=5)
    assert a.x_train.shape == (1348, 1, 8, 8) and a.x_test.shape == (449, 1, 8, 8)
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.y_test, b.y_test)
    assert a.n_classes == 10 and sorted(set(a.y_test.tolist())) == list(range(10))


@pytest.mark.parametrize("name", ["moons", "circles", "spirals", "random"])
def test_synthetic(name):
    d = ds.load_dataset(name, n_samples=200, seed=3)
    assert d.x_train.shape[1] == 2 and len(d.y_train) + len(d.y_test) == 200
    assert torch.equal(d.x_train, ds.load_dataset(name, n_samples=200, seed=3).x_train)
    assert d.meta["jitter"] == 0.1 and "noise" not in d.meta
    assert d.meta["label_noise"] == d.meta["noise_rate_true"] == 0.0


def test_synthetic_jitter_is_not_label_noise():
    calm = ds.load_dataset("moons", n_samples=200, seed=3, jitter=0.0)
    wild = ds.load_dataset("moons", n_samples=200, seed=3, jitter=0.3)
    assert calm.meta["jitter"] == 0.0 and wild.meta["jitter"] == 0.3
    assert torch.equal(calm.y_train, wild.y_train) and not torch.equal(calm.x_train, wild.x_train)
    both = ds.load_dataset("moons", n_samples=200, seed=3, jitter=0.3, label_noise=0.1)
    assert both.meta["jitter"] == 0.3 and both.meta["label_noise"] == 0.1
    assert both.meta["noise_rate_true"] == 15 / 150 == both.meta["n_noisy"] / 150
    with pytest.raises(TypeError, match="noise"):
        ds.load_dataset("moons", noise=0.2)


def test_stratified_subset():
    y = torch.tensor([0] * 50 + [1] * 30 + [2] * 20)
    idx = ds.stratified_subset(y, 10, seed=1)
    assert len(set(idx.tolist())) == 10
    assert torch.bincount(y[idx]).tolist() == [5, 3, 2]
    assert torch.equal(idx, ds.stratified_subset(y, 10, seed=1))
    assert not torch.equal(idx, ds.stratified_subset(y, 10, seed=2))
    with pytest.raises(ValueError, match="subset size"):
        ds.stratified_subset(y, 101)
    d = ds.load_dataset("digits", n_train=100, n_test=50, seed=0)
    assert len(d.y_train) == 100 and len(d.y_test) == 50
    assert torch.bincount(d.y_train, minlength=10).min() >= 9


@pytest.mark.parametrize("rate", [0.0, 0.1, 0.333, 0.5, 1.0])
def test_label_noise_exact(rate):
    y = torch.arange(1000) % 7
    noisy, info = ds.add_label_noise(y, rate, 7, seed=4)
    changed = (noisy != y)
    assert int(changed.sum()) == round(rate * 1000) == info["n_changed"]
    assert info["true_rate"] == round(rate * 1000) / 1000
    assert torch.equal(changed, info["changed"])
    assert noisy.min() >= 0 and noisy.max() < 7
    assert torch.equal(noisy, ds.add_label_noise(y, rate, 7, seed=4)[0])
    if rate == 1.0:  # every wrong class is used, about uniformly
        counts = torch.bincount((noisy - y) % 7, minlength=7)
        assert counts[0] == 0 and counts[1:].min() > 100


def test_label_noise_in_dataset_and_errors():
    d = ds.load_dataset("digits", label_noise=0.2, seed=1)
    assert d.meta["noise_rate_true"] == round(0.2 * 1348) / 1348
    assert int((d.y_train != d.y_train_clean).sum()) == round(0.2 * 1348) == d.meta["n_noisy"]
    with pytest.raises(ValueError, match="label noise rate"):
        ds.add_label_noise(torch.zeros(3, dtype=torch.int64), 1.5, 2)
    with pytest.raises(ValueError, match="unknown dataset"):
        ds.load_dataset("imagenet")


# ---- models and training --------------------------------------------------------------------

@pytest.mark.parametrize("spec,shape,units", [
    ({"arch": "mlp", "width": 5, "depth": 2, "batch_norm": True, "dropout": 0.1}, (1, 8, 8), 10),
    ({"arch": "cnn", "channels": [4, 6]}, (1, 8, 8), 4 * 64 + 6 * 16),
    ({"arch": "vgg", "cfg": [4, "M", 8, "M"], "hidden": 7}, (3, 8, 8), 4 * 64 + 8 * 16 + 7),
    ({"arch": "resnet", "widths": [4, 8], "blocks": 1}, (3, 8, 8), 4 * 64 * 3 + 8 * 16 * 2),
])
def test_models_use_our_relu(spec, shape, units):
    torch.manual_seed(0)
    m = build_model(spec, shape, 10).eval()
    assert any(isinstance(x, ReLU) for x in m.modules())
    assert not any(type(x) is torch.nn.ReLU for x in m.modules())
    with record(m) as rec, torch.no_grad():
        out = m(torch.randn(3, *shape))
    assert out.shape == (3, 10)
    assert rec.layout.total_bits == units


def test_build_model_errors():
    with pytest.raises(ValueError, match="unknown model arch"):
        build_model("transformer", (4,), 2)
    with pytest.raises(TypeError, match="bad options for model 'mlp'"):
        build_model({"arch": "mlp", "kernel": 3}, (4,), 2)
    with pytest.raises(ValueError, match="image inputs"):
        build_model("cnn", (4,), 2)


def test_checkpoint_epochs():
    assert paper_checkpoints(200)[:7] == [0, 1, 3, 6, 10, 20, 30] and paper_checkpoints(200)[-1] == 200
    assert paper_checkpoints(25) == [0, 1, 3, 6, 10, 20, 25]
    assert log_checkpoints(100, 5) == [0, 1, 3, 10, 32, 100]
    cfg = paper_mlp()
    assert (cfg.lr, cfg.lr_step, cfg.batch_size, cfg.patience, cfg.val_fraction) == (1e-2, 20, 64, 10, 0.2)


def _train_digits(**kw):
    data = ds.load_dataset("digits", n_train=300, seed=0)
    torch.manual_seed(0)
    model = MLP(data.input_shape, 10, width=16, batch_norm=True)
    seen = []
    res = train(model, data, TrainConfig(epochs=6, lr=1e-2, checkpoints=[0, 3, 6], **kw),
                on_checkpoint=lambda e, m, r: seen.append((e, m.training)))
    return model, res, seen


def test_training_deterministic_and_learns():
    m1, r1, seen = _train_digits()
    m2, r2, _ = _train_digits()
    assert seen == [(0, False), (3, False), (6, False)]
    for a, b in zip(m1.state_dict().values(), m2.state_dict().values()):
        assert torch.equal(a, b)
    assert r1.test_accuracy == r2.test_accuracy and r1.test_accuracy > 0.8
    assert [h["epoch"] for h in r1.history] == list(range(1, 7))
    assert r1.history[-1]["loss"] < r1.history[0]["loss"]


def test_training_options():
    _, r, _ = _train_digits(optimizer="sgd", lr_step=2, lr_gamma=0.5, weight_decay=1e-4,
                            val_fraction=0.2, patience=1, epoch_size=500)
    assert [h["lr"] for h in r.history[:3]] == [1e-2, 1e-2, 5e-3][:len(r.history[:3])]
    assert len(r.train_idx) == 240 and 1 <= r.stopped <= 6
    with pytest.raises(ValueError, match="validation split"):
        TrainConfig(patience=3)
    with pytest.raises(ValueError, match="unknown training option"):
        TrainConfig.from_dict({"epoch": 3})


def test_paper_preset_decays_kernels_only():
    model = MLP((1, 8, 8), 10, width=6, depth=2, batch_norm=True)
    cfg = paper_mlp()
    assert cfg.decay_bias_bn is False and cfg.weight_decay == 2e-6
    groups = make_optimizer(model, cfg).param_groups
    by_decay = {g["weight_decay"]: {id(p) for p in g["params"]} for g in groups}
    kernels = {id(m.weight) for m in model if isinstance(m, torch.nn.Linear)}
    rest = {id(p) for p in model.parameters()} - kernels
    assert by_decay == {2e-6: kernels, 0.0: rest} and len(rest) == 3 + 2 * 2  # 3 Linear biases, 2 BN x (w, b)
    (only,) = make_optimizer(model, TrainConfig(weight_decay=1e-3)).param_groups  # default: all
    assert only["weight_decay"] == 1e-3 and len(only["params"]) == len(list(model.parameters()))
    cnn = build_model({"arch": "resnet", "widths": [4], "batch_norm": True}, (3, 8, 8), 10)
    k, o = split_decay(cnn)
    assert all(p.dim() >= 2 for p in k) and all(p.dim() == 1 for p in o) and o


@pytest.mark.parametrize("decay_bias_bn", [False, True])
def test_kernels_only_decay_leaves_bias_and_bn_alone(decay_bias_bn):
    # one SGD step on the whole set: with and without a huge decay, the first update of a
    # parameter differs only by the decay term, so undecayed parameters end up identical
    data = ds.load_dataset("moons", n_samples=100, seed=0)
    out = []
    for wd in (0.0, 10.0):
        torch.manual_seed(0)
        model = MLP(data.input_shape, 2, width=8, batch_norm=True)
        start = {n: p.detach().clone() for n, p in model.named_parameters()}
        train(model, data, TrainConfig(epochs=1, batch_size=75, optimizer="sgd", lr=0.1,
                                       weight_decay=wd, decay_bias_bn=decay_bias_bn))
        out.append(dict(model.named_parameters()))
    for name, p in out[0].items():
        is_kernel = name.endswith("weight") and p.dim() == 2
        decayed = is_kernel or (decay_bias_bn and bool(start[name].any()))  # decay of 0 is 0
        assert torch.equal(p, out[1][name]) == (not decayed), name


@pytest.mark.parametrize("spec", [{"arch": "cnn", "channels": [4]},
                                  {"arch": "vgg", "cfg": [4, "M"], "hidden": 8},
                                  {"arch": "resnet", "widths": [4, 8]}])
def test_conv_models_train(spec):
    data = ds.load_dataset("digits", n_train=128, n_test=64, seed=0)
    torch.manual_seed(0)
    model = build_model(spec, data.input_shape, 10)
    res = train(model, data, TrainConfig(epochs=3, lr=1e-2, batch_size=32))
    assert res.history[-1]["loss"] < res.history[0]["loss"]
    assert res.test_accuracy > 0.2


def test_parameter_checks_use_validation():
    """The experiments' checks are activation_hash.validation's: bool is no number, kinds
    raise TypeError, ranges ValueError, each naming the parameter."""
    from activation_hash.experiments.phase import Thresholds

    y = torch.arange(20) % 2
    with pytest.raises(TypeError, match="seed must be an integer"):
        ds.stratified_subset(y, 5, seed=True)
    with pytest.raises(TypeError, match="subset size must be an integer"):
        ds.stratified_subset(y, 5.0)
    with pytest.raises(ValueError, match=r"split fraction must be a finite number in \[0.0, 1.0\)"):
        ds.stratified_split(y, 1.0)
    with pytest.raises(TypeError, match="label noise rate must be a number"):
        ds.add_label_noise(y, True, 2)
    with pytest.raises(TypeError, match="epochs must be an integer"):
        TrainConfig(epochs=True)
    with pytest.raises(ValueError, match="batch_size must be an integer >= 1"):
        TrainConfig(batch_size=0)
    with pytest.raises(ValueError, match="optimizer must be one of 'adam', 'sgd'"):
        TrainConfig(optimizer="rmsprop")
    with pytest.raises(ValueError, match=r"dropout must be a finite number in \[0.0, 1.0\)"):
        MLP((4,), 2, dropout=1.0)
    with pytest.raises(ValueError, match="saturation must be one of"):
        Thresholds(saturation="max")
    with pytest.raises(ValueError, match="acc_eps must be"):
        Thresholds(acc_eps=-0.1)
    import re
    from pathlib import Path

    pkg = Path(ds.__file__).resolve().parents[1]  # no private _check_* imported across modules
    for path in [*(pkg / "experiments").glob("*.py"), pkg / "cli.py", pkg / "fileio.py"]:
        assert not re.search(r"import[^\n]*\b_check_\w+", path.read_text()), path
