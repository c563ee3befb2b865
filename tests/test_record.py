"""record(): sites, functional discovery, threads, DataParallel, failures inside a forward.

Every test runs on the recorder of the package (the C core, where the extension is built) and on
the pure-Python core (record_core.PyRecorderCore), which has no fast path."""
import gc
import importlib
import threading
import weakref

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from activation_hash import reference as ref
from helpers import assert_same_values
from activation_hash.nn import ReLU, convert
from activation_hash.ops import HAS_EXTENSION
from activation_hash.record import Recorder, _Recording, find_sites
from activation_hash.record_core import RECORDER_FIELDS, PyRecorderCore


class PyRecorder(_Recording, PyRecorderCore):
    """The recorder on the pure-Python core: every call takes the general methods."""

    __slots__ = ()


record_module = importlib.import_module("activation_hash.record")  # (ah.record is the class)
CORES = {"core": Recorder, **({"python-core": PyRecorder} if HAS_EXTENSION else {})}
record = Recorder  # (the fixture below sets it for each test)


@pytest.fixture(autouse=True, params=list(CORES))
def recorder_class(request, monkeypatch):
    """``record`` of this module (and of find_sites) is each recorder class in turn."""
    cls = CORES[request.param]
    monkeypatch.setitem(globals(), "record", cls)
    monkeypatch.setattr(record_module, "record", cls)
    return cls


class Block(nn.Module):
    def __init__(self, n):
        super().__init__()
        self.lin = nn.Linear(n, n)

    def forward(self, x):
        z = self.lin(x)
        self.pre = z
        return F.relu(z) + x


class Net(nn.Module):
    """Module sites (torch's ReLU, ours), functional sites in the top module and in a block."""

    def __init__(self):
        super().__init__()
        self.a, self.act = nn.Linear(4, 16), nn.ReLU()
        self.block = Block(16)
        self.b, self.ours = nn.Linear(16, 8), ReLU()
        self.c = nn.Linear(8, 3)

    def forward(self, x):
        za = self.a(x)
        h = self.block(self.act(za))
        zb = self.b(h)
        h = self.ours(zb)
        zc = self.c(h)
        self.pre = [za, self.block.pre, zb, zc]
        return torch.relu(zc)


def by_hand(model, x):
    with torch.no_grad():
        model(x)
    return torch.cat([ref.pack_signs(z) for z in model.pre], 1)


def test_sites_and_codes_over_batches_and_recorders():
    torch.manual_seed(0)
    model = Net().eval()
    xs = [torch.randn(5, 4), torch.randn(3, 4), torch.randn(6, 4)]
    for _ in range(2):  # the second recorder reuses what the first one found
        with record(model) as rec, torch.no_grad():
            for x in xs:
                model(x)
        assert rec.layout.names == ("act", "block.relu", "ours", "relu")
        assert [(s.kind, s.op, s.shape) for s in rec.sites] == [
            ("module", "relu", (16,)), ("function", "relu", (16,)), ("module", "relu", (8,)),
            ("function", "relu", (3,))]
        assert rec.sites[0].module is model.act and rec.sites[1].module is model.block
        assert rec.sites[3].module is model
        assert torch.equal(rec.codes, torch.cat([by_hand(model, x) for x in xs]))
    assert [s.name for s in find_sites(model, xs[0])] == list(rec.layout.names)
    assert "forward" not in model.__dict__ and "forward" not in model.act.__dict__


def test_functional_false_watches_modules_only():
    model = Net().eval()
    x = torch.randn(4, 4)
    with record(model, functional=False) as rec, torch.no_grad():
        model(x)
    assert rec.layout.names == ("act", "ours")
    full = by_hand(model, x)
    assert torch.equal(rec.codes, torch.cat([full[:, :1], full[:, 2:3]], 1))


def test_a_failing_forward_keeps_no_partial_batch():
    model = nn.Sequential(nn.Linear(3, 5), ReLU(), nn.Linear(5, 2))
    with record(model) as rec, torch.no_grad():
        model(torch.randn(2, 3))
        with pytest.raises(RuntimeError):
            model(torch.randn(2, 4))  # fails in the first Linear
        with pytest.raises(RuntimeError):
            model[2].weight.data = torch.randn(2, 4)  # fails after the ReLU recorded
            model(torch.randn(2, 3))
        model[2].weight.data = torch.randn(2, 5)
        model(torch.randn(3, 3))
    assert [b.shape[0] for b in rec.batches] == [2, 3]


