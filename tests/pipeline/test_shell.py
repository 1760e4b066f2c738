"""Subprocess output in flow logs: progress bars collapse to their final state, ordinary lines pass."""

from __future__ import annotations

import sys
from pathlib import Path

from flows.shell import final_redraw, run_command

SCRIPT = """
import sys
from tqdm import tqdm
print("before", flush=True)
for _ in tqdm(range(500), desc="forced", disable=False, mininterval=0, file=sys.stdout):
    pass
for _ in tqdm(range(500), desc="default", mininterval=0, file=sys.stdout):
    pass
print("", flush=True)
print("after", flush=True)
"""


class Lines:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def info(self, line: str) -> None:
        self.lines.append(line)


def test_progress_bars_stay_out_of_the_log(tmp_path: Path) -> None:
    logger = Lines()
    out = run_command([sys.executable, "-c", SCRIPT], cwd=tmp_path, logger=logger)

    assert out == logger.lines
    assert out[0] == "before" and out[-2:] == ["", "after"]  # blank lines the tool prints are kept
    bars = [line for line in out if "forced" in line or "default" in line]
    assert len(bars) == 1 and "500/500" in bars[0]  # one line: the forced bar's final state; the other is off
    assert len(out) == 4


def test_final_redraw() -> None:
    assert final_redraw("a\rb 10%\rb 100%") == "b 100%"
    assert final_redraw("plain") == "plain"
    assert final_redraw("\r   \r") == ""
