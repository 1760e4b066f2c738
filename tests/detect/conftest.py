"""Detector tests run many small tensor ops; one torch thread is faster for them than fanning out (and keeps
them quick next to other jobs on a 2-core machine). The suite-wide setting is restored afterwards."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True, scope="package")
def _one_torch_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
