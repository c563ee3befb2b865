"""Exact 2-D slices against oracles: line arrangements counted by hand, the recorder at
points sampled inside every face, dense rasters, face areas, regioncam."""
import itertools

import pytest
import torch
from torch import nn

from activation_hash.record import record
from activation_hash.slices import plane_regions
from helpers import ResidualBlock


def one_hidden(d=2, n=12, out=3, seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(d, n), nn.ReLU(), nn.Linear(n, out)).eval()


def arrangement_cells(W, b, box):
    """Cells of the lines W x + b = 0 inside the box, lines in general position:
    1 + (lines meeting the box) + (intersection points inside the box)."""
    u0, u1, v0, v1 = box
    corners = torch.tensor([[u0, v0], [u1, v0], [u1, v1], [u0, v1]], dtype=torch.float64)
    z = corners @ W.T + b
    meets = int(((z > 0).any(0) & (z < 0).any(0)).sum())
    inner = 0
    for i, j in itertools.combinations(range(W.shape[0]), 2):
        p = torch.linalg.solve(W[[i, j]], -b[[i, j]])
        inner += int(u0 < p[0] < u1 and v0 < p[1] < v1)
    return 1 + meets + inner


def interior_points(r, per_face=5, seed=0):
    """[F * per_face, 2] random points strictly inside each face (convex combinations of its
    vertices with positive weights), and the face of each."""
    g = torch.Generator().manual_seed(seed)
    pts, owner = [], []
    for i, f in enumerate(r.faces):
        w = torch.rand(per_face, f.shape[0], generator=g, dtype=torch.float64) + 0.05
        pts.append((w / w.sum(1, keepdim=True)) @ f)
        owner += [i] * per_face
    return torch.cat(pts), torch.tensor(owner)


def codes_at(model, x):
    wm = model.double()
    with record(wm) as rec, torch.no_grad():
        wm(x)
    return rec.codes


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_one_hidden_layer_faces_are_the_cells_of_its_line_arrangement(seed):
    model = one_hidden(seed=seed)
    box = (-1.5, 2.0, -1.0, 1.25)
    r = plane_regions(model, box=box)
    W, b = model[0].weight.double(), model[0].bias.double()
    assert len(r) == arrangement_cells(W, b, box)
    assert not r.sampled and r.anchors.shape == (0, 2) and r.window == box
    # every face is one pattern, the recorder's at points sampled inside it
    pts, owner = interior_points(r)
    assert torch.equal(codes_at(model, r.to_input(pts)), r.codes.codes[owner])
    area = (box[1] - box[0]) * (box[3] - box[2])
    torch.testing.assert_close(r.areas().sum(), torch.tensor(area, dtype=torch.float64))
    assert (r.areas() > 0).all()


# ---- helpers: oracles by sampling --------------------------------------------------------

def raster(r, n=120):
    u0, u1, v0, v1 = r.window
    us = torch.linspace(u0, u1, n + 2, dtype=torch.float64)[1:-1]
    vs = torch.linspace(v0, v1, n + 2, dtype=torch.float64)[1:-1]
    return torch.stack(torch.meshgrid(us, vs, indexing="xy"), -1).reshape(-1, 2)


def model_input(r, uv):
    return r.to_input(uv).view((-1,) + r.in_shape)


def edge_neighbours(r, eps=1e-7):
    """(face, neighbour) pairs across the midpoint of every edge inside the window."""
    pairs = []
    span = max(r.window[1] - r.window[0], r.window[3] - r.window[2])
    for i, f in enumerate(r.faces):
        e = f.roll(-1, 0) - f
        mid = f + 0.5 * e
        normal = torch.stack([e[:, 1], -e[:, 0]], 1)          # outward for CCW faces
        normal = normal / normal.norm(dim=1, keepdim=True)
        pts = mid + eps * span * normal
        j = r.locate(pts)
        for k in j[j >= 0].tolist():
            pairs.append((i, k))
    return pairs


