"""Fused linear paired log-prob loss for CLO (placeholder dispatch; Triton path follows)."""

from __future__ import annotations

import torch

from cltx.kernels.reference_clo import REFERENCE_ROW_OPS, last_plan, run_clo_loss

__all__ = ["clo_loss", "last_plan"]


def clo_loss(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    nll_mask: torch.Tensor,
    *,
    bias: torch.Tensor | None = None,
    beta: float = 0.1,
    lam: float = 0.5,
    average_logps: bool = False,
    memory_budget_gib: float | None = None,
    mode: str | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """CLO loss (see kernels/reference_clo.py for the math)."""
    return run_clo_loss(
        hidden,
        weight,
        labels,
        ref_chosen_logps,
        ref_rejected_logps,
        nll_mask,
        bias=bias,
        beta=beta,
        lam=lam,
        average_logps=average_logps,
        memory_budget_gib=memory_budget_gib,
        row_ops=REFERENCE_ROW_OPS,
        mode=mode,
    )
