"""CodeBook views and selection, extract_codes (order, tail, eval mode, labels, layers)."""
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

import activation_hash as ah
from activation_hash import reference as ref
from activation_hash.codes import CodeBook, as_codes
from activation_hash.extract import extract_codes
from activation_hash.layout import Layout
from activation_hash.nn import convert
from activation_hash.record import record

LAYOUT = Layout(("a", "b", "c"), ((70,), (2, 3), (64,)))  # words 2 + 1 + 1


def random_codebook(n=9, seed=0, labels=True):
    g = torch.Generator().manual_seed(seed)
    bits = torch.rand(n, LAYOUT.total_bits, generator=g) < 0.5
    parts, at = [], 0
    for u in LAYOUT.units:
        parts.append(ref.pack_bits(bits[:, at:at + u]))
        at += u
    lab = torch.randint(0, 3, (n,), generator=g) if labels else None
    return CodeBook(torch.cat(parts, 1), LAYOUT, labels=lab, ids=torch.arange(100, 100 + n),
                    meta={"k": 1}), bits


def test_codebook_views():
    cb, bits = random_codebook()
    assert len(cb) == 9 and cb.n_bits == 70 + 6 + 64 and cb.n_words == 4
    assert torch.equal(cb.bits(), bits)
    raw = cb.as_bytes()
    assert raw.dtype == np.uint8 and raw.shape == (9, 32) and raw.flags["C_CONTIGUOUS"]
    at = 0
    for o, w, u in zip(LAYOUT.word_offsets, LAYOUT.words_per_layer, LAYOUT.units):
        packed = np.packbits(bits[:, at:at + u].numpy(), axis=1, bitorder="little")
        block = raw[:, 8 * o:8 * (o + w)]
        assert np.array_equal(block[:, :packed.shape[1]], packed)
        assert not block[:, packed.shape[1]:].any()  # padding bytes are 0
        at += u


def test_codebook_selection():
    cb, bits = random_codebook()
    one = cb[3]
    assert len(one) == 1 and torch.equal(one.codes, cb.codes[3:4]) and one.ids.tolist() == [103]
    assert cb[-1].ids.tolist() == [108]
    assert torch.equal(cb[2:5].codes, cb.codes[2:5]) and cb[2:5].labels.tolist() == \
        cb.labels[2:5].tolist()
    idx = torch.tensor([4, 0, 4])
    assert torch.equal(cb[idx].codes, cb.codes[idx]) and cb[[4, 0, 4]].ids.tolist() == [104, 100, 104]
    mask = cb.labels == 1
    assert torch.equal(cb[mask].codes, cb.codes[mask])
    assert torch.equal(cb[np.array([1, 2])].codes, cb.codes[1:3])
    sel = cb.select_layers(["c", 0])
    assert sel.layout.names == ("c", "a") and sel.n_bits == 64 + 70
    assert torch.equal(sel.bits(), torch.cat([bits[:, 76:], bits[:, :70]], 1))
    assert torch.equal(cb.select_layers("b").bits(), bits[:, 70:76])
    tr = cb.truncate(2)
    assert tr.layout.names == ("a", "b") and torch.equal(tr.bits(), bits[:, :76])
    assert cb.truncate(0).n_words == 0
    both = CodeBook.concat([cb[:4], cb[4:]])
    assert torch.equal(both.codes, cb.codes) and torch.equal(both.labels, cb.labels)
    assert torch.equal(both.ids, cb.ids) and both.meta == {"k": 1}
    assert cb.to("cpu").codes.device.type == "cpu"
    codes, labels = as_codes(cb)
    assert codes is cb.codes and labels is cb.labels
    assert as_codes(cb.codes)[1] is None
    assert torch.equal(as_codes((cb.codes, [0] * 9))[1], torch.zeros(9, dtype=torch.int64))


