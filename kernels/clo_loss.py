"""Fused linear paired log-prob loss for CLO (Cross-Lingual Optimization, ACL 2025, arXiv 2505.14297).

Inputs: hidden (2P, T, H) — rows 0…P−1 chosen responses, rows P…2P−1 their rejected partners; the LM head
weight (V, H) and optional bias (V,); labels (2P, T) aligned with hidden (−100 = not scored). With
z_t = h_t·Wᵀ + b (or, for a model that transforms its logits, c·tanh(s·(h_t·Wᵀ + b)/c) with ``logit_softcap`` c,
s·(h_t·Wᵀ + b) with ``logit_scale`` s alone: Gemma-2, Cohere/Aya, Granite; applied in the row kernels, with the
chain factor s·(1 − (z/c)²) on the d-logits) and logp_t = z_t[y_t] − logsumexp(z_t):

    s(row) = Σ_t logp_t                      (÷ token count with average_logps)
    NLL    = −Σ_{chosen rows with nll_mask} Σ_t logp_t / (their token count)   (0 when none)
    CL     = mean_i softplus(−β[(s(c_i) − ref_c_i) − (s(r_i) − ref_r_i)])
    loss   = λ·NLL + (1 − λ)·CL

d loss / d z_t(v) = coef_t·(onehot(y_t) − softmax(z_t))(v), where coef_t = d loss / d logp_t depends on the
token's whole pair (the DPO coefficient β·σ(−β·m_i)). The loss is a scalar, so loss and exact gradients
(no entry filtered) are computed in the forward and the backward only scales them by the upstream gradient.

Why fuse, in numbers (H 4096, V 128256, N = 32,768 tokens, bf16): plain PyTorch materialises N×V logits,
their fp32 log-softmax and its gradient — 47 GiB. Here only one chunk of logits exists at a time, under
``memory_budget_gib`` (default 2 GiB), and the in-place row kernels turn it into d-logits without another
copy. Work per chunk:

1. logits = h·Wᵀ (+b) by cuBLAS into the chunk buffer (2·n·H·V flops);
2. ``_clo_row_stats_kernel``: one program per token row streams the vocabulary in BLOCK_V tiles with an
   online log-sum-exp in fp32 and gathers the label logit (reads n·V logits once);
3. once the chunk's pairs' log-probs are known, the coefficients are known, and ``_clo_row_grad_kernel``
   overwrites the logits with coef·(onehot − softmax) in place (one read, one write);
4. grad_hidden = dz·W and grad_W += dzᵀ·h by cuBLAS (4·n·H·V flops).

The DPO coefficient of a row is known only once its whole pair is scored. Three plans, chosen per call by
:func:`cltx.kernels.reference_clo.plan_chunks` (:func:`last_plan` reports the one that ran):

* ``pair`` — whole pairs' logits fit the budget: chunks of pairs are held, the coefficients are known before
  step 3: 6·N·H·V flops, the floor of any exact method (one forward product, two backward).
* ``deferred`` — a pair does not fit, but the weight is frozen or one (single pair) or two V × H partial-sum
  buffers fit: step 3 uses a unit coefficient, so dz = onehot − softmax needs only the row's own
  log-sum-exp; d-logits are linear in the coefficient, so the hidden gradient is scaled per row at the end
  and the weight gradient is summed per row (a_c, a_r) and folded in, scaled, when the pair is complete:
  still 6·N·H·V, no recompute. (A frozen LM head — attention-only CLO training — costs no extra memory.)
* ``recompute`` — otherwise (small budgets): pass 1 (steps 1–2 over tiles of n tokens × w vocabulary columns,
  the slab log-sum-exps merged per token) keeps only each token's log-sum-exp and label logit; the
  coefficients follow; pass 2 recomputes each tile for steps 3–4: 8·N·H·V flops (1.33× the floor). w is a
  multiple of 256 (aligned rows: cuBLAS's tensor-core kernels; an odd width such as 14,251 bf16 columns ran
  the first H200 measurement at 8× the floor), n and w are chosen for the least accumulator traffic with
  products ≥ 2,048 tokens deep and ≥ 4,096 columns wide where the budget allows. Pass 2 runs token chunks
  outer: a chunk's hidden gradient is summed over slabs in an fp32 accumulator (in the budget) and cast once.
* pair chunks are two blocks of rows (chosen, rejected): their hidden rows are gathered into not yet written
  rows of the hidden gradient so each chunk's weight gradient is one product (one read and write of gw).

The row kernels make three passes over the logits in memory, a few per cent of the matmul time on an
H100/H200 (8k tokens: 3 × 2.1 GB ≈ 1.5 ms at ~4 TB/s against ≈ 33 ms of products).

Candidate, off by default until measured (``CLTX_CLO_OVERLAP=1``; bench provider ``cltx_overlap``): each pair
chunk as two blocks of rows (chosen, rejected) with the row kernels of one block on a side CUDA stream beside a
product of the other — statistics(chosen) ‖ logits(rejected), d-logits(rejected) ‖ grad_hidden(chosen). Half of
the row passes can hide only where SMs are free beside the product (its last wave, launch gaps): a cuBLAS
product that fills every SM's registers and shared memory leaves no room to run beside it. Results are
bit-identical for chunks of two blocks; a chunk of all pairs splits its logits and hidden-gradient products in
two (rounding may differ within the dtype's tolerance).

Precision: logits and d-logits are stored in the activations' dtype (bf16 under bf16 inputs); every
reduction (log-sum-exp, softmax, sums, the products) accumulates in fp32. The hidden gradient over several
slabs is summed in fp32; the weight gradient over several token chunks is summed in its own dtype between
products (fp32 for an fp32 master weight, through fp32-output products when the activations are bf16).
"""