def check_exact(model, r, per_face=4, n_raster=100):
    """The face code is the recorder's pattern inside the face; the raster finds no pattern
    that no face has; face areas fill the window."""
    pts, owner = interior_points(r, per_face)
    assert torch.equal(codes_at(model, model_input(r, pts)), r.codes.codes[owner])
    grid = raster(r, n_raster)
    where = r.locate(grid)
    assert (where >= 0).all()
    assert torch.equal(codes_at(model, model_input(r, grid)), r.codes.codes[where])
    u0, u1, v0, v1 = r.window
    torch.testing.assert_close(r.areas().sum(), torch.tensor((u1 - u0) * (v1 - v0),
                                                             dtype=torch.float64))
    assert (r.areas() > 0).all()
    assert all(f.shape[0] >= 3 for f in r.faces)


def deep_mlp(d=10, seed=3, act=nn.ReLU):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(d, 16), act(), nn.Linear(16, 16), nn.BatchNorm1d(16),
                         act(), nn.Dropout(0.3), nn.Linear(16, 4)).eval()


@pytest.mark.parametrize("act", [nn.ReLU, lambda: nn.LeakyReLU(0.1)], ids=["relu", "leaky"])
def test_deep_mlp_faces_hold_one_pattern_and_neighbours_differ(act):
    model = deep_mlp(act=act)
    model[3].running_mean.uniform_(-0.3, 0.3)
    torch.manual_seed(11)
    a, b, c = torch.randn(3, 10)
    r = plane_regions(model, a, b, c)
    assert len(r) > 50
    check_exact(model, r)
    pairs = edge_neighbours(r)
    assert len(pairs) > len(r)
    i, j = torch.tensor(pairs).T
    assert (r.codes.codes[i] != r.codes.codes[j]).any(1).all()
    # the anchors are the three inputs, in the plane
    torch.testing.assert_close(r.to_input(r.anchors), torch.stack([a, b, c]).double())
    torch.testing.assert_close(r.basis @ r.basis.T, torch.eye(2, dtype=torch.float64))


def test_layers_cut_the_model_short_to_its_first_sites():
    model = deep_mlp(d=2)
    r1 = plane_regions(model, box=(-2.0, 2.0, -2.0, 2.0), layers=1)
    W, b = model[0].weight.double(), model[0].bias.double()
    assert len(r1) == arrangement_cells(W, b, (-2.0, 2.0, -2.0, 2.0))
    assert r1.codes.layout.names == ("1",) and (r1.labels == -1).all()
    assert r1.decision_boundary.shape == (0, 2, 2)
    full = plane_regions(model, box=(-2.0, 2.0, -2.0, 2.0))
    assert len(full) > len(r1) and full.codes.layout.names == ("1", "4")


# ---- regioncam ---------------------------------------------------------------------------

class ResMLP(nn.Module):
    """x -> relu(W0 x + b0) -> h + block(h) -> out, block = Linear, ReLU, Linear."""

    def __init__(self, seed=21):
        super().__init__()
        torch.manual_seed(seed)
        self.inp, self.f1, self.f2 = nn.Linear(2, 12), nn.Linear(12, 12), nn.Linear(12, 12)
        self.out = nn.Linear(12, 3)

    def forward(self, x):
        h = torch.relu(self.inp(x))
        h = h + self.f2(torch.relu(self.f1(h)))
        return self.out(torch.relu(h))


def rc_linear(rc, m):
    return rc.nn.Linear(m.weight.detach().numpy().T.copy(), m.bias.detach().numpy().copy())