def test_codebook_errors():
    cb, _ = random_codebook()
    with pytest.raises(TypeError, match="int64"):
        CodeBook(cb.codes.float(), LAYOUT)
    with pytest.raises(ValueError, match=r"shape \[N, 4\]"):
        CodeBook(cb.codes[:, :3], LAYOUT)
    with pytest.raises(TypeError, match="Layout"):
        CodeBook(cb.codes, {"names": []})
    with pytest.raises(ValueError, match=r"labels must be 1-D class labels of shape \[9\]"):
        CodeBook(cb.codes, LAYOUT, labels=torch.zeros(8, dtype=torch.int64))
    with pytest.raises(TypeError, match="labels must be integer class labels"):
        CodeBook(cb.codes, LAYOUT, labels=torch.zeros(9))
    with pytest.raises(IndexError, match="out of range"):
        cb[9]
    with pytest.raises(IndexError, match="sample indices"):
        cb[torch.tensor([0, 9])]
    with pytest.raises(ValueError, match="bool mask"):
        cb[torch.ones(3, dtype=torch.bool)]
    with pytest.raises(TypeError, match="indexed by"):
        cb["a"]
    with pytest.raises(ValueError, match="no layer named"):
        cb.select_layers(["zz"])
    with pytest.raises(ValueError, match="n_layers"):
        cb.truncate(4)
    other = CodeBook(torch.zeros(1, 1, dtype=torch.int64), Layout(("z",), ((3,),)))
    with pytest.raises(ValueError, match="one layout"):
        CodeBook.concat([cb, other])
    with pytest.raises(ValueError, match="at least one"):
        CodeBook.concat([])
    with pytest.raises(ValueError, match="some CodeBooks have labels"):
        CodeBook.concat([cb, CodeBook(cb.codes, LAYOUT)])
    with pytest.raises(TypeError, match="CodeBook, an int64 tensor"):
        as_codes("codes")


# ---- extraction ------------------------------------------------------------------------

def bn_model():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(5, 40), nn.BatchNorm1d(40), nn.ReLU(), nn.Dropout(0.5),
                      nn.Linear(40, 70), nn.ReLU(), nn.Linear(70, 3))
    with torch.no_grad():  # non-trivial running statistics
        m[1].running_mean.uniform_(-0.5, 0.5)
        m[1].running_var.uniform_(0.5, 2.0)
    return m


def eval_codes(model, x):
    was = model.training
    model.eval()
    with record(model) as rec, torch.no_grad():
        model(x)
    model.train(was)
    return rec.codes, rec.layout


def test_extract_over_dataloader_with_tail_and_train_mode_model():
    model = bn_model()
    model.train()
    model[4].eval()  # a mixed-mode model: each module's mode comes back
    x = torch.randn(103, 5)
    y = torch.randint(0, 10, (103,))
    loader = DataLoader(TensorDataset(x, y), batch_size=16)  # 103 % 16 != 0
    cb = extract_codes(model, loader, progress=False)
    assert model.training and model[1].training and not model[4].training
    want, layout = eval_codes(model, x)
    assert len(cb) == 103 and torch.equal(cb.codes, want) and cb.layout == layout
    assert torch.equal(cb.labels, y)
    # BN in train mode would have given other codes (so the test can fail)
    with record(model) as rec, torch.no_grad():
        model(x)
    assert not torch.equal(rec.codes, want)


def test_extract_inputs_of_every_kind():
    model = convert(bn_model())
    x = torch.randn(37, 5)
    y = torch.randint(0, 4, (37,))
    want, _ = eval_codes(model, x)
    for data in [x, (x, y), TensorDataset(x, y), DataLoader(TensorDataset(x, y), batch_size=8)]:
        cb = extract_codes(model, data, batch_size=10, progress=False)
        assert torch.equal(cb.codes, want)
        assert cb.labels is None if data is x else torch.equal(cb.labels, y)

    class Items(Dataset):
        def __len__(self):
            return 37

        def __getitem__(self, i):
            return x[i], int(y[i])
    cb = extract_codes(model, Items(), batch_size=6, progress=False)
    assert torch.equal(cb.codes, want) and torch.equal(cb.labels, y)


def test_extract_never_shuffles_or_drops(recwarn):
    model = bn_model()
    x = torch.randn(50, 5)
    want, _ = eval_codes(model, x)
    loader = DataLoader(TensorDataset(x, torch.arange(50)), batch_size=8, shuffle=True,
                        drop_last=True)
    with pytest.warns(RuntimeWarning, match="in order"):
        cb = extract_codes(model, loader, progress=False)
    assert torch.equal(cb.codes, want) and cb.labels.tolist() == list(range(50))


