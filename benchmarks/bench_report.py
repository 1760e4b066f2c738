"""How heavy and how fast the approver's report is for a large drop: a synthetic 100,000-sample screen.

Builds a screened dataset with a planted patch backdoor (tests.fixtures.synthetic_screen: real LLaVA JSON,
real detectors on synthetic decision states, images from a bounded pool of files so setup stays cheap),
renders report.html and prints:
- render time in Python (evidence, thumbnails, page) and the file's size;
- headless Chromium: wall time to open the page and dump its DOM, the same for an empty page (browser
  start-up, subtracted), and the page's own clock (`performance.now()` when its script finished, which the
  report writes into `body[data-rendered]`).

    python benchmarks/bench_report.py                  # 100,000 samples, 10 % poisoned
    python benchmarks/bench_report.py --n 5000 --keep /tmp/r   # smaller; keep the folder to look at it
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from poisonguard.report.browser import chromium_binary, dump_dom
from poisonguard.report.html import render_report
from tests.fixtures.synthetic_screen import make_screen


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=100_000, help="samples in the drop")
    p.add_argument("--rate", type=float, default=0.1, help="share of poisoned samples")
    p.add_argument("--pool", type=int, default=400, help="distinct image files per kind (clean / patched)")
    p.add_argument("--image-size", type=int, default=256, help="side of the generated images (px)")
    p.add_argument("--noise", type=float, default=12.0, help="pixel noise (photo-like thumbnails)")
    p.add_argument("--repeats", type=int, default=3, help="browser runs (the median is reported)")
    p.add_argument("--keep", type=Path, default=None, help="write into this folder and keep it")
    return p.parse_args(argv)


def _median(xs: list[float]) -> float:
    return sorted(xs)[len(xs) // 2]


def main(argv=None) -> dict:
    a = parse_args(argv)
    folder = a.keep or Path(tempfile.mkdtemp(prefix="pg-bench-report-"))
    folder.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    s = make_screen(folder, n=a.n, rate=a.rate, pool=a.pool, validate=False, n_bad=20,
                    image_size=a.image_size, noise=a.noise)
    setup_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    page = render_report(s.table, s.reports, s.default, folder / "report.html", checked=s.checked)
    render_s = time.perf_counter() - t0
    out = {"date": f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC", "machine": f"{platform.machine()}, "
           f"{os.cpu_count()} CPUs", "n": a.n, "flagged": int(s.table["flagged"].sum()), "setup_s": setup_s,
           "render_s": render_s, "size_mb": page.stat().st_size / 1e6,
           "thumbnails": page.read_text(encoding="utf-8").count("\"thumb\": \"data:image/")}
    if chromium_binary() is not None:
        empty = folder / "empty.html"
        empty.write_text("<!doctype html><html><body>empty</body></html>")
        walls, base, clock = [], [], []
        for _ in range(a.repeats):
            base.append(dump_dom(empty, budget_ms=None)[1])
            dom, wall = dump_dom(page, budget_ms=None)
            walls.append(wall)
            m = re.search(r'data-rendered="(\d+)"', dom)
            clock.append(float(m.group(1)) / 1000 if m else float("nan"))
        out.update(browser_wall_s=_median(walls), browser_empty_s=_median(base),
                   browser_page_s=_median(walls) - _median(base), page_script_done_s=_median(clock))
    else:
        out["browser"] = "skipped: no Chromium binary"
    for k, v in out.items():
        print(f"{k:>20}: {v:.3f}" if isinstance(v, float) else f"{k:>20}: {v}")
    return out


if __name__ == "__main__":
    main()
