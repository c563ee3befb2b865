"""The layering rule of docs/design.md: a module imports only modules of its own layer or
below (at module level and inside functions alike); every module has a layer."""
import ast
import pathlib

import pytest

import activation_hash as ah

ROOT = pathlib.Path(__file__).resolve().parents[1] / "activation_hash"

# lowest first; a new module gets a line here (and in docs/design.md)
LAYERS = {
    0: ["validation", "layout", "fileio", "memory"],
    1: ["reference"],
    2: ["ops"],
    3: ["manifest", "store"],
    4: ["codes"],
    5: ["nn"],
    6: ["taps", "record_core", "record"],
    7: ["extract", "grouping", "collisions", "hamming", "index", "probes"],
    8: ["distributed", "outofcore", "regions", "regions_layers", "switches", "folding", "slices",
        "slices_core", "slices_sampled", "slices_draw", "polygons"],
    9: ["experiments"],
    10: ["cli", "__main__"],
}
_PACKAGE_NAMES = {**ah._LAZY, "record": "record", "ops": "ops", "backend": "ops",
                  "pack_signs": "ops", "relu_pack": "ops", "relu_mask_backward": "ops",
                  "unpack_bits": "ops"}
LAYER_OF = {name: layer for layer, names in LAYERS.items() for name in names}


def modules():
    for path in sorted(ROOT.rglob("*.py")):
        rel = path.relative_to(ROOT).with_suffix("")
        if rel.parts == ("__init__",):
            continue  # the package's lazy table of names may name every layer
        yield rel.parts[0], path


def imported(path):
    """First component below activation_hash of every import in the file."""
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            parts = node.module.split(".")
            if parts[0] != "activation_hash":
                continue
            if len(parts) > 1:
                yield parts[1], node.lineno
            else:  # from activation_hash import x: a submodule, or a name of the package's
                for alias in node.names:  # lazy table (it counts as the module defining it)
                    name = alias.name
                    if not (ROOT / f"{name}.py").exists() and not (ROOT / name).is_dir():
                        name = _PACKAGE_NAMES.get(name, "__init__")
                    if name != "__init__":
                        yield name, node.lineno
        elif isinstance(node, ast.ImportFrom) and node.level > 0:
            yield (node.module or "").split(".")[0] or "experiments", node.lineno
        elif isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] == "activation_hash" and len(parts) > 1:
                    yield parts[1], node.lineno


@pytest.mark.parametrize("top, path", list(modules()), ids=lambda v: str(v))
def test_module_imports_only_lower_layers(top, path):
    assert top in LAYER_OF, f"{path.name}: give the module a layer in tests/test_layering.py"
    for name, line in imported(path):
        if name in ("_C",):
            continue
        assert name in LAYER_OF, f"{path}:{line} imports activation_hash.{name}, which has no layer"
        assert LAYER_OF[name] <= LAYER_OF[top], (
            f"{path}:{line}: {top} (layer {LAYER_OF[top]}) imports {name} "
            f"(layer {LAYER_OF[name]}): lower layers never import higher ones")


def test_codes_does_not_import_the_recorder():
    names = {n for n, _ in imported(ROOT / "codes.py")}
    assert not names & {"nn", "record", "extract"}