from __future__ import annotations

import logging
import sys
import types

import torch
import triton
import triton.language as tl

from cltx.kernels._dispatch import choose, interpreting
from cltx.kernels.reference_clo import (
    REFERENCE_ROW_OPS,
    ChunkPlan,
    last_plan,
    run_clo_loss,
)

__all__ = ["clo_loss", "last_plan", "ChunkPlan"]

logger = logging.getLogger("cltx.kernels")


# ---------------------------------------------------------------------------------------------------
# 1. Block configuration
# ---------------------------------------------------------------------------------------------------


def _row_config(vocab: int) -> dict:
    """BLOCK_V and warps for the row kernels (memory-bound streams over one row of logits each)."""
    if interpreting():
        return {"BLOCK_V": min(triton.next_power_of_2(vocab), 256), "num_warps": 1}
    block = min(triton.next_power_of_2(vocab), 4096)
    return {"BLOCK_V": block, "num_warps": 8 if block >= 2048 else 4}


# ---------------------------------------------------------------------------------------------------
# 2. Kernels
# ---------------------------------------------------------------------------------------------------


@triton.jit
def _transform(z, SCALE, CAP, TRANSFORM: tl.constexpr):
    # The model's logits from the raw h·Wᵀ + b: TRANSFORM 1 = SCALE·z, 2 = CAP·tanh(SCALE·z / CAP), with
    # tanh(x) = 1 − 2 / (exp(2x) + 1) (exp overflows to inf for large x: → 1; exact at ±inf; absolute error
    # ~1e-7 near 0, i.e. ~CAP·1e-7 on a logit).
    if TRANSFORM >= 1:
        z = z * SCALE
    if TRANSFORM == 2:
        z = CAP * (1.0 - 2.0 / (tl.exp(z * (2.0 / CAP)) + 1.0))
    return z