def test_a_module_added_later_is_recorded():
    model = nn.Sequential(nn.Linear(3, 5), nn.ReLU(), nn.Linear(5, 2))
    with record(model) as rec, torch.no_grad():
        model(torch.randn(2, 3))
    assert rec.layout.names == ("1",)
    model.append(nn.ReLU())
    with record(model) as rec, torch.no_grad():
        model(torch.randn(2, 3))
    assert rec.layout.names == ("1", "3")


def test_two_threads_record_their_own_batches():
    torch.manual_seed(1)
    shared = convert(nn.Sequential(nn.Linear(6, 40), nn.ReLU(), nn.Linear(40, 30), nn.ReLU()))
    other = nn.Sequential(nn.Linear(6, 20), nn.LeakyReLU(0.1), nn.Linear(20, 2)).eval()
    inputs = {k: [torch.randn(7, 6) for _ in range(40)] for k in range(3)}
    models = {0: shared, 1: shared, 2: other}
    got, errors = {}, []
    barrier = threading.Barrier(3)

    def work(k):
        try:
            barrier.wait()
            with record(models[k]) as rec, torch.no_grad():
                for x in inputs[k]:
                    models[k](x)
            got[k] = rec.codes
        except BaseException as err:  # noqa: BLE001 (reported below)
            errors.append(err)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    for k in range(3):
        x = torch.cat(inputs[k])
        with record(models[k]) as alone, torch.no_grad():
            models[k](x)
        assert got[k].shape[0] == 280 and torch.equal(got[k], alone.codes), k


def test_data_parallel_is_refused():
    model = nn.DataParallel(nn.Sequential(nn.Linear(3, 4), nn.ReLU()))
    with pytest.raises(TypeError, match="DataParallel"):
        with record(model):
            pass
    with pytest.raises(TypeError, match="DataParallel"):
        with record(nn.Sequential(model)):
            pass


def test_functional_must_be_a_bool():
    with pytest.raises(TypeError, match="functional must be True or False"):
        record(nn.ReLU(), functional="no")


def test_a_recorded_model_is_freed_and_its_copies_record_themselves():
    """The per-model facts live on the model: deleting a recorded model frees it (no global
    table keeps it), and a deep copy or a pickled copy records its own modules."""
    import copy
    import gc
    import weakref

    net = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    x = torch.randn(5, 3)
    with record(net) as rec:
        net(x)
    want = ref.pack_signs(net[0](x))
    for clone in (copy.deepcopy(net), torch.load(_saved(net), weights_only=False)):
        with record(clone) as rec2:
            clone(x)
        assert rec2.sites[0].module is clone[1]
        assert torch.equal(rec2.codes, want)
    import pickle

    assert b"activation_hash.taps" not in pickle.dumps(net)  # loads without the package
    alive = weakref.ref(net)
    del net, rec
    gc.collect()
    assert alive() is None


def _saved(model):
    import io

    buf = io.BytesIO()
    torch.save(model, buf)
    buf.seek(0)
    return buf


class TwoSites(nn.Module):
    """Our ReLUs only (the direct mode's case); ``swap`` reverses their order."""

    def __init__(self):
        super().__init__()
        self.a, self.r1 = nn.Linear(4, 6), ReLU()
        self.b, self.r2 = nn.Linear(6, 6), ReLU()
        self.swap = False

    def forward(self, x):
        za = self.a(x)
        if self.swap:
            return self.r1(self.b(self.r2(za)))
        zb = self.b(self.r1(za))
        self.pre = [za, zb]
        return self.r2(zb)


