"""One poisonguard run per output folder at a time.

Two screens writing one report folder would mix shards of different plans and overwrite each other's
verdicts, so `folder_lock(out)` holds an exclusive, non-blocking `flock` on `out/.poisonguard.lock` for the
whole run; a second run fails at once with a message naming the holder. The kernel drops a `flock` when its
holder dies, even by kill -9, so a crashed run never leaves a stale lock behind (a lock *file* whose mere
existence is the lock would). The file's content (pid, start time, command) is only for that message, and the
file is never deleted: unlinking it would let a third run lock a fresh inode while the second still holds the
old one. `flock` is reliable on local file systems; on network file systems use one folder per machine.
"""

from __future__ import annotations

import fcntl
import json
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

LOCK_FILE = ".poisonguard.lock"


class FolderBusyError(RuntimeError):
    """Another poisonguard run holds the output folder."""


@contextmanager
def folder_lock(folder: str | Path) -> Iterator[Path]:
    """Hold `folder`'s run lock inside the block (the folder is created if needed); raise `FolderBusyError`
    at once if another process holds it."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise FolderBusyError(
                f"{folder} is in use by another poisonguard run ({_holder(fd)}); wait for it to finish or "
                "choose another output folder") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps({"pid": os.getpid(), "started": datetime.now(UTC).isoformat(
            timespec="seconds"), "command": " ".join(sys.argv)}).encode() + b"\n", 0)
        yield path
    finally:
        os.close(fd)  # releases the lock


def _holder(fd: int) -> str:
    try:
        info = json.loads(os.pread(fd, 4096, 0) or b"{}")
        return f"pid {info['pid']}, started {info['started']}"
    except (ValueError, KeyError, OSError):
        return "holder unknown"
