#!/usr/bin/env python3
"""Check an ``activation-hash`` HTML report in a real browser (headless Chromium).

    python tools/check_report.py RUN/report.html [--screenshot shot.png] [--chromium PATH]

Chromium is not a dependency of the project; install it for this check only, e.g. on Debian /
Ubuntu ``sudo apt-get install -y chromium`` (``make report-check REPORT=RUN/report.html``).

Two checks:

1. ``--dump-dom`` after the page has loaded: the report's inline script writes, on the
   ``load`` event, how many ``<img>`` the browser decoded (``naturalWidth > 0``) into
   ``<body data-images-loaded=N data-images-total=M>``; every image must have decoded.
2. A headless screenshot: the page must not be blank (a page whose images failed is near
   white with small broken-image icons): the number of distinct colours is reported and must
   exceed ``--min-colours``.

Prints one JSON line; exit status 0 when both pass, 1 when one fails, 2 without a browser.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def find_browser(explicit: str | None = None) -> str | None:
    """The Chromium executable: ``explicit``, ``$CHROMIUM``, or the first of
    :data:`BROWSERS` on the PATH (None: none installed)."""
    for name in (explicit, os.environ.get("CHROMIUM"), *BROWSERS):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def _run(browser: str, args: list[str], timeout: float) -> subprocess.CompletedProcess:
    with tempfile.TemporaryDirectory(prefix="ah-chromium-") as profile:
        cmd = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
               "--disable-dev-shm-usage", "--no-first-run", f"--user-data-dir={profile}",
               "--virtual-time-budget=10000", *args]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


def distinct_colours(png: Path) -> int:
    """Distinct RGB colours of a PNG (Pillow, which matplotlib brings)."""
    from PIL import Image

    with Image.open(png) as im:
        rgb = im.convert("RGB")
        return len(rgb.getcolors(maxcolors=1 << 24) or [])


def check_report(report, *, browser: str | None = None, screenshot=None,
                 window: str = "1200,3000", min_colours: int = 200,
                 timeout: float = 120.0) -> dict:
    """Load ``report`` in headless Chromium; returns ``{"images_total", "images_loaded",
    "colours", "screenshot", "ok"}`` (``ok``: every image decoded and the screenshot has more
    than ``min_colours`` colours). FileNotFoundError without a browser or report."""
    report = Path(report).resolve()
    if not report.is_file():
        raise FileNotFoundError(f"no report at {str(report)!r}")
    exe = find_browser(browser)
    if exe is None:
        raise FileNotFoundError("no Chromium found (tried $CHROMIUM and " + ", ".join(BROWSERS)
                                + "); install it, e.g. apt-get install -y chromium")
    url = report.as_uri()
    dom = _run(exe, ["--dump-dom", url], timeout).stdout
    body = re.search(r"<body[^>]*>", dom)
    attrs = dict(re.findall(r'(data-images-\w+)="(\d+)"', body.group(0))) if body else {}
    shot = Path(screenshot) if screenshot else Path(tempfile.mkdtemp()) / "report.png"
    _run(exe, [f"--screenshot={shot}", f"--window-size={window}", url], timeout)
    colours = distinct_colours(shot) if shot.is_file() else 0
    res = {"report": str(report), "browser": exe,
           "images_total": int(attrs.get("data-images-total", -1)),
           "images_loaded": int(attrs.get("data-images-loaded", -1)),
           "images_in_html": len(re.findall(r"<img\b", report.read_text())),
           "colours": colours, "screenshot": str(shot)}
    res["ok"] = (res["images_total"] == res["images_in_html"] == res["images_loaded"] > 0
                 and colours > min_colours)
    return res


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("report", help="a report.html")
    p.add_argument("--screenshot", help="where to keep the screenshot (PNG)")
    p.add_argument("--chromium", help="the browser executable (default: found on the PATH)")
    p.add_argument("--window", default="1200,3000", help="window size W,H (default 1200,3000)")
    p.add_argument("--min-colours", type=int, default=200)
    a = p.parse_args(argv)
    if find_browser(a.chromium) is None:
        print("check_report: no Chromium (install it, e.g. apt-get install -y chromium)",
              file=sys.stderr)
        return 2
    try:
        res = check_report(a.report, browser=a.chromium, screenshot=a.screenshot,
                           window=a.window, min_colours=a.min_colours)
    except (OSError, subprocess.TimeoutExpired) as e:
        print(f"check_report: error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(res))
    return 0 if res["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