def test_a_converted_model_is_recorded_directly_after_its_first_recorder():
    torch.manual_seed(2)
    model = TwoSites().eval()
    xs = [torch.randn(5, 4), torch.randn(1, 4), torch.randn(3, 4)]
    with record(model) as first, torch.no_grad():  # learns the sites (a tap on the model)
        model(xs[0])
    seen = []
    with record(model, on_batch=lambda c, lay: seen.append((c.shape[0], lay.names))) as rec, \
            torch.no_grad():
        assert "forward" not in model.__dict__  # direct: no tap, no hooks
        assert not model._forward_hooks and not model._forward_pre_hooks
        want = [by_hand(model, x) for x in xs]
        rec.batches.clear()
        seen.clear()
        for x in xs:
            model(x)
    assert rec.layout.names == first.layout.names == ("r1", "r2")
    assert [b.shape[0] for b in rec.batches] == [5, 1, 3]
    assert torch.equal(rec.codes, torch.cat(want))
    assert seen == [(5, ("r1", "r2")), (1, ("r1", "r2")), (3, ("r1", "r2"))]
    with record(model, layers=["r2"]) as sel, torch.no_grad():
        model(xs[0])
    assert torch.equal(sel.codes, ref.pack_signs(model.pre[1]))


def test_direct_mode_refuses_a_changed_order_and_a_partial_batch():
    model = TwoSites().eval()
    x = torch.randn(3, 4)
    with record(model), torch.no_grad():
        model(x)
    model.swap = True
    with pytest.raises(ValueError, match="'r2' ran where 'r1' was expected.*functional=True"):
        with record(model), torch.no_grad():
            model(x)
    with record(model, functional=True) as rec, torch.no_grad():  # batch by batch: learns
        model(x)
    assert rec.layout.names == ("r2", "r1")
    model = TwoSites().eval()
    with record(model), torch.no_grad():
        model(x)
    with pytest.raises(ValueError, match=r"the last forward pass ran \['r1'\]"):
        with record(model), torch.no_grad():
            model.r1(model.a(x))  # a submodule on its own: half a batch
    with pytest.raises(KeyError):  # the forward's own error, not ours, leaves the block
        with record(model) as rec, torch.no_grad():
            model.r1(model.a(x))
            raise KeyError("mine")


class _FixedThenFree(nn.Module):
    """Two sites: the first always 4 units wide, the second as wide as the input."""

    def __init__(self):
        super().__init__()
        self.lin, self.r1, self.r2 = nn.Linear(3, 4), ReLU(), ReLU()

    def forward(self, x):
        return self.r1(self.lin(x[:, :3])).sum(1, keepdim=True) + self.r2(x)


def test_direct_mode_learns_a_new_shape_of_a_later_site_and_refuses_it_later():
    torch.manual_seed(6)
    model = _FixedThenFree().eval()
    narrow, wide = torch.randn(3, 5), torch.randn(2, 7)

    def want(x):
        return torch.cat([ref.pack_signs(model.lin(x[:, :3])), ref.pack_signs(x)], 1)

    with record(model), torch.no_grad():  # learns the sites (tap mode)
        model(narrow)
    with record(model) as rec, torch.no_grad():  # direct: the first site as before, not the second
        model(wide)
        with pytest.raises(ValueError, match=r"first one \[\('r1', \[4\]\), \('r2', \[7\]\)"):
            model(narrow)
        model(wide[:1])  # the refused batch left nothing behind
    assert [s.shape for s in rec.sites] == [(4,), (7,)]
    with torch.no_grad():
        assert torch.equal(rec.codes, torch.cat([want(wide), want(wide[:1])]))


def test_direct_mode_ignores_other_models_and_learns_new_shapes():
    torch.manual_seed(3)
    cnn = convert(nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(),
                                nn.Conv2d(2, 2, 3, stride=2), nn.ReLU())).eval()
    other = convert(nn.Sequential(nn.Linear(2, 3), nn.ReLU())).eval()
    small, big = torch.randn(2, 1, 8, 8), torch.randn(4, 1, 12, 12)
    with record(cnn), torch.no_grad():
        cnn(small)
    with record(cnn) as rec, torch.no_grad():
        cnn(big)
        other(torch.randn(5, 2))  # not a module of the recorded model: ignored
        cnn(big[:1])
    assert [s.shape for s in rec.sites] == [(2, 12, 12), (2, 5, 5)]
    h = cnn[1](cnn[0](big))
    want = torch.cat([ref.pack_signs(cnn[0](big)), ref.pack_signs(cnn[2](h))], 1)
    assert torch.equal(rec.codes, torch.cat([want, want[:1]]))
    with record(cnn) as rec, torch.no_grad():  # the shapes of the first batch only
        cnn(small)
        with pytest.raises(ValueError, match=r"layers \[\('1', \[2, 12, 12\]\).*first one "
                                             r"\[\('1', \[2, 8, 8\]"):
            cnn(big)
        cnn(small[:1])
    assert torch.equal(rec.codes, torch.cat([by_layers(cnn, small), by_layers(cnn, small[:1])]))