@triton.jit
def _clo_row_stats_kernel(
    Z,  # (n, V) logits of vocabulary columns COL0 … COL0+V−1, any float dtype, row stride STRIDE_Z
    LABELS,  # (n,) int64 global token ids, −100 for unscored tokens
    LSE,  # (n,) fp32 out: logsumexp over these columns
    ZLAB,  # (n,) fp32 out: the label's logit, 0 where the label is unscored or outside these columns
    V,
    STRIDE_Z,
    COL0,
    SCALE,  # fp32 logit scale (TRANSFORM ≥ 1)
    CAP,  # fp32 logit softcap (TRANSFORM = 2)
    BLOCK_V: tl.constexpr,
    TRANSFORM: tl.constexpr,  # 0: logits as they are (the usual LM head); 1: scaled; 2: scaled and soft-capped
):
    # 1. This program's row; int64 so that row·V does not overflow (n·V passes 2^31).
    row = tl.program_id(0).to(tl.int64)
    z_row = Z + row * STRIDE_Z
    label = tl.load(LABELS + row)
    # 2. Online log-sum-exp over vocabulary tiles, fp32 (loads upcast at once: also what the
    #    interpreter needs, whose bf16 arithmetic is wrong).
    m = float("-inf")
    s = 0.0
    for v0 in range(0, V, BLOCK_V):
        offs = v0 + tl.arange(0, BLOCK_V)
        z = tl.load(z_row + offs, mask=offs < V, other=float("-inf")).to(tl.float32)
        if TRANSFORM != 0:  # the cap maps −inf to −CAP: masked columns are put back to −inf
            z = tl.where(offs < V, _transform(z, SCALE, CAP, TRANSFORM), float("-inf"))
        m_new = tl.maximum(m, tl.max(z, axis=0))
        s = s * tl.exp(m - m_new) + tl.sum(tl.exp(z - m_new), axis=0)
        m = m_new
    lse = m + tl.log(s)
    # 3. The label's logit (−100 or a label in another slab reads column 0 and discards it).
    local = label - COL0
    valid = (local >= 0) & (local < V)
    safe = tl.where(valid, local, 0)
    zl = tl.load(z_row + safe).to(tl.float32)
    if TRANSFORM != 0:
        zl = _transform(zl, SCALE, CAP, TRANSFORM)
    zl = tl.where(valid, zl, 0.0)
    tl.store(LSE + row, lse)
    tl.store(ZLAB + row, zl)


@triton.jit
def _clo_row_grad_kernel(
    Z,  # (n, V) logits of columns COL0 … COL0+V−1 in, d loss / d logits out (same dtype)
    LABELS,  # (n,) int64 global token ids, −100 for unscored tokens
    LSE,  # (n,) fp32: the full row's log-sum-exp
    COEF,  # (n,) fp32: d loss / d logp_t (0 for unscored tokens)
    V,
    STRIDE_Z,
    COL0,
    SCALE,
    CAP,
    BLOCK_V: tl.constexpr,
    TRANSFORM: tl.constexpr,  # as in _clo_row_stats_kernel; the d-logits are for the raw logits
):
    # 1. This program's row and its scalars.
    row = tl.program_id(0).to(tl.int64)
    z_row = Z + row * STRIDE_Z
    local = tl.load(LABELS + row) - COL0  # never matches a column when −100 or in another slab
    lse = tl.load(LSE + row)
    coef = tl.load(COEF + row)
    # 2. dz = coef·(onehot(label) − softmax), written over the logits; fp32 math, stored in Z's dtype.
    for v0 in range(0, V, BLOCK_V):
        offs = v0 + tl.arange(0, BLOCK_V)
        mask = offs < V
        z = tl.load(z_row + offs, mask=mask, other=0.0).to(tl.float32)
        if TRANSFORM != 0:
            z = _transform(z, SCALE, CAP, TRANSFORM)
        p = tl.exp(z - lse)
        g = coef * (tl.where(offs == local, 1.0, 0.0) - p)
        if TRANSFORM == 1:
            g = g * SCALE
        if TRANSFORM == 2:  # chain rule: d z / d raw = SCALE·(1 − tanh²) = SCALE·(1 − (z / CAP)²)
            t = z / CAP
            g = g * (SCALE * (1.0 - t * t))
        tl.store(z_row + offs, g.to(Z.dtype.element_ty), mask=mask)


# ---------------------------------------------------------------------------------------------------
# 3. Launchers
# ---------------------------------------------------------------------------------------------------

