"""Open a report in headless Chromium: the DOM after its script ran, and screenshots.

Used to check that what the approver sees is really there once a browser has rendered the page (tests), to
time how long a large report takes to open (benchmark), and to take the README's screenshot. Chromium is an
optional system tool (Debian's `chromium`); `chromium_binary()` returns None when it is missing so callers
can skip with a reason.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")


def chromium_binary() -> str | None:
    """Path of a Chromium-family browser on PATH (or in $CHROMIUM), or None."""
    env = os.environ.get("CHROMIUM")
    if env and shutil.which(env):
        return shutil.which(env)
    return next((shutil.which(c) for c in CANDIDATES if shutil.which(c)), None)


def _run(args: list[str], timeout: float) -> tuple[subprocess.CompletedProcess, float]:
    exe = chromium_binary()
    if exe is None:
        raise FileNotFoundError("no Chromium binary found (install Debian's `chromium`, or set $CHROMIUM)")
    with tempfile.TemporaryDirectory(prefix="pg-chromium-") as profile:
        # --no-sandbox: CI and containers run as root, where Chromium's sandbox refuses to start.
        cmd = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
               "--no-first-run", "--no-default-browser-check", "--hide-scrollbars", "--mute-audio",
               f"--user-data-dir={profile}", *args]
        t0 = time.perf_counter()
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
        return r, time.perf_counter() - t0


def dump_dom(page: Path, *, budget_ms: int | None = 5000, timeout: float = 60) -> tuple[str, float]:
    """(serialised DOM after the page's scripts ran, wall seconds of the whole browser run).

    `budget_ms` of virtual time lets timers and promises settle first; None dumps right after the load
    event, in real time (for timing the page itself)."""
    budget = [] if budget_ms is None else [f"--virtual-time-budget={budget_ms}"]
    r, wall = _run([*budget, "--dump-dom", Path(page).resolve().as_uri()], timeout)
    if r.returncode != 0 or not r.stdout:
        raise RuntimeError(f"chromium --dump-dom failed ({r.returncode}): {r.stderr[-2000:]}")
    return r.stdout, wall


def screenshot(page: Path, png: Path, *, width: int = 1200, height: int = 1600, budget_ms: int = 5000,
               timeout: float = 60) -> float:
    """Write a `width`×`height` PNG of the page's top; returns wall seconds."""
    r, wall = _run([f"--window-size={width},{height}", f"--virtual-time-budget={budget_ms}",
                    f"--screenshot={Path(png).resolve()}", Path(page).resolve().as_uri()], timeout)
    if r.returncode != 0 or not Path(png).exists():
        raise RuntimeError(f"chromium --screenshot failed ({r.returncode}): {r.stderr[-2000:]}")
    return wall
