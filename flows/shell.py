"""Running a command-line tool from a flow task, with its output in the Prefect logs.

DVC and the poisonguard CLI are driven as subprocesses, not through their Python internals: `dvc repro` is
only stable as a CLI (research/anchors.md §B.4), and a subprocess keeps the task's memory and threads apart
from the flow's. Output is streamed line by line into the run logger and the tail kept for the error.
"""

from __future__ import annotations

import subprocess
import sys
import threading
from collections import deque
from collections.abc import Sequence
from pathlib import Path

_TAIL_LINES = 40


class CommandFailed(RuntimeError):
    """A command exited non-zero; the message carries its exit code and the last lines of its output."""

    def __init__(self, cmd: Sequence[str], returncode: int, tail: Sequence[str]) -> None:
        self.returncode = returncode
        shown = "\n".join(tail)
        super().__init__(f"`{' '.join(cmd)}` exited with code {returncode}; last output:\n{shown}")


def run_command(cmd: Sequence[str], cwd: str | Path, *, timeout_s: float | None = None,
                logger=None) -> list[str]:
    """Run `cmd` in `cwd`, stream its merged stdout/stderr to `logger` (or stderr); return the output lines.

    Raises CommandFailed on a non-zero exit and TimeoutError (after killing it) past `timeout_s`.
    """
    lines: list[str] = []
    tail: deque[str] = deque(maxlen=_TAIL_LINES)
    with subprocess.Popen(list(cmd), cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          bufsize=1) as proc:
        # A watchdog, because a silent command would block the line loop past any wait(timeout=...).
        timed_out = threading.Event()

        def expire() -> None:
            timed_out.set()
            proc.kill()

        watchdog = threading.Timer(timeout_s, expire) if timeout_s else None
        if watchdog is not None:
            watchdog.start()
        try:
            for raw in proc.stdout or ():
                line = raw.rstrip("\n")
                lines.append(line)
                tail.append(line)
                if logger is not None:
                    logger.info(line)
                else:
                    print(line, file=sys.stderr)
            proc.wait()
        except BaseException:
            proc.kill()
            raise
        finally:
            if watchdog is not None:
                watchdog.cancel()
    if timed_out.is_set():
        raise TimeoutError(f"`{' '.join(cmd)}` was killed after {timeout_s} s")
    if proc.returncode != 0:
        raise CommandFailed(cmd, proc.returncode, list(tail))
    return lines


def poisonguard_cli() -> list[str]:
    """The `poisonguard` console script of this interpreter's environment (works without an activated venv)."""
    script = Path(sys.executable).with_name("poisonguard")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "from poisonguard.cli import main; main()"]


def dvc_cli() -> list[str]:
    """`dvc` of this interpreter's environment, falling back to `python -m dvc`."""
    script = Path(sys.executable).with_name("dvc")
    return [str(script)] if script.exists() else [sys.executable, "-m", "dvc"]
