"""The output-folder lock: one holder at a time, across processes, and never outliving a killed holder."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from poisonguard.runlock import LOCK_FILE, FolderBusyError, folder_lock

HOLD = "import sys, time\nfrom poisonguard.runlock import folder_lock\nwith folder_lock(sys.argv[1]):\n    print('held', flush=True)\n    time.sleep(60)\n"


def _holder(folder) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(folder)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_second_holder_is_refused_while_the_first_holds(tmp_path):
    with folder_lock(tmp_path / "out") as path:
        assert path.name == LOCK_FILE
        busy = rf"in use by another poisonguard run \(pid {os.getpid()}, started "
        with pytest.raises(FolderBusyError, match=busy), folder_lock(tmp_path / "out"):
            pass
    with folder_lock(tmp_path / "out"):  # released on exit
        pass


def test_another_process_holds_it_and_kill_9_releases_it(tmp_path):
    proc = _holder(tmp_path)
    try:
        with pytest.raises(FolderBusyError, match=f"pid {proc.pid}"), folder_lock(tmp_path):
            pass
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    started = time.monotonic()
    with folder_lock(tmp_path):  # the kernel dropped the dead holder's lock: no stale lock to clean up
        assert time.monotonic() - started < 1