def test_extract_layer_selection():
    model = bn_model()
    x = torch.randn(20, 5)
    full = extract_codes(model, x, progress=False)
    assert full.layout.names == ("2", "5")
    by_name = extract_codes(model, x, layers=["5"], progress=False)
    by_index = extract_codes(model, x, layers=[-1], progress=False)
    assert torch.equal(by_name.codes, full.select_layers(["5"]).codes)
    assert torch.equal(by_index.codes, by_name.codes) and by_index.layout.names == ("5",)
    with pytest.raises(ValueError, match="no layer named"):
        extract_codes(model, x, layers=["nope"], progress=False)


def test_extract_errors():
    model = bn_model()
    with pytest.raises(TypeError, match="nn.Module"):
        extract_codes(lambda v: v, torch.zeros(2, 5))
    with pytest.raises(ValueError, match="batch_size"):
        extract_codes(model, torch.zeros(2, 5), batch_size=0)
    with pytest.raises(TypeError, match="data must be"):
        extract_codes(model, 3.0, progress=False)
    with pytest.raises(ValueError, match="without any ReLU"):
        extract_codes(nn.Linear(5, 2), torch.zeros(2, 5), progress=False)
    with pytest.raises(ValueError, match="labels of shape"):
        extract_codes(model, (torch.zeros(4, 5), torch.zeros(3)), progress=False)
    assert model.training  # restored after an error too


def test_extract_empty_data():
    cb = extract_codes(bn_model(), torch.zeros(0, 5), progress=False)
    assert len(cb) == 0 and cb.codes.shape == (0, 0)


# ---- foundation fixes --------------------------------------------------------------------

def test_reference_pack_bits_zero_bits():
    assert ref.pack_bits(torch.zeros(3, 0, dtype=torch.bool)).shape == (3, 0)
    assert ref.pack_signs(torch.zeros(4, 0)).shape == (4, 0)
    assert ref.unpack_bits(torch.zeros(2, 0, dtype=torch.int64), 0).shape == (2, 0)


