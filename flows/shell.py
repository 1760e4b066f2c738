"""Running a command-line tool from a flow task, with its output in the Prefect logs.

DVC and the poisonguard CLI are driven as subprocesses, not through their Python internals: `dvc repro` is
only stable as a CLI (research/anchors.md §B.4), and a subprocess keeps the task's memory and threads apart
from the flow's. Output is streamed line by line into the run logger and the tail kept for the error.

Progress bars stay out of the logs: a child gets `TQDM_DISABLE=1` (every tqdm bar not told otherwise), and a
bar that still draws itself (a caller passing `disable=False` explicitly) redraws with carriage returns on
one line; only the text after its last carriage return, the bar's final state, becomes a log line. Without
that, one screening put thousands of bar redraws into a run's log.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
import threading
from collections import deque
from collections.abc import Sequence
from pathlib import Path

_TAIL_LINES = 40
QUIET_ENV = {"TQDM_DISABLE": "1", "PYTHONUNBUFFERED": "1"}


class CommandFailed(RuntimeError):
    """A command exited non-zero; the message carries its exit code and the last lines of its output."""

    def __init__(self, cmd: Sequence[str], returncode: int, tail: Sequence[str]) -> None:
        self.returncode = returncode
        shown = "\n".join(tail)
        super().__init__(f"`{' '.join(cmd)}` exited with code {returncode}; last output:\n{shown}")


def run_command(cmd: Sequence[str], cwd: str | Path, *, timeout_s: float | None = None,
                logger=None, env: dict[str, str] | None = None) -> list[str]:
    """Run `cmd` in `cwd`, stream its merged stdout/stderr to `logger` (or stderr); return the output lines
    (progress-bar redraws collapsed, see the module docstring). `env` adds to this process's environment.

    Raises CommandFailed on a non-zero exit and TimeoutError (after killing it) past `timeout_s`.
    """
    lines: list[str] = []
    tail: deque[str] = deque(maxlen=_TAIL_LINES)
    child_env = {**os.environ, **QUIET_ENV, **(env or {})}
    with subprocess.Popen(list(cmd), cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          env=child_env) as proc:
        # A watchdog, because a silent command would block the line loop past any wait(timeout=...).
        timed_out = threading.Event()

        def expire() -> None:
            timed_out.set()
            proc.kill()

        watchdog = threading.Timer(timeout_s, expire) if timeout_s else None
        if watchdog is not None:
            watchdog.start()
        try:
            # Split on "\n" only: universal newlines would make every "\r" redraw a line of its own.
            stream = io.TextIOWrapper(proc.stdout, encoding="utf-8", errors="replace", newline="\n") \
                if proc.stdout is not None else ()
            for raw in stream:
                text = raw.rstrip("\n")
                line = final_redraw(text)
                if "\r" in text and not line:  # a bar that cleared itself (leave=False)
                    continue
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


def final_redraw(line: str) -> str:
    """What a terminal would show of `line`: the text after its last carriage return (a progress bar's
    final state), or the whole line when it has none."""
    parts = [p for p in line.split("\r") if p.strip()]
    return parts[-1] if parts else ""


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