@pytest.mark.parametrize("kind", ["relu", "leaky", "residual"])
def test_face_counts_equal_regioncam(kind):
    import regioncam as rc  # a test extra (pyproject.toml): a missing one fails, never skips
    torch.manual_seed(20)
    if kind == "residual":
        model = ResMLP().eval()
        net = rc.nn.Sequential(rc_linear(rc, model.inp), rc.nn.ReLU(), rc.nn.Residual(
            rc.nn.Sequential(rc_linear(rc, model.f1), rc.nn.ReLU(), rc_linear(rc, model.f2))),
            rc.nn.ReLU(), rc_linear(rc, model.out))
    else:
        act = nn.ReLU if kind == "relu" else (lambda: nn.LeakyReLU(0.2))
        model = nn.Sequential(nn.Linear(2, 20), act(), nn.Linear(20, 20), act(),
                              nn.Linear(20, 20), act(), nn.Linear(20, 3)).eval()
        net = rc.nn.convert(model)
    cam = rc.Regioncam(2.0)
    cam.add(net)
    r = plane_regions(model, box=(-2.0, 2.0, -2.0, 2.0))
    assert len(r) == cam.num_faces
    if kind == "residual":
        check_exact(model, r, per_face=2, n_raster=60)


# ---- CNNs: max-pooling, residual blocks ----------------------------------------------------

def cnn_maxpool():
    torch.manual_seed(4)
    return nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.BatchNorm2d(3), nn.ReLU(),
                         nn.MaxPool2d(2), nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(),
                         nn.MaxPool2d(2, 1), nn.Flatten(), nn.Linear(4, 3)).eval()


def resnet():
    torch.manual_seed(5)
    m = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(), ResidualBlock(2),
                      nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2, 3))
    for mod in m.modules():
        if isinstance(mod, nn.BatchNorm2d):
            mod.running_mean.uniform_(-0.2, 0.2)
            mod.running_var.uniform_(0.5, 2.0)
    return m.eval()


@pytest.mark.parametrize("make", [cnn_maxpool, resnet], ids=["cnn_maxpool", "resnet"])
def test_cnns_are_exact_by_sampling(make):
    model = make()
    torch.manual_seed(12)
    a, b, c = torch.randn(3, 1, 4, 4)
    r = plane_regions(model, a, b, c, margin=0.0)
    assert r.in_shape == (1, 4, 4) and len(r) > 20
    check_exact(model, r, per_face=3, n_raster=80)
    # the output is affine on every face (no switch missed, max-pool included): at three
    # interior points p, q and (p + q) / 2 of a face, f((p + q) / 2) = (f(p) + f(q)) / 2
    pts, _ = interior_points(r, per_face=2, seed=3)
    mid = 0.5 * (pts[0::2] + pts[1::2])
    wm = model.double()
    with torch.no_grad():
        fp, fq = wm(model_input(r, pts[0::2])), wm(model_input(r, pts[1::2]))
        fm = wm(model_input(r, mid))
    torch.testing.assert_close(fm, 0.5 * (fp + fq), rtol=0, atol=1e-9)


def test_max_pool_switches_split_faces_that_share_a_code():
    model = cnn_maxpool()
    torch.manual_seed(13)
    a, b, c = torch.randn(3, 1, 4, 4)
    r = plane_regions(model, a, b, c)
    distinct = torch.unique(r.codes.codes, dim=0).shape[0]
    assert distinct < len(r)


# ---- decision boundary ---------------------------------------------------------------------