def test_record_counts_our_relu_once_with_the_reference_backend():
    code = (
        "import torch; from torch import nn\n"
        "import activation_hash as ah\n"
        "from activation_hash.nn import convert\n"
        "from activation_hash.record import record\n"
        "assert ah.backend() == 'reference'\n"
        "m = convert(nn.Sequential(nn.Linear(3, 8), nn.ReLU(), nn.Linear(8, 5), nn.LeakyReLU()))\n"
        "with record(m) as rec, torch.no_grad():\n"
        "    m(torch.randn(4, 3))\n"
        "print(list(rec.layout.names), list(rec.codes.shape))\n")
    env = {**os.environ, "ACTIVATION_HASH_BACKEND": "reference",
           "PYTHONPATH": os.pathsep.join([os.path.dirname(os.path.dirname(ah.__file__)),
                                          os.environ.get("PYTHONPATH", "")])}
    env.pop("ACTIVATION_HASH_REQUIRE_EXTENSION", None)
    out = subprocess.run([sys.executable, "-W", "ignore", "-c", code], env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "['1', '3'] [4, 2]"


def test_as_codes_is_the_one_adapter():
    cb, _ = random_codebook(5)
    c, lab = as_codes(cb)
    assert c is cb.codes and torch.equal(lab, cb.labels)
    arr = cb.codes.numpy().copy()
    c, lab = as_codes(arr)
    assert lab is None and torch.equal(c, cb.codes)
    c[0, 0] += 1
    assert arr[0, 0] == c[0, 0]  # C-contiguous numpy: shared, not copied
    c, lab = as_codes((arr[:, ::-1], np.arange(5)))  # non-contiguous: copied
    assert torch.equal(c, torch.from_numpy(arr[:, ::-1].copy())) and lab.dtype == torch.int64
    c, lab = as_codes((cb, None))  # the tuple's labels win: none
    assert c is cb.codes and lab is None
    c, lab = as_codes((cb, torch.arange(5, dtype=torch.int32)))
    assert lab.tolist() == list(range(5)) and lab.dtype == torch.int64
    with pytest.raises(TypeError, match="queries must hold int64"):
        as_codes(cb.codes.int(), "queries")
    with pytest.raises(TypeError, match="queries must hold int64.*float32"):
        as_codes(np.zeros((2, 2), np.float32), name="queries")
    with pytest.raises(ValueError, match="db must be 2-D"):
        as_codes(torch.zeros(3, dtype=torch.int64), "db")
    with pytest.raises(TypeError, match="db: labels must be integer.*float"):
        as_codes((cb.codes, torch.rand(5)), "db")
    with pytest.raises(TypeError, match="bool"):
        as_codes((cb.codes, np.ones(5, bool)))
    with pytest.raises(ValueError, match=r"labels must be 1-D .*\[5\], got shape \[4\]"):
        as_codes((cb.codes, torch.arange(4)))
    with pytest.raises(ValueError, match="3 items"):
        as_codes((cb.codes, None, None))
    with pytest.raises(TypeError, match="got str"):
        as_codes("codes")
    with pytest.raises(TypeError, match="bool"):
        CodeBook(cb.codes, LAYOUT, labels=torch.ones(5, dtype=torch.bool))


def test_extract_refuses_targets_that_are_no_class_labels():
    model = bn_model()
    x = torch.randn(12, 5)
    for y, err, what in [(torch.rand(12), TypeError, "float"),
                         (torch.zeros(12, 3, dtype=torch.int64), ValueError, "shape"),
                         (torch.ones(12, dtype=torch.bool), TypeError, "bool")]:
        with pytest.raises(err, match=what):
            extract_codes(model, (x, y), batch_size=5, progress=False)
        with pytest.raises(err, match=what):  # dict batches too
            extract_codes(model, [{"x": x[i:i + 4], "y": y[i:i + 4]} for i in (0, 4, 8)],
                          progress=False)
        cb = extract_codes(model, (x, y), batch_size=5, progress=False, labels=False)
        assert cb.labels is None and len(cb) == 12


class _Reversed(torch.utils.data.Sampler):
    def __init__(self, n, b):
        self.n, self.b = n, b

    def __iter__(self):
        idx = list(range(self.n))[::-1]
        return iter([idx[i:i + self.b] for i in range(0, self.n, self.b)])

    def __len__(self):
        return (self.n + self.b - 1) // self.b


def test_extract_refuses_custom_batch_samplers_order():
    from torch.utils.data import BatchSampler, RandomSampler

    model = bn_model()
    x, y = torch.randn(23, 5), torch.arange(23)
    whole = extract_codes(model, (x, y), progress=False)
    ds = TensorDataset(x, y)
    for bs in [_Reversed(23, 4), BatchSampler(RandomSampler(ds), 4, False)]:
        loader = DataLoader(ds, batch_sampler=bs)
        assert isinstance(loader.sampler, torch.utils.data.SequentialSampler)
        with pytest.warns(RuntimeWarning, match="batch_sampler"):
            cb = extract_codes(model, loader, progress=False)
        assert torch.equal(cb.labels, y) and torch.equal(cb.codes, whole.codes)


_WRITE_LOADED = """
import sys, torch
from activation_hash.codes import CodeBook
cb = CodeBook.load(sys.argv[1])
before = cb.codes[0, 0].item()
cb.codes[0, 0] = before + 1
cb.labels[1] = 99
assert cb.codes[0, 0].item() == before + 1 and cb.labels[1].item() == 99
assert CodeBook.load(sys.argv[1]).codes[0, 0].item() == before
print("ok")
"""


def test_writing_a_loaded_codebook_is_private(tmp_path):
    cb, _ = random_codebook(6)
    cb.save(tmp_path / "s")
    files = {p.name: p.read_bytes() for p in (tmp_path / "s").iterdir()}
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [os.path.dirname(os.path.dirname(ah.__file__)), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, "-W", "error::UserWarning", "-c", _WRITE_LOADED,
                          str(tmp_path / "s")], env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", (out.returncode, out.stderr)
    assert {p.name: p.read_bytes() for p in (tmp_path / "s").iterdir()} == files
    back = CodeBook.load(tmp_path / "s", verify=True)
    assert torch.equal(back.codes, cb.codes)
