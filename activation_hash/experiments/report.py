"""One self-contained HTML report per run directory.

:func:`write_report` collects what a run directory holds: ``settings.json`` (the settings used;
also ``sweep.json``), every ``*.png`` (embedded as base64 data URIs, so the file opens anywhere
on its own), the phase tables ``phase*.csv`` and the sweep rows (``results.json``), and writes
``report.html`` next to them.

Sections of the geometry commands: "Slices" (``slice_*.png`` and the face counts of
``slice_*.json``), "Training evolution" (``evolution*.png``, the animated ``evolution_*.gif``
embedded as ``image/gif`` data URIs, the region counts of ``evolution.json``) and "Minimum
width (1-D)" (``minwidth.png``, the rows of ``minwidth.json``); every other ``*.png`` goes under
"Plots". A small inline script records, once the page has loaded, how many of its images the
browser decoded (``<body data-images-loaded=N data-images-total=M>``; ``tools/check_report.py``
reads it from a headless browser).
"""
from __future__ import annotations

import base64
import csv
import html
import json
from datetime import datetime, timezone
from pathlib import Path

__all__ = ["write_report", "REPORT_COLUMNS"]

REPORT_COLUMNS = ["width", "depth", "epochs", "n_train", "n_trained", "weight_decay", "dropout",
                  "batch_norm", "label_noise", "noise_rate_true", "seed", "n_bits", "redundancy_train",
                  "redundancy_test", "knn_test", "kmeans_purity_test", "kmeans_hungarian_test",
                  "logreg_test", "acc_train", "acc_test", "t_train", "t_measure"]

_STYLE = """body{font-family:sans-serif;margin:2em;max-width:1200px}
table{border-collapse:collapse;font-size:12px;margin:1em 0}td,th{border:1px solid #ccc;padding:2px 6px}
th{background:#eee}img{max-width:100%;border:1px solid #ddd;margin:0.5em 0}
img.gif{max-width:420px}
.under{background:#f4c7c3}.critical{background:#fce8b2}.sufficient{background:#b7e1cd}"""


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, (dict, list)):
        return json.dumps(v, default=str)
    return str(v)


def _flatten(d: dict, prefix: str = "") -> list[tuple[str, object]]:
    out = []
    for k, v in d.items():
        if isinstance(v, dict):
            out += _flatten(v, f"{prefix}{k}.")
        else:
            out.append((f"{prefix}{k}", v))
    return out


def _table(header: list[str], rows: list[list], row_class=None) -> str:
    h = "".join(f"<th>{html.escape(str(c))}</th>" for c in header)
    body = []
    for i, r in enumerate(rows):
        cls = f' class="{html.escape(row_class(i))}"' if row_class else ""
        body.append(f"<tr{cls}>" + "".join(f"<td>{html.escape(_fmt(v))}</td>" for v in r) + "</tr>")
    return f"<table><thead><tr>{h}</tr></thead><tbody>{''.join(body)}</tbody></table>"


_COUNT_IMAGES = """<script>window.addEventListener("load", function () {
  var im = Array.prototype.slice.call(document.images);
  document.body.setAttribute("data-images-total", im.length);
  document.body.setAttribute("data-images-loaded",
    im.filter(function (i) { return i.complete && i.naturalWidth > 0; }).length);
});</script>"""


def _img(path: Path, mime: str = "image/png", cls: str = "") -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    c = f' class="{cls}"' if cls else ""
    return (f"<h3>{html.escape(path.stem)}</h3><img{c} alt=\"{html.escape(path.stem)}\" "
            f"src=\"data:{mime};base64,{data}\">")


def _json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _slices(run: Path) -> list[str]:
    pngs = sorted(run.glob("slice_*.png"))
    rows = [d for d in (_json(p) for p in sorted(run.glob("slice_*.json"))) if isinstance(d, dict)]
    if not pngs and not rows:
        return []
    parts = ["<h2>Slices</h2>"]
    if rows:
        cols = ["slice", "faces", "decision_boundary_segments", "faces_per_class", "samples",
                "sample_labels", "sampled", "model"]
        parts.append(_table(cols, [[r.get(c, "") for c in cols] for r in rows]))
    parts += [_img(p) for p in pngs]
    return parts


