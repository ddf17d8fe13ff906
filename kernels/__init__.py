"""cltx.kernels: Triton kernels with pure-PyTorch references (torch + triton only).

* :func:`salt_fit` — batched per-token least-squares fits for SALT.
* :func:`select_neighbors` — cosine similarity → sparsemax neighbour selection.
* :func:`clo_loss` — fused linear paired log-prob loss (NLL + DPO-style CL) for CLO.

Importing this package never imports transformers (a test asserts it).
"""

from __future__ import annotations

import importlib

__all__ = ["salt_fit", "select_neighbors", "clo_loss"]

_LAZY = {
    "salt_fit": "cltx.kernels.salt_fit",
    "select_neighbors": "cltx.kernels.neighbors",
    "clo_loss": "cltx.kernels.clo_loss",
}


def __getattr__(name: str):
    # Lazy so that importing one kernel does not compile or import the others.
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'cltx.kernels' has no attribute {name!r}")