def by_layers(cnn, x):
    with torch.no_grad():
        z0 = cnn[0](x)
        return torch.cat([ref.pack_signs(z0), ref.pack_signs(cnn[2](cnn[1](z0)))], 1)


def test_torch_activations_are_recorded_through_a_forward_of_their_own_and_it_is_removed():
    torch.manual_seed(4)
    model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 5), nn.LeakyReLU(0.2),
                          nn.Linear(5, 3), nn.PReLU()).eval()
    originals = {cls: cls.forward for cls in (nn.ReLU, nn.LeakyReLU, nn.PReLU)}
    x = torch.randn(7, 4)
    with torch.no_grad():
        h1 = model[0](x)
        h2 = model[2](model[1](h1))
        h3 = model[4](model[3](h2))
    want = torch.cat([ref.pack_signs(h) for h in (h1, h2, h3)], 1)
    with record(model) as first, torch.no_grad():  # learns the sites (tap mode)
        model(x)
    assert all("forward" not in m.__dict__ for m in model)
    with pytest.raises(KeyError):
        with record(model) as rec, torch.no_grad():
            assert "forward" not in model.__dict__  # direct mode: no tap on the model
            assert [i for i, m in enumerate(model) if "forward" in m.__dict__] == [1, 3, 5]
            assert {cls: cls.forward for cls in originals} == originals  # classes untouched
            model(x)
            model(x[:2])
            raise KeyError("leaves the block")
    assert torch.equal(first.codes, want)
    assert torch.equal(rec.codes, torch.cat([want, want[:2]]))
    assert all("forward" not in m.__dict__ for m in model)  # removed, also on an error
    assert {cls: cls.forward for cls in originals} == originals

    class Mine(nn.ReLU):  # a subclass is no module site: its F.relu call is (once)
        pass

    other = nn.Sequential(nn.Linear(4, 3), Mine())
    with record(other) as rec, torch.no_grad():
        other(x)
    assert [(s.name, s.kind) for s in rec.sites] == [("1.relu", "function")]
    assert torch.equal(rec.codes, ref.pack_signs(other[0](x)))


def test_a_torch_activation_recorded_as_the_model_is_tapped_over_its_own_forward():
    act, x = nn.LeakyReLU(0.1), torch.randn(5, 67)
    for _ in range(3):  # tap mode (learns), then direct mode twice
        with record(act) as rec, torch.no_grad():
            y = act(x)
            act(x[:2])
        assert torch.equal(y, torch.nn.functional.leaky_relu(x, 0.1))
        assert torch.equal(rec.codes, ref.pack_signs(torch.cat([x, x[:2]])))
        assert "forward" not in act.__dict__


@pytest.mark.parametrize("where", ["class", "instance"])
def test_a_forward_patched_by_someone_else_is_kept_and_used(where):
    original = nn.ReLU.forward
    calls = []

    def theirs(self, input):
        calls.append(1)
        return original(self, input)

    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU())
    if where == "class":
        nn.ReLU.forward = theirs
    else:
        model[1].forward = theirs.__get__(model[1])
    patched = model[1].forward
    try:
        x = torch.randn(2, 3)
        for _ in range(2):  # tap mode, then direct mode
            with record(model) as rec, torch.no_grad():
                model(x)
            assert torch.equal(rec.codes, ref.pack_signs(model[0](x)))
        assert model[1].forward == patched and len(calls) == 2
        assert nn.ReLU.forward is (theirs if where == "class" else original)
    finally:
        nn.ReLU.forward = original


_ACTIVATIONS = [lambda: nn.ReLU(), lambda: nn.ReLU(inplace=True), lambda: nn.LeakyReLU(0.2),
                lambda: nn.LeakyReLU(0.0), lambda: nn.LeakyReLU(0.3, inplace=True),
                lambda: nn.LeakyReLU(-0.5), lambda: nn.PReLU()]


# in place with a negative slope: its signs must be taken before the forward (torch has no
# backward for it)
@pytest.mark.parametrize("make, grad", [(m, g) for m in _ACTIVATIONS for g in (False, True)]
                         + [(lambda: nn.LeakyReLU(-0.5, inplace=True), False)])
