"""cltx.kernels: Triton kernels with pure-PyTorch references (torch + triton only).

* :func:`salt_fit` — batched per-token least-squares fits for SALT.
* :func:`select_neighbors` — cosine similarity → sparsemax neighbour selection.
* :func:`clo_loss` — fused linear paired log-prob loss (NLL + DPO-style CL) for CLO.

Importing this package never imports transformers (a test asserts it). The functions are bound
eagerly: a submodule and its function share a name (``cltx.kernels.clo_loss``), and binding the
function here, after the submodule has loaded, keeps ``from cltx.kernels import clo_loss`` the
function however the submodule was imported first.
"""

from __future__ import annotations

from cltx.kernels.clo_loss import clo_loss
from cltx.kernels.neighbors import select_neighbors
from cltx.kernels.salt_fit import salt_fit

__all__ = ["salt_fit", "select_neighbors", "clo_loss"]