def test_decision_boundary_separates_classes():
    model = deep_mlp(d=2, seed=7)
    r = plane_regions(model, box=(-3.0, 3.0, -3.0, 3.0))
    seg = r.decision_boundary
    assert seg.shape[0] > 5 and seg.shape[1:] == (2, 2)
    d = seg[:, 1] - seg[:, 0]
    assert (d.norm(dim=1) > 0).all()
    normal = torch.stack([-d[:, 1], d[:, 0]], 1) / d.norm(dim=1, keepdim=True)
    mid = seg.mean(1)
    wm = model.double()
    with torch.no_grad():
        left = wm(mid + 1e-6 * normal).argmax(1)
        right = wm(mid - 1e-6 * normal).argmax(1)
    assert (left != right).all()
    # a raster's arg-max changes only next to a boundary segment
    n = 150
    grid = raster(r, n)
    with torch.no_grad():
        lab = wm(grid).argmax(1).view(n, n)
    h = 6.0 / (n + 1)
    i, j = (lab[:, 1:] != lab[:, :-1]).nonzero(as_tuple=True)
    p = grid.view(n, n, 2)[i, j] + torch.tensor([h / 2, 0.0], dtype=torch.float64)
    assert len(p) > 10
    # distance from each change to the nearest segment
    a, b = seg[:, 0], seg[:, 1]
    ab = b - a
    t = (((p[:, None] - a) * ab).sum(-1) / (ab * ab).sum(-1)).clamp(0, 1)
    dist = (p[:, None] - (a + t[..., None] * ab)).norm(dim=-1).amin(1)
    assert (dist <= h).all()
    # the labels are the arg-max at each face's centroid
    with torch.no_grad():
        at = wm(torch.stack([f.mean(0) for f in r.faces])).argmax(1)
    assert torch.equal(at, r.labels)


def test_one_output_decision_boundary_is_its_zero_line():
    torch.manual_seed(8)
    model = nn.Sequential(nn.Linear(2, 1)).eval()
    model[0].weight.data = torch.tensor([[1.0, 2.0]])
    model[0].bias.data = torch.tensor([0.3])
    r = plane_regions(model, box=(-1.0, 1.0, -1.0, 1.0))
    assert len(r) == 1 and r.codes.codes.shape == (1, 0)
    w, b = model[0].weight.double()[0], model[0].bias.double()
    seg = r.decision_boundary
    assert seg.shape[0] == 1
    torch.testing.assert_close(seg[0] @ w + b, torch.zeros(2, dtype=torch.float64),
                               rtol=0, atol=1e-12)


# ---- bad input -------------------------------------------------------------------------------

def test_bad_input_gives_clear_errors():
    from activation_hash.slices import NotPiecewiseLinearError
    model = one_hidden(d=3)
    x = torch.randn(3)
    with pytest.raises(ValueError, match="one shape"):
        plane_regions(model, x, x + 1, torch.randn(4))
    with pytest.raises(ValueError, match="collinear"):
        plane_regions(model, x, x + 1, x + 2)
    with pytest.raises(ValueError, match="same point"):
        plane_regions(model, x, x, x + 1)
    with pytest.raises(TypeError, match="three"):
        plane_regions(model, x, x + 1)
    with pytest.raises(TypeError, match="torch.Tensor"):
        plane_regions(model, [0.0, 1.0, 2.0], x, x + 1)
    m2 = one_hidden()
    with pytest.raises(ValueError, match="x_min < x_max"):
        plane_regions(m2, box=(1.0, 1.0, 0.0, 1.0))
    with pytest.raises(ValueError, match="x_min < x_max"):
        plane_regions(m2, box=(0.0, 1.0, 2.0, 1.0))
    with pytest.raises(TypeError, match="box"):
        plane_regions(m2, box=(0.0, 1.0))
    with pytest.raises(TypeError, match="box"):
        plane_regions(m2)
    gelu = nn.Sequential(nn.Linear(2, 4), nn.GELU(), nn.Linear(4, 2)).eval()
    with pytest.raises(NotPiecewiseLinearError, match="gelu.*sampled_plane_regions"):
        plane_regions(gelu, box=(0.0, 1.0, 0.0, 1.0))
    with pytest.raises(NotPiecewiseLinearError, match="train mode"):
        plane_regions(one_hidden().train(), box=(0.0, 1.0, 0.0, 1.0))
    with pytest.raises(ValueError, match=r"reached \d+ faces.*max_faces=5"):
        plane_regions(m2, box=(-2.0, 2.0, -2.0, 2.0), max_faces=5)
    with pytest.raises(ValueError, match="layers"):
        plane_regions(m2, box=(-2.0, 2.0, -2.0, 2.0), layers=2)
    with pytest.raises(TypeError, match="max_faces"):
        plane_regions(m2, box=(-2.0, 2.0, -2.0, 2.0), max_faces=2.5)


