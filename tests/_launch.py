"""Launching worker processes for the multi-process tests (DDP, FSDP): a free port, a torchrun
prefix and a checked run with a private cache. Imported by the test files (tests/ is on sys.path)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(nproc: int) -> list[str]:
    """``python -m torch.distributed.run`` for ``nproc`` local processes on a free port."""
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nnodes=1",
        f"--nproc_per_node={nproc}",
        f"--master_port={free_port()}",
    ]


def run_checked(cmd: list[str], cache) -> None:
    """Run ``cmd`` with one thread a process and ``CLTX_CACHE=cache``; fail with its stderr's tail."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CLTX_CACHE": str(cache)}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-4000:]
