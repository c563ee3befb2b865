"""Exact 2-D slices against oracles: line arrangements counted by hand, the recorder at
points sampled inside every face, dense rasters, face areas, regioncam."""
import itertools

import pytest
import torch
from torch import nn

from activation_hash.record import record
from activation_hash.slices import plane_regions


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
