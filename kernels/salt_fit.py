"""SALT per-token least-squares fit (public entry point; the Triton kernel lands next)."""

from __future__ import annotations

import sys
import types

import torch

from cltx.kernels._dispatch import choose
from cltx.kernels.reference_salt import check_salt_inputs, salt_fit_reference

__all__ = ["salt_fit"]


def salt_fit(
    x_query: torch.Tensor,
    x_basis: torch.Tensor,
    y_basis: torch.Tensor,
    neighbors: torch.Tensor,
    *,
    ridge: float = 0.0,
    chunk_size: int | None = None,
) -> torch.Tensor:
    """Row t = x_t · pinv(X_t) · Y_t (ridge = 0) or α_tᵀY_t with α_t = (X_tX_tᵀ + ridge·I)⁻¹X_t x_t."""
    neighbors = check_salt_inputs(x_query, x_basis, y_basis, neighbors, ridge)
    choose("salt_fit", x_query, x_basis, y_basis, neighbors)
    return salt_fit_reference(x_query, x_basis, y_basis, neighbors, ridge=ridge, chunk_size=chunk_size)


class _CallableModule(types.ModuleType):
    """``cltx.kernels.salt_fit`` names both this module and the function: once the module is imported,
    Python's import system binds the package attribute to the module, so ``from cltx.kernels import
    salt_fit`` could hand back the module. Making the module callable keeps both spellings working."""

    def __call__(self, *args, **kwargs):
        return salt_fit(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