# ---- sampled mode, regions_in_box, region maps ----------------------------------------------

def test_sampled_mode_finds_a_subset_of_the_faces_and_works_for_any_model():
    from activation_hash.slices import sampled_plane_regions
    model = deep_mlp(d=2, seed=9)
    box = (-2.0, 2.0, -2.0, 2.0)
    exact = plane_regions(model, box=box)
    s = sampled_plane_regions(model, box=box, resolution=96)
    assert s.sampled and not exact.sampled and s.grid.shape == (96, 96)
    exact_codes = {tuple(c) for c in exact.codes.codes.tolist()}
    sampled_codes = {tuple(c) for c in s.codes.codes.tolist()}
    assert sampled_codes <= exact_codes and 0.5 * len(exact) < len(s) <= len(exact)
    pts, owner = interior_points(exact, 1)   # locate goes through the raster's cells
    hit = s.locate(pts)
    assert (hit >= 0).all()
    gelu = nn.Sequential(nn.Linear(2, 8), nn.GELU(), nn.Linear(8, 8), nn.ReLU(),
                         nn.Linear(8, 2)).eval()
    g = sampled_plane_regions(gelu, box=box, resolution=32)
    assert 1 <= len(g) <= 32 * 32 and g.codes.layout.names == ("3",)


def test_regions_in_box_counts_cells_of_the_data_box_and_hull():
    from activation_hash.slices import regions_in_box
    model = one_hidden(n=10, seed=4)
    W, b = model[0].weight.double(), model[0].bias.double()
    tri = torch.tensor([[-1.5, -1.0], [1.5, -1.0], [0.0, 1.5]], dtype=torch.float64)
    data = torch.cat([tri, (torch.rand(50, 3, dtype=torch.float64).softmax(1)) @ tri])
    out = regions_in_box(model, data)
    assert out["bounds"] == (-1.5, 1.5, -1.0, 1.5)
    assert out["box"] == arrangement_cells(W, b, out["bounds"])
    # cells of the arrangement inside the triangle: 1 + lines meeting it + crossings inside
    z = tri @ W.T + b
    meets = int(((z > 0).any(0) & (z < 0).any(0)).sum())
    inner = 0
    for i, j in itertools.combinations(range(W.shape[0]), 2):
        p = torch.linalg.solve(W[[i, j]], -b[[i, j]])
        lam = torch.linalg.solve(torch.cat([tri.T, torch.ones(1, 3, dtype=torch.float64)]),
                                 torch.cat([p, torch.ones(1, dtype=torch.float64)]))
        inner += int((lam > 0).all())
    assert out["hull"] == 1 + meets + inner < out["box"]
    assert regions_in_box(model, data, hull=False)["hull"] is None
    with pytest.raises(ValueError, match=r"\[N, 2\]"):
        regions_in_box(model, torch.randn(5, 3))


def test_region_map_writes_png_and_svg_atomically(tmp_path):
    from activation_hash.slices import region_map, sampled_plane_regions
    model = deep_mlp(d=2, seed=10)
    r = plane_regions(model, box=(-2.0, 2.0, -2.0, 2.0))
    png = region_map(r, tmp_path / "map.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    svg = region_map(r, tmp_path / "map.svg", title="mlp")
    text = svg.read_text()
    assert text.lstrip().startswith("<?xml") and "<svg" in text and f"{len(r)} faces" in text
    s = sampled_plane_regions(model, box=(-2.0, 2.0, -2.0, 2.0), resolution=32)
    assert "sampled" in region_map(s, tmp_path / "s.svg").read_text()
    assert region_map(r, tmp_path / "x.bin", fmt="png").read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(ValueError, match="fmt"):
        region_map(r, tmp_path / "map.jpg")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["map.png", "map.svg", "s.svg", "x.bin"]
