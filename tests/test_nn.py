"""Drop-in modules, convert() and record()."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from activation_hash import reference as ref
from activation_hash.nn import LeakyReLU, ReLU, convert
from activation_hash.record import record
from helpers import assert_same_values


def with_edges(shape, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g, dtype=dtype)
    x.view(-1)[::7] = 0.0
    x.view(-1)[3::11] = -0.0
    return x


@pytest.mark.parametrize("ours,theirs", [(ReLU(), nn.ReLU()), (LeakyReLU(0.1), nn.LeakyReLU(0.1)),
                                         (LeakyReLU(), nn.LeakyReLU())])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_outputs_and_gradients_equal_torch(device, ours, theirs, dtype):
    x = with_edges((5, 3, 67), dtype=dtype).to(device)
    g = with_edges((5, 3, 67), seed=1, dtype=dtype).to(device)
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    ya, yb = ours(xa), theirs(xb)
    assert_same_values(ya, yb)
    ya.backward(g)
    yb.backward(g)
    assert_same_values(xa.grad, xb.grad)


@pytest.mark.parametrize("module", [ReLU(), LeakyReLU(0.3)])
def test_gradcheck_float64(module):
    x = torch.randn(4, 70, dtype=torch.float64)
    x = torch.where(x.abs() < 0.05, x.sign() * 0.1, x).requires_grad_()  # away from the kink
    assert torch.autograd.gradcheck(module, (x,))
    assert torch.autograd.gradgradcheck(module, (x,))


def saved_bytes(fn, x):
    """Bytes of the tensors autograd saves for backward while running fn(x)."""
    total = []

    def pack(t):
        total.append(t.numel() * t.element_size())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn(x)
    return sum(total)


def test_saves_one_bit_per_unit():
    x = torch.randn(32, 4096, requires_grad=True)
    theirs = saved_bytes(nn.ReLU(), x)
    ours = saved_bytes(ReLU(), x)
    assert theirs == 32 * 4096 * 4  # torch keeps the fp32 output
    assert ours == 32 * 4096 // 8  # we keep 1 bit per unit
    assert theirs / ours == 32


def test_inplace_flag_keeps_torch_values():
    x = with_edges((3, 10))
    assert torch.equal(ReLU(inplace=True)(x.clone()), nn.ReLU(inplace=True)(x.clone()))


def test_negative_slope_validation():
    with pytest.raises(TypeError, match="negative_slope"):
        LeakyReLU("0.1")


def small_mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 50), nn.ReLU(), nn.Linear(50, 70), nn.LeakyReLU(0.2),
                         nn.Sequential(nn.Linear(70, 30), nn.ReLU(inplace=True)), nn.Linear(30, 3))


def test_convert_and_back():
    model = small_mlp()
    x = torch.randn(8, 6)
    expected = model(x)
    convert(model)
    kinds = [type(m) for m in model.modules()]
    assert nn.ReLU not in kinds and nn.LeakyReLU not in kinds
    assert kinds.count(ReLU) == 2 and kinds.count(LeakyReLU) == 1
    assert model[3].negative_slope == 0.2 and model[4][1].inplace
    assert torch.equal(model(x), expected)
    convert(model, reverse=True)
    kinds = [type(m) for m in model.modules()]
    assert ReLU not in kinds and LeakyReLU not in kinds and kinds.count(nn.ReLU) == 2
    assert torch.equal(model(x), expected)
    assert isinstance(convert(nn.ReLU()), ReLU)
    with pytest.raises(TypeError, match="nn.Module"):
        convert("model")


def expected_mlp_code(model, x):
    """Packed signs of each hidden pre-activation, computed by hand with the reference."""
    h, blocks = x, []
    for layer in [model[0], model[2], model[4][0]]:
        z = layer(h)
        blocks.append(ref.pack_signs(z))
        h = F.leaky_relu(z, 0.2) if layer is model[2] else torch.relu(z)
    return torch.cat(blocks, 1)


@pytest.mark.parametrize("converted", [False, True])
def test_record_mlp(converted):
    model = small_mlp().eval()
    if converted:
        convert(model)
    x1, x2 = torch.randn(9, 6), torch.randn(4, 6)
    with record(model) as rec, torch.no_grad():
        model(x1)
        model(x2)
    assert rec.layout.names == ("1", "3", "4.1")
    assert rec.layout.units == (50, 70, 30)
    assert rec.layout.word_offsets == (0, 1, 3)
    assert [b.shape for b in rec.batches] == [(9, 4), (4, 4)]
    with torch.no_grad():
        assert torch.equal(rec.codes, expected_mlp_code(model, torch.cat([x1, x2])))
    bits = rec.bits()
    assert bits.shape == (13, 150)
    # hooks are gone after the block
    model(x1)
    assert len(rec.batches) == 2


def test_record_in_train_mode_with_grad():
    model = convert(small_mlp()).train()
    x = torch.randn(5, 6)
    with record(model) as rec:
        model(x).sum().backward()
    with torch.no_grad():
        assert torch.equal(rec.codes, expected_mlp_code(model, x))


class Functional(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = nn.Linear(3, 20), nn.Linear(20, 20), nn.Linear(20, 5)
        self.p = nn.PReLU(20, init=0.1)

    def forward(self, x):
        h1 = self.a(x)
        h = F.relu(h1)
        h2 = self.b(h)
        h = self.p(h2)
        h3 = self.c(h)
        out = h3.relu() + F.leaky_relu(h3, 0.1) + torch.relu(-h3)
        self.pre = (h1, h2, h3, h3, -h3)
        return out


def test_record_functional_and_prelu():
    model = Functional()
    x = torch.randn(7, 3)
    with record(model) as rec, torch.no_grad():
        model(x)
    assert rec.layout.names == ("relu", "p", "relu#1", "leaky_relu", "relu#2")
    expected = torch.cat([ref.pack_signs(z) for z in model.pre], 1)
    assert torch.equal(rec.codes, expected)


def test_record_layer_selection_and_streaming():
    model = small_mlp()
    seen = []
    with record(model, layers=["4.1", 0], keep=False,
                on_batch=lambda c, lo: seen.append((c, lo))) as rec, torch.no_grad():
        model(torch.randn(3, 6))
    assert rec.batches == [] and len(seen) == 1
    codes, layout = seen[0]
    assert layout.names == ("4.1", "1") and layout.word_offsets == (0, 1)
    assert codes.shape == (3, 2)


def test_record_conv_bit_order_channels_last():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Flatten(),
                          nn.Linear(4 * 5 * 5, 2)).eval()
    x = torch.randn(2, 3, 5, 5)
    with torch.no_grad():
        pre = model[0](x)
    expected = ref.pack_signs(pre)  # channel, row, column order
    for m in [model, convert(model)]:
        for fmt in [torch.contiguous_format, torch.channels_last]:
            mm = m.to(memory_format=fmt)
            with record(mm) as rec, torch.no_grad():
                mm(x.contiguous(memory_format=fmt))
            assert rec.layout.shapes == ((4, 5, 5),)
            assert torch.equal(rec.codes, expected)


def test_record_rejects_changing_layouts():
    class Dyn(nn.Module):
        def forward(self, x):
            return torch.relu(x)

    with record(Dyn()) as rec:
        rec.model(torch.randn(2, 5))
        with pytest.raises(ValueError, match="first one"):
            rec.model(torch.randn(2, 6))
    with pytest.raises(TypeError, match="nn.Module"):
        record(lambda x: x)


def cnn():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3), ReLU(), nn.Conv2d(4, 4, 3), LeakyReLU(0.1),
                         nn.Flatten(), nn.Linear(4 * 4 * 4, 3))


def mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(10, 100), ReLU(), nn.Linear(100, 64), LeakyReLU(0.05),
                         nn.Linear(64, 2))


@pytest.mark.parametrize("make,shape", [(mlp, (6, 10)), (cnn, (3, 1, 8, 8))])
def test_torch_compile_fullgraph(make, shape):
    torch._dynamo.reset()
    model = make()
    compiled = torch.compile(model, fullgraph=True)
    x = torch.randn(shape)
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    ya, yb = model(xa), compiled(xb)
    torch.testing.assert_close(yb, ya)
    ya.sum().backward()
    yb.sum().backward()
    torch.testing.assert_close(xb.grad, xa.grad)
    with record(model) as rec, torch.no_grad():  # recording the compiled module's forward
        compiled(x)
    with record(model) as eager, torch.no_grad():
        model(x)
    assert torch.equal(rec.codes, eager.codes) and rec.layout == eager.layout
