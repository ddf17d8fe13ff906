"""Test tiers.

* CPU (default): everything not marked ``interpreter`` or ``gpu``.
* Interpreter: tests marked ``interpreter`` run only when ``TRITON_INTERPRET=1`` was set before
  triton was imported (so in their own pytest process; see scripts/test.sh); skipped otherwise.
* GPU: tests marked ``gpu`` run only with CUDA.
"""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def pytest_collection_modifyitems(config, items):
    import torch

    interp = os.environ.get("TRITON_INTERPRET", "0") == "1"
    has_cuda = torch.cuda.is_available()
    skip_interp = pytest.mark.skip(reason="interpreter tier: run with TRITON_INTERPRET=1 (scripts/test.sh does)")
    only_interp = pytest.mark.skip(reason="TRITON_INTERPRET=1 run: only the interpreter tier")
    skip_gpu = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords and not has_cuda:
            item.add_marker(skip_gpu)
        if "interpreter" in item.keywords and not interp:
            item.add_marker(skip_interp)
        if interp and "interpreter" not in item.keywords:
            item.add_marker(only_interp)


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory):
    """Tests share one cltx cache per session unless CLTX_CACHE is set by the runner
    (scripts/test.sh points it at .cltx-cache so the converted SmolLM2 is reused across runs)."""
    if "CLTX_CACHE" not in os.environ:
        os.environ["CLTX_CACHE"] = str(tmp_path_factory.mktemp("cltx-cache"))
    yield


@pytest.fixture
def one_thread():
    """Tiny matmuls on a shared 2-core machine: one torch thread for the test, restored after it
    (test files opt in with ``pytestmark = pytest.mark.usefixtures("one_thread")``)."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