def test_recorded_torch_activations_give_torch_values_and_gradients(make, grad):
    """While recorded (some through one relu_pack pass), torch's activation modules give
    their own outputs bit for bit (-0.0, NaN, inf), in place where asked, and their gradients;
    the code is the signs of their inputs."""
    torch.manual_seed(5)
    act = make()
    model = nn.Sequential(nn.Linear(3, 70), act)
    x = torch.randn(6, 3)
    model[0].bias.data[:4] = torch.tensor([float("nan"), -0.0, float("inf"), -float("inf")])
    inplace = getattr(act, "inplace", False)
    for recorded in (False, True, True):  # plain, tap mode (learns), direct mode
        xi = x.clone().requires_grad_(grad)
        with torch.set_grad_enabled(grad):
            pre = model[0](xi)
            want_pre = pre.detach().clone()
            want = act(pre.clone()) if inplace else act(pre)
            if recorded:
                with record(model) as rec:
                    got = model(xi)
                assert torch.equal(rec.codes, ref.pack_signs(want_pre))
            else:
                got = model(xi)
        assert_same_values(got, want)
        if grad:
            g, = torch.autograd.grad(got.nan_to_num().sum(), xi)
            g_want, = torch.autograd.grad(want.nan_to_num().sum(), xi)
            assert_same_values(g, g_want)