_KERNEL_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def _check_rows(logits: torch.Tensor, labels: torch.Tensor, *vecs: torch.Tensor) -> None:
    if logits.dim() != 2 or logits.stride(1) != 1:
        raise ValueError(f"clo row kernel: logits must be 2-D with unit column stride, got {tuple(logits.stride())}")
    if logits.dtype not in _KERNEL_DTYPES:
        raise ValueError(f"clo row kernel: logits dtype {logits.dtype} not in {_KERNEL_DTYPES}")
    n = logits.shape[0]
    if labels.dtype != torch.int64 or tuple(labels.shape) != (n,):
        raise ValueError(f"clo row kernel: labels must be int64 ({n},), got {labels.dtype} {tuple(labels.shape)}")
    for v in (labels, *vecs):
        if v.device != logits.device:
            raise ValueError("clo row kernel: every tensor must be on the logits' device")
    for v in vecs:
        if v.dtype != torch.float32 or tuple(v.shape) != (n,):
            raise ValueError(f"clo row kernel: per-row vectors must be fp32 ({n},), got {v.dtype} {tuple(v.shape)}")


def _transform_args(scale: float, softcap: float | None) -> tuple[float, float, int]:
    """(SCALE, CAP, TRANSFORM) of the row kernels: TRANSFORM 0 compiles the plain kernels."""
    if softcap is not None:
        return float(scale), float(softcap), 2
    return float(scale), 1.0, int(scale != 1.0)


