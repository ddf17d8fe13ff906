"""Pure-PyTorch references of every cltx kernel (the CPU path, the test oracle, the bench baseline).

One module to import them from; each kernel's reference lives beside it in ``reference_<name>.py``.
"""

from __future__ import annotations

from cltx.kernels.neighbors import select_neighbors, sparsemax_sorted  # noqa: F401
from cltx.kernels.reference_salt import apply_alpha, salt_alpha_reference, salt_fit_reference  # noqa: F401

from cltx.kernels.reference_clo import clo_loss_reference, plan_chunks  # noqa: F401  # isort: skip