def test_direct_mode_recovers_after_a_batch_it_refused():
    """A batch whose sites disagree on the batch size raises, and leaves nothing behind for
    the next batch of the same recorder."""

    class Odd(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.r1, self.r2 = nn.Linear(3, 4), ReLU(), ReLU()
            self.rows = None

        def forward(self, x):
            h = self.r1(self.a(x))
            return self.r2(h[:self.rows])

    torch.manual_seed(6)
    model = Odd().eval()
    x = torch.randn(5, 3)
    with record(model), torch.no_grad():  # learns the sites: direct mode from now on
        model(x)
    with record(model) as rec, torch.no_grad():
        model.rows = 2
        with pytest.raises(ValueError, match="disagree on the batch size"):
            model(x)
        model.rows = None
        model(x)
        z = model.a(x)
    want = torch.cat([ref.pack_signs(z), ref.pack_signs(torch.relu(z))], 1)
    assert torch.equal(rec.codes, want)


class Counting:
    """Counts the calls of the general methods (the C core hands them every uncommon case)."""

    NAMES = ("_enter_general", "_exit_general", "_add_words_general")

    def __init__(self, monkeypatch):
        self.calls = dict.fromkeys(self.NAMES, 0)
        for name in self.NAMES:
            original = getattr(_Recording, name)

            def counted(rec, *args, _name=name, _original=original, **kwargs):
                self.calls[_name] += 1
                return _original(rec, *args, **kwargs)

            monkeypatch.setattr(_Recording, name, counted)


def test_the_core_takes_direct_modes_common_case_itself(recorder_class, monkeypatch):
    """Past the first recorder of a converted model, the C core makes, enters and leaves a
    recorder and takes every site's words without a Python method (the cost bench/record.py
    measures); the first recorder, a new input shape, a layer selection and on_batch go to the
    general methods, with the same codes."""
    torch.manual_seed(3)
    model = convert(nn.Sequential(nn.Linear(5, 9), nn.ReLU(), nn.Linear(9, 70), nn.ReLU(),
                                  nn.Linear(70, 3), nn.ReLU())).eval()
    xs = [torch.randn(4, 5), torch.randn(4, 5), torch.randn(2, 5)]
    count = Counting(monkeypatch)
    with torch.no_grad():
        with record(model) as first:
            model(xs[0])
        general = sum(count.calls.values())
        assert count.calls["_enter_general"] == 1 and count.calls["_exit_general"] == 1
        with record(model) as rec:  # direct mode; its first batch fills the shape cache
            model(xs[0])
            general = sum(count.calls.values())
            model(xs[1])
        fast = recorder_class is Recorder and HAS_EXTENSION
        assert sum(count.calls.values()) == general + (0 if fast else 3 + 1)
        general = sum(count.calls.values())
        with record(model) as again:
            model(xs[1])
            model(xs[0])
        assert sum(count.calls.values()) == general + (0 if fast else 2 + 6)
        with record(model) as odd:  # a new batch size: the first site's call is general
            model(xs[2])
        with record(model, layers=[2, 0]) as sel, torch.no_grad():
            model(xs[1])
        seen = []
        with record(model, on_batch=lambda c, lay: seen.append(c)) as streamed:
            model(xs[1])
    by_site = [torch.cat([ref.pack_signs(z) for z in pre], 1) for pre in (
        [model[0](x), model[2](model[1](model[0](x))),
         model[4](model[3](model[2](model[1](model[0](x)))))] for x in xs)]
    assert torch.equal(first.codes, by_site[0])
    assert torch.equal(rec.codes, torch.cat(by_site[:2]))
    assert torch.equal(again.codes, torch.cat([by_site[1], by_site[0]]))
    assert again.layout == rec.layout == first.layout and again.sites == first.sites
    assert torch.equal(odd.codes, by_site[2])
    assert first.full_layout.words_per_layer == (1, 2, 1)  # 9, 70 and 3 units
    assert torch.equal(sel.codes, torch.cat([by_site[1][:, 3:], by_site[1][:, :1]], 1))
    assert len(seen) == 1 and torch.equal(seen[0], by_site[1]) and torch.equal(streamed.codes, seen[0])


def test_the_cores_agree_on_fields_arguments_and_errors(recorder_class):
    model = nn.Sequential(nn.Linear(2, 3), ReLU())
    rec = recorder_class(model, layers=(0,), keep=False)
    for name in RECORDER_FIELDS:
        if name not in ("_facts", "_taps", "_expected", "_shapes", "_inputs"):  # set on entering
            getattr(rec, name)
    assert rec.layers == [0] and rec.keep is False and rec.batches == [] and rec._pos == 0
    assert not hasattr(rec, "__dict__")
    with pytest.raises(TypeError, match="record expects an nn.Module, got list"):
        recorder_class([model])
    with pytest.raises(TypeError, match="functional must be True or False, got int 1"):
        recorder_class(model, functional=1)
    with pytest.raises(TypeError):
        recorder_class(model, [0])  # layers is keyword-only
    with pytest.raises(TypeError):
        recorder_class(model, lyers=[0])
    with pytest.raises(TypeError, match="not iterable"):
        recorder_class(model, layers=3)
    with rec, torch.no_grad():
        with pytest.raises(RuntimeError, match="already in use"):
            rec.__enter__()
        model(torch.randn(2, 2))
    assert rec.batches == [] and rec.layout.names == ("1",)


def test_a_recorder_in_a_reference_cycle_is_collected(recorder_class):
    class Sentinel:
        pass

    model = convert(nn.Sequential(nn.Linear(2, 3), nn.ReLU()))
    rec = recorder_class(model)
    sentinel = Sentinel()
    rec.on_batch = lambda codes, layout, _keep=(rec, sentinel): None  # rec -> lambda -> rec
    gone = weakref.ref(sentinel)
    with rec, torch.no_grad():
        model(torch.randn(1, 2))
    del rec, sentinel
    gc.collect()
    assert gone() is None


def test_torch_activations_words_take_the_cores_common_case(recorder_class, monkeypatch):
    """torch's nn.ReLU in direct mode: entering and leaving are general (the modules' forwards
    are installed and removed), each site's words are not (for the C core)."""
    torch.manual_seed(4)
    model = nn.Sequential(nn.Linear(3, 6), nn.ReLU(), nn.Linear(6, 4), nn.ReLU()).eval()
    x = torch.randn(5, 3)
    count = Counting(monkeypatch)
    with torch.no_grad():
        for _ in range(2):  # learns the sites, then fills direct mode's shape cache
            with record(model):
                model(x)
        before = dict(count.calls)
        with record(model) as rec:
            model(x)
            model(x[:2])
    fast = recorder_class is Recorder and HAS_EXTENSION
    added = {k: count.calls[k] - before[k] for k in count.calls}
    assert added == {"_enter_general": 1, "_exit_general": 1,
                     "_add_words_general": 2 if fast else 4}  # (x[:2]: a new batch size)
    want = [torch.cat([ref.pack_signs(model[0](b)), ref.pack_signs(model[2](model[1](model[0](b))))],
                      1) for b in (x, x[:2])]
    assert torch.equal(rec.codes, torch.cat(want))