def row_stats(
    logits: torch.Tensor,
    labels: torch.Tensor,
    col0: int = 0,
    *,
    config: dict | None = None,
    scale: float = 1.0,
    softcap: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row of ``logits`` (n, w) holding vocabulary columns col0 … col0+w−1: fp32 log-sum-exp of the
    row and the label's logit (0 where the label is −100 or outside these columns), both of the transformed
    logits softcap·tanh(scale·z/softcap) (scale·z without a cap). ``config`` overrides :func:`_row_config`
    (``BLOCK_V``, ``num_warps``: the benchmarks' sweep)."""
    labels = labels.contiguous()
    _check_rows(logits, labels)
    n, V = logits.shape
    lse = torch.empty(n, dtype=torch.float32, device=logits.device)
    zl = torch.empty(n, dtype=torch.float32, device=logits.device)
    if n == 0:
        return lse, zl
    cfg = config or _row_config(V)
    s, c, transform = _transform_args(scale, softcap)
    _clo_row_stats_kernel[(n,)](
        logits,
        labels,
        lse,
        zl,
        V,
        logits.stride(0),
        col0,
        s,
        c,
        BLOCK_V=cfg["BLOCK_V"],
        TRANSFORM=transform,
        num_warps=cfg["num_warps"],
    )
    return lse, zl


def row_grad_(
    logits: torch.Tensor,
    labels: torch.Tensor,
    lse: torch.Tensor,
    coef: torch.Tensor,
    col0: int = 0,
    *,
    config: dict | None = None,
    scale: float = 1.0,
    softcap: float | None = None,
) -> None:
    """Overwrite ``logits`` (n, w), columns col0 … col0+w−1, with coef·(onehot(label) − exp(z − lse)), z the
    transformed logits (see :func:`row_stats`), times d z / d logits; ``config`` as in :func:`row_stats`."""
    labels = labels.contiguous()
    lse = lse.to(torch.float32).contiguous()
    coef = coef.to(torch.float32).contiguous()
    _check_rows(logits, labels, lse, coef)
    n, V = logits.shape
    if n == 0:
        return
    cfg = config or _row_config(V)
    s, c, transform = _transform_args(scale, softcap)
    _clo_row_grad_kernel[(n,)](
        logits,
        labels,
        lse,
        coef,
        V,
        logits.stride(0),
        col0,
        s,
        c,
        BLOCK_V=cfg["BLOCK_V"],
        TRANSFORM=transform,
        num_warps=cfg["num_warps"],
    )


TRITON_ROW_OPS = {"stats": row_stats, "grad": row_grad_, "extra_bytes": 0, "path": "triton"}


# ---------------------------------------------------------------------------------------------------
# 4. Public function (the autograd.Function, shared with the reference, is
#    cltx.kernels.reference_clo.FusedCloFunction: loss + gradients in forward, scaling in backward)
# ---------------------------------------------------------------------------------------------------


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
    logit_scale: float = 1.0,
    logit_softcap: float | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """CLO loss λ·NLL + (1 − λ)·CL over paired responses, fused with the LM head (see the module docstring).

    Args:
        hidden: (2P, T, H) float (bf16/fp16/fp32; fp64 runs the reference): rows 0…P−1 chosen, P…2P−1
            rejected; pair i = rows i and P+i.
        weight: (V, H) LM head weight, any float dtype (may differ from ``hidden``'s: the matmuls run in
            ``hidden``'s dtype; the weight gradient comes back in the weight's dtype).
        labels: (2P, T) int64, aligned with ``hidden``; −100 = not scored.
        ref_chosen_logps, ref_rejected_logps: (P,) float reference log-probs.
        nll_mask: (P,) bool: chosen rows that count in the NLL term.
        bias: optional (V,) LM head bias.
        beta: DPO temperature β. lam: λ, the NLL weight.
        average_logps: mean instead of sum of token log-probs per sequence (CL term only).
        memory_budget_gib: working memory beyond the gradients (logits chunk, casts): a finite number > 0;
            default 2 GiB.
        mode: force ``"pair"``, ``"deferred"`` or ``"recompute"`` (tests, benchmarks); ``None`` picks per budget.
        logit_scale, logit_softcap: for models that transform their logits after the LM head: the softmax sees
            z = logit_softcap·tanh(logit_scale·(h·Wᵀ + b)/logit_softcap) (Gemma-2: softcap 30; Cohere/Aya:
            scale = the config's logit_scale; Granite: scale = 1/logits_scaling); without a softcap
            z = logit_scale·(h·Wᵀ + b). Defaults: plain logits (the kernels compiled without the transform).

    Returns:
        ``(loss, metrics)``: the scalar loss (fp32; fp64 for fp64 inputs) and a dict of detached tensors
        ``chosen_logps``, ``rejected_logps`` (P,), ``rewards_chosen``, ``rewards_rejected``, ``margins``
        (P,), ``accuracy``, ``nll``, ``cl``.

    The gradients are computed in the forward: backward runs once per call (``retain_graph`` for a second
    backward and ``create_graph=True`` are refused with an error). Bad arguments raise
    :class:`cltx.errors.CltxError` naming the argument.
    """
    path = choose("clo_loss", hidden, weight, bias, labels)
    use_triton = path == "triton" and hidden.dtype in _KERNEL_DTYPES and not _BROKEN
    args = (hidden, weight, labels, ref_chosen_logps, ref_rejected_logps, nll_mask)
    opts = {
        "bias": bias,
        "beta": beta,
        "lam": lam,
        "average_logps": average_logps,
        "memory_budget_gib": memory_budget_gib,
        "mode": mode,
        "logit_scale": logit_scale,
        "logit_softcap": logit_softcap,
    }
    if not use_triton:
        return run_clo_loss(*args, row_ops=REFERENCE_ROW_OPS, **opts)
    try:
        return run_clo_loss(*args, row_ops=TRITON_ROW_OPS, **opts)
    except Exception as e:
        # A Triton build that cannot compile or launch these kernels: say so once and use the reference
        # (last_plan().path tells which ran; the GPU tests require "triton").
        if not type(e).__module__.startswith("triton"):
            raise
        _BROKEN.append(repr(e))
        logger.warning("clo_loss: the Triton row kernels failed (%r); using the PyTorch reference from now on", e)
        return run_clo_loss(*args, row_ops=REFERENCE_ROW_OPS, **opts)


_BROKEN: list[str] = []


class _CallableModule(types.ModuleType):
    """Importing ``cltx.kernels.clo_loss`` (this module) rebinds the package attribute ``clo_loss`` from the
    lazily exported function to the module; calling the module forwards to the function, so
    ``cltx.kernels.clo_loss(...)`` works in either order of imports."""

    def __call__(self, *args, **kwargs):
        return clo_loss(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