def _evolution(run: Path) -> list[str]:
    pngs = sorted(run.glob("evolution*.png"), key=lambda p: p.name != "evolution_regions.png")
    gifs = sorted(run.glob("evolution_*.gif"))
    d = _json(run / "evolution.json")
    if not pngs and not gifs and not d:
        return []
    parts = ["<h2>Training evolution</h2>"]
    rows = d.get("rows", []) if isinstance(d, dict) else []
    rows = [r for r in rows if isinstance(r, dict) and "dataset" in r and "epoch" in r] \
        if isinstance(rows, list) else []
    if rows:
        names = list(dict.fromkeys(r["dataset"] for r in rows))
        epochs = list(dict.fromkeys(r["epoch"] for r in rows))
        at = {(r["dataset"], r["epoch"]): r for r in rows}
        header = ["epoch", "steps"] + [f"{n} {k}" for n in names for k in ("box", "hull", "acc")]
        body = []
        for e in epochs:
            first = next(at[(n, e)] for n in names if (n, e) in at)
            line = [e, first["steps"]]
            for n in names:
                r = at.get((n, e), {})
                line += [r.get("regions_box", ""), r.get("regions_hull", ""), r.get("accuracy", "")]
            body.append(line)
        parts.append("<p>Exact linear regions in the data's box and convex hull, and training "
                     "accuracy, at each snapshot (fractional epochs: optimizer steps).</p>")
        parts.append(_table(header, body))
    parts += [_img(p) for p in pngs]
    parts += [_img(p, "image/gif", "gif") for p in gifs]
    return parts


def _minwidth(run: Path) -> list[str]:
    d = _json(run / "minwidth.json")
    if not isinstance(d, dict) and not (run / "minwidth.png").is_file():
        return []
    parts = ["<h2>Minimum width (1-D)</h2>"]
    rows = d.get("rows", []) if isinstance(d, dict) else []
    if rows:
        cols = ["k", "target", "bound", "exact_min_width", "min_width_found", "max_error", "tol",
                "pieces", "pieces_within_bound", "fit_has_k_pieces"]
        parts.append(_table(cols, [[r.get(c, "") for c in cols] for r in rows]))
    if (run / "minwidth.png").is_file():
        parts.append(_img(run / "minwidth.png"))
    return parts


def write_report(run_dir, title: str | None = None) -> Path:
    """Write ``<run_dir>/report.html`` from the run directory's files; returns its path."""
    run = Path(run_dir)
    if not run.is_dir():
        raise FileNotFoundError(f"run directory {str(run)!r} does not exist")
    parts = [f"<h1>{html.escape(title or 'activation-hash report')}</h1>",
             f"<p>Run directory: <code>{html.escape(str(run.resolve()))}</code><br>"
             f"Written {datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}</p>"]
    settings = {}
    for name in ("settings.json", "sweep.json"):
        if (run / name).is_file():
            settings[name.removesuffix(".json")] = json.loads((run / name).read_text())
    if settings:
        parts.append("<h2>Settings</h2>")
        parts.append(_table(["setting", "value"], [list(kv) for kv in _flatten(settings)]))
    parts += _slices(run) + _evolution(run) + _minwidth(run)
    pngs = [p for p in sorted(run.glob("*.png")) if not p.name.startswith(("slice_", "evolution"))
            and p.name != "minwidth.png"]
    if pngs:
        parts.append("<h2>Plots</h2>")
    parts += [_img(p) for p in pngs]
    for p in sorted(run.glob("phase*.csv")):
        with open(p, newline="") as f:
            rows = list(csv.reader(f))
        if not rows:
            continue
        header, body = rows[0], rows[1:]
        ri = header.index("regime") if "regime" in header else None
        parts.append(f"<h2>Phase table {html.escape(p.stem)}</h2>")
        parts.append(_table(header, body, (lambda i: body[i][ri]) if ri is not None else None))
    if (run / "results.json").is_file():
        rows = json.loads((run / "results.json").read_text()).get("rows", [])
        if rows:
            cols = [c for c in REPORT_COLUMNS if any(c in r for r in rows)]
            parts.append(f"<h2>Results ({len(rows)} points)</h2>")
            parts.append(_table(cols, [[r.get(c, "") for c in cols] for r in rows]))
    for name in ("metrics.json", "collisions.json", "categorization.json"):
        if (run / name).is_file():
            d = json.loads((run / name).read_text())
            parts.append(f"<h2>{html.escape(name)}</h2>")
            parts.append(_table(["key", "value"], [list(kv) for kv in _flatten(d)]))
    doc = ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
           f"<title>{html.escape(title or 'activation-hash report')}</title>"
           f"<style>{_STYLE}</style></head><body>\n" + "\n".join(parts) + "\n" + _COUNT_IMAGES + "\n</body></html>\n")
    out = run / "report.html"
    from activation_hash.fileio import atomic_write_text

    atomic_write_text(out, doc)
    return out
