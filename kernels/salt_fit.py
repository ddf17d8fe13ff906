"""SALT: batched per-token least squares, fused in one Triton kernel.

Math (Semantic Aware Linear Transfer, Findings of ACL 2025, arXiv 2505.10945; DESIGN.md §2/§4).
Each new token t has its own neighbour set N(t) (|N(t)| = k_t ≤ k) among the overlapping tokens:

    X_t = x_basis[N(t)] (k_t × d_in),   Y_t = y_basis[N(t)] (k_t × d_out)
    e_t = x_t · pinv(X_t) · Y_t = α_tᵀ Y_t,    α_t = (X_t X_tᵀ + λI)⁻¹ X_t x_t   (λ = ridge; λ → 0⁺ = min-norm)

Only a k × k system per token: G = X_t X_tᵀ, r = X_t x_t. For ridge = 0 the kernel solves
(G + μI) with μ = ε·trace(G)/k_t and refines towards G α = r by iterated Tikhonov
(δ₀ = A⁻¹r, δ_{j+1} = (μ − ridge)·A⁻¹δ_j, α = Σδ_j): exact null directions (k > d_in) get
nothing (the minimum-norm answer), the others lose the bias as (μ/(σ+μ))^(REFINE+1); never NaN
or inf (pivots are guarded at μ/2). Duplicated neighbour indices are merged exactly before the
solve (c copies of a row = one row √c·x, weight split evenly: the minimum-norm split). ε and REFINE come from
:func:`cltx.kernels.reference_salt.regularisation` (shared with the reference).

Why fuse (the arithmetic, at the paper shape n = 30,000, m = 20,000, d 768 → 4096, fp32): plain
PyTorch gathers (n × k × d_in) and (n × k × d_out) tensors — 7.9 GB at k = 16, 31 GB at k = 64 of
extra traffic and 1.5–4.9 GiB of peak memory — then solves. Here each program gathers its k
neighbour rows straight from the basis into registers (G and r accumulate with ``tl.dot`` over d_in
tiles, full-fp32 products for fp32 inputs), inverts the k × k matrix in registers (Gauss–Jordan
sweeps, symmetric, pivot row picked out with a masked sum), and streams
d_out tiles of the neighbours' Y rows to write αᵀY. No (n × k × d) tensor exists; peak memory is the
inputs plus the output plus the (n, K) weights (7.7 MB at the paper shape at k = 64).

Variants (``CLTX_SALT_VARIANT``, see :func:`_config`). Default v3 (below): measured fastest on an
H200 (2026-11-27, paper shape, fp32: 3.40 / 18.8 ms at k = 16 / 64 = 0.225× / 0.219× plain PyTorch
in the same run; v1 6.65 / 41.7). Earlier (2026-11-26): v1 5.84 / 41.1 ms, v2 7.16 / 43.1, v2-3xtf32
8.21 / 41.9; plain PyTorch 13.1 / 80.9. In v2, two kernels: the solve kernel
writes each token's weights, and ``_salt_apply_kernel`` forms αᵀY with a grid whose token axis runs
fastest, so all programs in flight share one d_out tile: that column slice of Y stays in L2 and the
per-neighbour gathers (7.9 GB at k = 16, 31 GB at k = 64) hit L2 while Y crosses HBM about once
(the way below the HBM gather cost, 2.2 ms at k = 16 on an H200). The K Gauss–Jordan sweeps are a
runtime loop (unrolled they were ~9.7k SASS instructions at K = 64, past the instruction cache).
Programs are ordered by their first (most similar) neighbour, so tokens that share neighbours run
together; duplicated indices are read once. Variant v1 (the first H200 run's kernel: αᵀY fused
into the solve kernel at K = 16, unrolled sweeps) and v2-3xtf32 (the fp32 Gram on tensor cores as
three TF32 products, fp32-accurate) stay selectable for comparison.

Variant v3 (``_salt_fit_batched_fwd_kernel``, the default; configurations in :func:`_config_v3`): the
same math on TOKENS tokens a program (the leading axis of every tensor) and few warps, so each
sweep's reductions are warp shuffles without barriers, and each sweep is one rank-1 update instead
of a rank-1 update plus three masked rewrites: with the matrix scaled by a power of two τ (pivots
< 2, exact), pivot j maps A to A − u uᵀ with u = column j / √p except u_j = (p − 1)/√p; that yields
the swept rows/columns c/p at once, and the pivot entry's constant offset (2 + piv − p, never read
by a later sweep) is taken off after the last sweep. Per sweep (sm_90, triton 3.9) that is 114
instructions a warp for two tokens, no barrier, at K = 16 (v2: 263 and 20 barriers on 4 warps) and
480 on each of 2 warps at K = 64 (v2: 193 on each of 8). αᵀY is the apply kernel above at every K
(fused into the solve at K = 16 it measured 3.78 ms against 1.70 + 1.25 split). Static numbers:
``python bench/kernel_report.py``; phase times on a GPU:
``python bench/salt_phases.py``.

Paths (``cltx.kernels._dispatch.choose``): CUDA → this kernel; CPU with ``TRITON_INTERPRET=1`` →
this kernel in the interpreter; otherwise → :func:`cltx.kernels.reference_salt.salt_fit_reference`.
Two explicit exceptions run the reference on the same device, and say so in the log: k >
``_TRITON_MAX_K`` (a k × k matrix that no longer fits registers) and k > d_in (sets rank-deficient
by shape: tiny d_in, where the reference's float64 Gram is cheap and exact, while an fp32 Gram's
rounding lands on the true null directions and limits the kernel to ~1e-3 there).
"""

from __future__ import annotations

import logging
import sys
import types

import torch

from cltx.errors import bad_arg
from cltx.kernels._dispatch import choose, interpreting
from cltx.kernels.reference_salt import (
    apply_alpha,
    check_salt_inputs,
    regularisation,
    salt_alpha_reference,
)

try:  # triton is optional on CPU-only installs (the reference path needs only torch)
    import triton
    import triton.language as tl
except Exception:  # pragma: no cover - exercised only without triton
    triton = None
    tl = None

__all__ = ["salt_fit"]

logger = logging.getLogger("cltx.kernels")

# Largest neighbour count the register-resident k × k solve takes (K × K fp32 in registers).
_TRITON_MAX_K = 64
_logged_exceptions: set[tuple[str, int, int]] = set()


# ---------------------------------------------------------------------------------------------
# 2. Configuration: every block size is picked here, never at the launch site.
# ---------------------------------------------------------------------------------------------
VARIANTS = ("v1", "v2", "v2-3xtf32", "v3", "v3-ieee", "v3-3xtf32")
V3 = ("v3", "v3-ieee", "v3-3xtf32")  # the batched kernel's variants


def _variant() -> str:
    """The kernel variant, from ``CLTX_SALT_VARIANT`` (default ``v3``, measured fastest); see :func:`_config`."""
    import os

    v = os.environ.get("CLTX_SALT_VARIANT", "v3").strip() or "v3"  # one of VARIANTS
    if v not in VARIANTS:
        raise bad_arg("CLTX_SALT_VARIANT", v, f"use one of {', '.join(VARIANTS)} (or leave it unset)")
    return v


def _config(k: int, d_in: int, d_out: int, *, interpret: bool, variant: str = "v2") -> dict:
    """Block sizes and launch options for one call.

    K: neighbour slots padded to a power of two ≥ 16 (``tl.dot`` needs every dim ≥ 16).
    BLOCK_D: d_in tile of the Gram phase; BLOCK_N: d_out tile of the fused αᵀY phase (v1, K = 16).

    Variants (``CLTX_SALT_VARIANT``):
      v1: the kernel of the first H200 run — αᵀY fused at
        K = 16, unrolled sweeps, one token a program in the apply kernel at K ≥ 32.
      v2: the solve always hands its (n, K) weights to ``_salt_apply_kernel`` (SPLIT),
        whose d_out-tile-major grid keeps the Y column slice it works on in L2 (Y then comes from
        HBM about once instead of once per neighbour), TOKENS tokens a program; the K Gauss–Jordan
        sweeps are a runtime loop (one body: ~2.5k SASS instructions at K = 64 instead of ~9.7k
        straight-line ones, which overflowed the instruction cache on every program).
      v2-3xtf32: v2 with the fp32 Gram on tensor cores split in three TF32 products (hi·hi + hi·lo +
        lo·hi: fp32-accurate); bf16 inputs are unaffected.
      v3 (the default, measured fastest on an H200), v3-ieee, v3-3xtf32: ``_salt_fit_batched_fwd_kernel``,
        TOKENS tokens a program on 1-4 warps (see :func:`_config_v3`).
    """
    K = max(16, triton.next_power_of_2(k))
    if variant in V3:
        return _config_v3(K, d_in, d_out, interpret=interpret, variant=variant)
    v1 = variant == "v1"
    # SPLIT: v1 only at K ≥ 32, where the fused kernel needs ~180-240 registers a thread.
    split = K >= 32 or not v1
    apply_block_n = 64 if (v1 or K > 16) else 128  # K × BLOCK_N fp32 tile over 4 warps: ≤ 32 a thread
    if interpret:
        # The interpreter has no autotuner or driver: one fixed, small config.
        return {
            "K": K,
            "BLOCK_D": 32,
            "BLOCK_N": 64,
            "num_warps": 4,
            "num_stages": 1,
            "SPLIT": split,
            "UNROLL": v1,
            "APPLY_BLOCK_N": 64,
            "APPLY_TOKENS": 1 if v1 else 2,
            "apply_warps": 4,
            "maxnreg": None,
        }
    block_d = 64 if K <= 32 else 32
    block_n = 256 if K <= 16 else 128  # K × BLOCK_N fp32 Y tile: 32 registers a thread
    num_warps = 4 if K <= 32 else 8
    maxnreg = None
    if K > 32 and variant == "v2":
        # 8 warps capped at 128 registers (BLOCK_D 16: a 32-byte spill outside the sweep loop)
        # give two programs per SM, whose latency chains (the sweeps are shuffle/barrier bound)
        # overlap; uncapped it needs ~190 and one program per SM sits in each sweep's latency.
        block_d, maxnreg = 16, 128
    elif K > 32 and variant == "v2-3xtf32":
        # The mma Gram needs ~200 registers at 8 warps; 16 warps with BLOCK_D 16 fit 128 (an 8-byte
        # spill): one program per SM.
        block_d, num_warps = 16, 16
    return {
        "K": K,
        "BLOCK_D": min(block_d, max(16, triton.next_power_of_2(d_in))),
        "BLOCK_N": min(block_n, max(16, triton.next_power_of_2(d_out))),
        "num_warps": num_warps,
        "num_stages": 2,
        "SPLIT": split,
        "UNROLL": v1,
        "APPLY_BLOCK_N": min(apply_block_n, max(16, triton.next_power_of_2(d_out))),
        "APPLY_TOKENS": 1 if v1 else 4,
        "apply_warps": 4,
        "maxnreg": maxnreg,
    }


def _config_v3(K: int, d_in: int, d_out: int, *, interpret: bool, variant: str = "v3") -> dict:
    """The batched kernel (``_salt_fit_batched_fwd_kernel``): TOKENS tokens a program on one to four
    warps, then ``_salt_apply_kernel`` for αᵀY (its d_out-tile-major grid keeps Y's column slice in L2).

    Measured on an H200 (2026-11-27, paper shape n 30,000, m 20,000, d_in 768, d_out 4,096, fp32;
    bench/salt_phases.py, whole calls from bench/bench_salt_fit.py; plain PyTorch 15.1 / 85.8 ms):
      K = 16: 4 tokens a program. Full-fp32 (``ieee``) Gram on 1 warp: solve 1.70 ms (2 tokens 2.25,
        αᵀY fused into the solve 3.78), whole call 4.13 ms = 0.273× plain. The Gram as three TF32
        tensor-core products (``tf32x3``: hi·hi + hi·lo + lo·hi, fp32-accurate: 5.3e-7 relative error
        against float64 vs 7.7e-7 for ``ieee``) on 4 warps, one token each: solve 1.03 ms, whole call
        3.40 ms = 0.225×. Apply: 256-column tiles, 2 tokens a program, 1.25 ms.
      K = 32: 1 token on 1 warp (static report only: 241 instructions a sweep, no barrier, 128 registers).
      K = 64: 1 token on 2 warps, ``ieee``: solve 13.0 ms, whole call 18.8 ms = 0.219× (``tf32x3``
        19.9 ms: no faster there); apply 64-column tiles, 4 tokens.
    Variants: ``v3`` (default) takes the faster Gram at each K — ``tf32x3`` at K ≤ 16 for fp32 inputs,
    ``ieee`` above and for bf16 inputs (on 1 warp at K = 16: ``ieee_warps``); ``v3-ieee`` full fp32
    products everywhere; ``v3-3xtf32`` the TF32 split everywhere.
    """
    small = K <= 16
    precision = {"v3-ieee": "ieee", "v3-3xtf32": "tf32x3"}.get(variant, "tf32x3" if small else "ieee")
    cfg = {
        "K": K,
        "TOKENS": 4 if small else 1,
        "PRECISION": precision,
        "BLOCK_D": min(16, max(16, triton.next_power_of_2(d_in))),
        "BLOCK_N": min(64, max(16, triton.next_power_of_2(d_out))),
        "num_warps": (4 if precision == "tf32x3" else 1) if small else (1 if K <= 32 else 2),
        # the warps when the Gram falls back to ieee (bf16 inputs): the measured ieee config
        "ieee_warps": 1 if small else None,
        "num_stages": 1,
        "SPLIT": True,
        "UNROLL": False,
        "APPLY_BLOCK_N": min(256 if small else 64, max(16, triton.next_power_of_2(d_out))),
        "APPLY_TOKENS": 2 if small else 4,
        "apply_warps": 4,
        "maxnreg": None,
    }
    if interpret:
        # The interpreter has no autotuner or driver: small tiles; TOKENS = 2 still exercises the
        # token axis and the masked tail program (the fused αᵀY form runs through cfg overrides).
        cfg.update({"BLOCK_D": 32, "BLOCK_N": 32, "APPLY_BLOCK_N": 64, "APPLY_TOKENS": 2, "TOKENS": 2})
    return cfg


# ---------------------------------------------------------------------------------------------
# 3. The kernel.
# ---------------------------------------------------------------------------------------------
if triton is not None:

    @triton.jit
    def _gauss_jordan_step(A, j, ii, jj, offs_k, mu):
        # One symmetric Gauss–Jordan sweep on pivot j; after all K sweeps A holds -(G + μI)⁻¹.
        row = tl.sum(tl.where(ii == j, A, 0.0), axis=0)  # row j (= column j: A stays symmetric)
        piv = tl.sum(tl.where(offs_k == j, row, 0.0), axis=0)
        inv_p = 1.0 / tl.maximum(piv, 0.5 * mu)  # pivots of G + μI are ≥ μ; guard rounding
        rj = tl.where(offs_k == j, 0.0, row)
        rj_col = rj[:, None]
        rj_row = rj[None, :]
        A = A - rj_col * rj_row * inv_p
        A = tl.where(ii == j, rj_row * inv_p, A)
        A = tl.where(jj == j, rj_col * inv_p, A)
        A = tl.where((ii == j) & (jj == j), -inv_p, A)
        return A

    @triton.jit
    def _unconverged(step, prev, alpha, AXIS: tl.constexpr):
        # The refinement steps are a power iteration of μA⁻¹: ρ = |δ_p|/|δ_{p−1}| estimates μ/(σ+μ)
        # of the slowest direction and |δ_p|·ρ/(1−ρ) the bias still left; a token above 1e-5·|α|
        # has not converged (norms over AXIS, the neighbour axis; one flag per token).
        s_norm = tl.sqrt(tl.sum(step * step, axis=AXIS))
        p_norm = tl.sqrt(tl.sum(prev * prev, axis=AXIS))
        a_norm = tl.sqrt(tl.sum(alpha * alpha, axis=AXIS))
        rho = s_norm / tl.maximum(p_norm, 1e-30)
        tail = s_norm * rho / tl.maximum(1.0 - rho, 1e-30)
        # Non-finite weights (NaN fails every comparison above) are flagged too: an fp32 Gram that overflows or
        # underflows (inputs scaled ~1e±19) gives them, and the float64 re-solve gets those tokens right.
        not_finite = (a_norm != a_norm) | (a_norm > 3.0e38)
        return (rho >= 1.0) | (tail > 1e-5 * a_norm + 1e-30) | not_finite

    @triton.jit
    def _salt_fit_fwd_kernel(
        xq_ptr,
        xb_ptr,
        yb_ptr,
        nbr_ptr,
        order_ptr,
        out_ptr,
        alpha_ptr,
        flag_ptr,
        coef_ptr,
        k,
        d_in,
        d_out,
        stride_q,
        stride_b,
        stride_y,
        stride_nbr,
        stride_out,
        stride_alpha,
        ridge,
        eps_full,
        eps_deficient,
        K: tl.constexpr,
        BLOCK_D: tl.constexpr,
        BLOCK_N: tl.constexpr,
        REFINE: tl.constexpr,
        UPCAST: tl.constexpr,
        WRITE_ALPHA: tl.constexpr,
        SPLIT: tl.constexpr,
        PRECISION: tl.constexpr,
        UNROLL: tl.constexpr,
    ):
        # Programs run in an order where tokens sharing neighbours are adjacent (L2 reuse of Y rows).
        t = tl.load(order_ptr + tl.program_id(0)).to(tl.int64)
        offs_k = tl.arange(0, K)

        # 1. This token's neighbour rows; -1 (and the padding up to K) are masked everywhere.
        idx = tl.load(nbr_ptr + t * stride_nbr + offs_k, mask=offs_k < k, other=-1)
        valid = idx >= 0
        rows = tl.where(valid, idx, 0).to(tl.int64)

        # 2. G = X Xᵀ (K × K) and r = X x_t (K) over d_in tiles; fp32 accumulation.
        offs_d = tl.arange(0, BLOCK_D)
        G = tl.zeros((K, K), dtype=tl.float32)
        r = tl.zeros((K,), dtype=tl.float32)
        for d0 in range(0, d_in, BLOCK_D):
            dmask = (d0 + offs_d) < d_in
            X = tl.load(
                xb_ptr + rows[:, None] * stride_b + (d0 + offs_d)[None, :],
                mask=valid[:, None] & dmask[None, :],
                other=0.0,
            )
            if UPCAST:
                X = X.to(tl.float32)
            xq = tl.load(xq_ptr + t * stride_q + d0 + offs_d, mask=dmask, other=0.0).to(tl.float32)
            G = tl.dot(X, tl.trans(X), acc=G, input_precision=PRECISION)
            r += tl.sum(X.to(tl.float32) * xq[None, :], axis=1)

        # 3. Merge duplicated neighbours exactly: c copies of row v act as one row √c·v, and the
        #    minimum-norm answer splits its weight evenly over the copies (fp32 elimination could not
        #    tell an exact duplicate from rounding; this makes duplicates exact and never re-reads Y).
        ii = offs_k[:, None]
        jj = offs_k[None, :]
        diag = ii == jj
        same = (idx[:, None] == idx[None, :]) & valid[:, None] & valid[None, :]
        copies = tl.sum(same.to(tl.float32), axis=1)
        first = valid & (tl.sum((same & (jj < ii)).to(tl.int32), axis=1) == 0)
        w = tl.where(first, tl.sqrt(copies), 0.0)
        G = G * w[:, None] * w[None, :]
        r = r * w

        # 4. Solve (G + μI) β = r in registers: symmetric Gauss–Jordan sweeps leave -(G + μI)⁻¹ in A.
        trace = tl.sum(tl.sum(tl.where(diag, G, 0.0), axis=1), axis=0)
        k_valid = tl.sum(first.to(tl.float32), axis=0)
        eps = tl.where(k_valid > d_in, eps_deficient, eps_full)
        mu = tl.maximum(eps * trace / tl.maximum(k_valid, 1.0), ridge)
        mu = tl.where(mu > 0.0, mu, 1.0)  # no neighbour (G = 0, r = 0): any μ gives α = 0
        A = G + tl.where(diag, mu, 0.0)
        if UNROLL:  # the run-1 kernel (variant v1): ~9.7k straight-line instructions at K = 64
            for j in tl.static_range(K):
                A = _gauss_jordan_step(A, j, ii, jj, offs_k, mu)
        else:  # one loop body, reused K times: stays in the instruction cache
            for j in range(K):
                A = _gauss_jordan_step(A, j, ii, jj, offs_k, mu)
        alpha = -tl.sum(A * r[None, :], axis=1)
        shift = mu - ridge
        step = alpha
        prev = alpha
        for _ in tl.static_range(REFINE):
            prev = step
            step = -shift * tl.sum(A * step[None, :], axis=1)
            alpha += step
        # Converged? A token whose fp32 solve has not (an ill-conditioned set) is flagged and
        # re-solved by the reference in float64 (see salt_fit).
        unconverged = _unconverged(step, prev, alpha, AXIS=0)
        tl.store(flag_ptr + t, unconverged.to(tl.int8))
        beta = tl.where(first, alpha, 0.0)
        coef = beta * w  # the weight of each distinct neighbour row
        if WRITE_ALPHA:
            # Per slot: every copy of a row carries coef / copies (the minimum-norm split).
            per_copy = tl.where(first, beta / tl.where(first, w, 1.0), 0.0)
            slot_alpha = tl.sum(tl.where(same & first[None, :], per_copy[None, :], 0.0), axis=1)
            tl.store(alpha_ptr + t * stride_alpha + offs_k, slot_alpha, mask=offs_k < k)

        if SPLIT:
            # Large K: hand the (n, K) weights to _salt_apply_kernel, whose small register
            # footprint keeps many programs per SM streaming Y (this one holds a K × K matrix).
            tl.store(coef_ptr + t * K + offs_k, coef)
        else:
            # 5. Stream d_out tiles of the distinct neighbours' Y rows: e_t = Σ coef_i · y_i.
            offs_n = tl.arange(0, BLOCK_N)
            for n0 in range(0, d_out, BLOCK_N):
                nmask = (n0 + offs_n) < d_out
                Y = tl.load(
                    yb_ptr + rows[:, None] * stride_y + (n0 + offs_n)[None, :],
                    mask=first[:, None] & nmask[None, :],
                    other=0.0,
                ).to(tl.float32)
                e = tl.sum(coef[:, None] * Y, axis=0)
                tl.store(out_ptr + t * stride_out + n0 + offs_n, e.to(out_ptr.dtype.element_ty), mask=nmask)

    @triton.jit
    def _salt_apply_kernel(
        coef_ptr,
        nbr_ptr,
        order_ptr,
        yb_ptr,
        out_ptr,
        n,
        k,
        d_out,
        stride_nbr,
        stride_y,
        stride_out,
        K: tl.constexpr,
        BLOCK_N: tl.constexpr,
        TOKENS: tl.constexpr,
    ):
        # One program per (TOKENS tokens, d_out tile): e_t[tile] = Σ_i coef_ti · Y[nbr_ti, tile].
        # The grid's first axis (tokens) runs fastest, so all programs in flight work on the same
        # d_out tile: that column slice of Y (m × BLOCK_N, 5-10 MB at the paper shape) stays in L2
        # and every gather after the first hits L2 instead of HBM. The TOKENS loads are independent
        # (unrolled), so each program keeps TOKENS tiles in flight.
        offs_k = tl.arange(0, K)
        offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
        nmask = offs_n < d_out
        for i in tl.static_range(TOKENS):
            slot = tl.program_id(0) * TOKENS + i
            # The last program may run past n: it redoes token n-1 and stores nothing.
            live = (tl.zeros_like(offs_n) + slot) < n
            t = tl.load(order_ptr + tl.minimum(slot, n - 1)).to(tl.int64)
            idx = tl.load(nbr_ptr + t * stride_nbr + offs_k, mask=offs_k < k, other=-1)
            coef = tl.load(coef_ptr + t * K + offs_k)
            use = (idx >= 0) & (coef != 0.0)  # repeats of a row carry coef 0: never re-read
            rows = tl.where(use, idx, 0).to(tl.int64)
            Y = tl.load(
                yb_ptr + rows[:, None] * stride_y + offs_n[None, :], mask=use[:, None] & nmask[None, :], other=0.0
            ).to(tl.float32)
            e = tl.sum(coef[:, None] * Y, axis=0)
            tl.store(out_ptr + t * stride_out + offs_n, e.to(out_ptr.dtype.element_ty), mask=nmask & live)

    @triton.jit
    def _salt_fit_batched_fwd_kernel(
        xq_ptr,
        xb_ptr,
        yb_ptr,
        nbr_ptr,
        order_ptr,
        out_ptr,
        alpha_ptr,
        flag_ptr,
        coef_ptr,
        n,
        k,
        d_in,
        d_out,
        stride_q,
        stride_b,
        stride_y,
        stride_nbr,
        stride_out,
        stride_alpha,
        ridge,
        eps_full,
        eps_deficient,
        K: tl.constexpr,
        TOKENS: tl.constexpr,
        BLOCK_D: tl.constexpr,
        BLOCK_N: tl.constexpr,
        REFINE: tl.constexpr,
        UPCAST: tl.constexpr,
        WRITE_ALPHA: tl.constexpr,
        SPLIT: tl.constexpr,
        PRECISION: tl.constexpr,
    ):
        # Variant v3: the math of _salt_fit_fwd_kernel for TOKENS tokens at once (the leading axis of
        # every tensor), meant for 1-2 warps: each sweep's reductions serve TOKENS tokens, and on one
        # warp they are shuffles, without barriers. The sweep itself is a single rank-1 update.
        slot = tl.program_id(0) * TOKENS + tl.arange(0, TOKENS)
        live = slot < n  # the last program's extra slots redo token n-1 and store nothing
        t = tl.load(order_ptr + tl.minimum(slot, n - 1)).to(tl.int64)
        offs_k = tl.arange(0, K)
        kk = offs_k[None, :]

        # 1. The neighbour rows of each token; -1 (and the padding up to K) are masked everywhere.
        idx = tl.load(nbr_ptr + t[:, None] * stride_nbr + kk, mask=(kk < k) & live[:, None], other=-1)
        valid = idx >= 0
        rows = tl.where(valid, idx, 0).to(tl.int64)

        # 2. G = X Xᵀ (TOKENS × K × K, a batched tl.dot in full fp32) and r = X x_t over d_in tiles.
        offs_d = tl.arange(0, BLOCK_D)
        G = tl.zeros((TOKENS, K, K), dtype=tl.float32)
        r = tl.zeros((TOKENS, K), dtype=tl.float32)
        for d0 in range(0, d_in, BLOCK_D):
            dd = d0 + offs_d
            X = tl.load(
                xb_ptr + rows[:, :, None] * stride_b + dd[None, None, :],
                mask=valid[:, :, None] & (dd < d_in)[None, None, :],
                other=0.0,
            )
            if UPCAST:
                X = X.to(tl.float32)
            xq = tl.load(xq_ptr + t[:, None] * stride_q + dd[None, :], mask=(dd < d_in)[None, :], other=0.0)
            G = tl.dot(X, tl.permute(X, (0, 2, 1)), acc=G, input_precision=PRECISION)
            r += tl.sum(X.to(tl.float32) * xq.to(tl.float32)[:, None, :], axis=2)

        # 3. Merge duplicated neighbours exactly (as in _salt_fit_fwd_kernel): c copies of a row act
        #    as one row √c·v; the minimum-norm answer splits its weight evenly over the copies.
        ii = offs_k[None, :, None]
        jj = offs_k[None, None, :]
        diag = ii == jj
        same = (idx[:, :, None] == idx[:, None, :]) & valid[:, :, None] & valid[:, None, :]
        copies = tl.sum(same.to(tl.float32), axis=2)
        first = valid & (tl.sum((same & (jj < ii)).to(tl.int32), axis=2) == 0)
        w = tl.where(first, tl.sqrt(copies), 0.0)
        G = G * (w[:, :, None] * w[:, None, :])  # w_i·w_l rounds alike at (i, l) and (l, i)
        r = r * w

        # 4. (G + μI) β = r with μ = max(ε·trace/k_t, ridge), as in _salt_fit_fwd_kernel.
        gdiag = tl.sum(tl.where(diag, G, 0.0), axis=2)
        trace = tl.sum(gdiag, axis=1)
        k_valid = tl.sum(first.to(tl.float32), axis=1)
        eps = tl.where(k_valid > d_in, eps_deficient, eps_full)
        mu = tl.maximum(eps * trace / tl.maximum(k_valid, 1.0), ridge)
        mu = tl.where(mu > 0.0, mu, 1.0)
        # Scale by τ, a power of two within 2× of the largest diagonal entry (exact): every pivot
        # is then < 2, which the rank-1 form of the sweep below needs to stay accurate.
        dmax = tl.max(gdiag, axis=1) + mu
        tau = (dmax.to(tl.int32, bitcast=True) & 0x7F800000).to(tl.float32, bitcast=True)
        tau = tl.where(tau > 0.0, tau, 1.0)
        inv_tau = 1.0 / tau
        A = (G + tl.where(diag, mu[:, None, None], 0.0)) * inv_tau[:, None, None]
        half_mu = 0.5 * mu * inv_tau
        # Symmetric Gauss–Jordan (the sweep of _gauss_jordan_step) on pivot j as one rank-1 update:
        # with column c of pivot p (the entry, guarded at μ/2 as there) and u = c/√p except
        # u_j = (p − 1)/√p, A − u uᵀ gives the off-pivot entries A − c cᵀ/p and row/column j (c/p)
        # at once; the pivot entry becomes 2 − 1/p + (piv − p) instead of −1/p, and as no later
        # sweep reads it back, that offset (corr) is taken off once, after all sweeps. The rank-1
        # term rounds alike at (i, l) and (l, i), so A stays symmetric and column j is row j.
        corr = tl.zeros((TOKENS, K), dtype=tl.float32)
        for j in range(K):
            onehot = (offs_k == j).to(tl.float32)
            col = tl.sum(A * onehot[None, None, :], axis=2)  # A[:, :, j] = A[:, j, :] (symmetric)
            piv = tl.sum(col * onehot[None, :], axis=1)
            p = tl.maximum(piv, half_mu)
            u = tl.where(kk == j, (p - 1.0)[:, None], col) / tl.sqrt(p)[:, None]
            A = A - u[:, :, None] * u[:, None, :]  # the same rounding at (i, l) and (l, i)
            corr = tl.where(kk == j, (2.0 + piv - p)[:, None], corr)
        # Now A − diag(corr) = −τ (G + μI)⁻¹, so (G + μI)⁻¹ x = −(A x − corr ⊙ x)/τ.
        neg_scale = -inv_tau[:, None]
        alpha = (tl.sum(A * r[:, None, :], axis=2) - corr * r) * neg_scale
        shift = (mu - ridge)[:, None]
        step = alpha
        prev = alpha
        for _ in tl.static_range(REFINE):
            prev = step
            step = shift * (tl.sum(A * step[:, None, :], axis=2) - corr * step) * neg_scale
            alpha += step
        # Converged? (flagged tokens are re-solved in float64)
        unconverged = _unconverged(step, prev, alpha, AXIS=1)
        tl.store(flag_ptr + t, unconverged.to(tl.int8), mask=live)
        beta = tl.where(first, alpha, 0.0)
        coef = beta * w
        if WRITE_ALPHA:
            per_copy = tl.where(first, beta / tl.where(first, w, 1.0), 0.0)
            slot_alpha = tl.sum(tl.where(same & first[:, None, :], per_copy[:, None, :], 0.0), axis=2)
            tl.store(alpha_ptr + t[:, None] * stride_alpha + kk, slot_alpha, mask=(kk < k) & live[:, None])

        if SPLIT:
            tl.store(coef_ptr + t[:, None] * K + kk, coef, mask=live[:, None])
        else:
            # 5. αᵀY fused: stream d_out tiles of the distinct neighbours' Y rows.
            offs_n = tl.arange(0, BLOCK_N)
            for n0 in range(0, d_out, BLOCK_N):
                nn = n0 + offs_n
                nmask = nn < d_out
                Y = tl.load(
                    yb_ptr + rows[:, :, None] * stride_y + nn[None, None, :],
                    mask=first[:, :, None] & nmask[None, None, :],
                    other=0.0,
                ).to(tl.float32)
                e = tl.sum(coef[:, :, None] * Y, axis=1)
                tl.store(
                    out_ptr + t[:, None] * stride_out + nn[None, :],
                    e.to(out_ptr.dtype.element_ty),
                    mask=live[:, None] & nmask[None, :],
                )


# ---------------------------------------------------------------------------------------------
# 4. Launcher.
# ---------------------------------------------------------------------------------------------
def _launch_meta(
    cfg: dict, variant: str, *, refine: int, upcast: bool, write_alpha: bool, fp32_inputs: bool, interpret: bool
):
    """The solve kernel of ``variant``, its constexpr arguments and launch options, and those of
    ``_salt_apply_kernel`` (None when αᵀY is fused). One place for both the launcher and the static
    report (bench/kernel_report.py), so the report compiles exactly what runs."""
    fwd = {
        "K": cfg["K"],
        "BLOCK_D": cfg["BLOCK_D"],
        "BLOCK_N": cfg["BLOCK_N"],
        "REFINE": refine,
        "UPCAST": upcast,
        "WRITE_ALPHA": write_alpha,
        "SPLIT": cfg["SPLIT"],
        # Full fp32 products for fp32 inputs (never plain TF32); 3xTF32 is fp32-accurate.
        "PRECISION": "tf32x3" if (variant == "v2-3xtf32" and not interpret and fp32_inputs) else "ieee",
        "UNROLL": cfg["UNROLL"],
        "num_warps": cfg["num_warps"],
        "num_stages": cfg["num_stages"],
        **({"maxnreg": cfg["maxnreg"]} if cfg["maxnreg"] else {}),
    }
    kernel = _salt_fit_fwd_kernel
    if variant in V3:
        kernel = _salt_fit_batched_fwd_kernel
        del fwd["UNROLL"]
        fwd["TOKENS"] = cfg["TOKENS"]
        fwd["PRECISION"] = cfg["PRECISION"] if (fp32_inputs and not interpret) else "ieee"
        if fwd["PRECISION"] == "ieee" and cfg["PRECISION"] != "ieee" and cfg.get("ieee_warps"):
            fwd["num_warps"] = cfg["ieee_warps"]
    apply = None
    if cfg["SPLIT"]:
        apply = {
            "K": cfg["K"],
            "BLOCK_N": cfg["APPLY_BLOCK_N"],
            "TOKENS": cfg["APPLY_TOKENS"],
            "num_warps": cfg["apply_warps"],
        }
    return kernel, fwd, apply


class _SaltLaunch:
    """One call's buffers and launch parameters; ``solve()`` and ``apply()`` launch the two phases.

    ``_salt_fit_triton`` runs both; bench/salt_phases.py times them one at a time (``cfg`` overrides
    :func:`_config`, e.g. to force SPLIT or sweep block sizes).
    """

    def __init__(self, x_query, x_basis, y_basis, neighbors, ridge, return_alpha, *, variant=None, cfg=None):
        n, d_in = x_query.shape
        k = neighbors.shape[1]
        d_out = y_basis.shape[1]
        interpret = interpreting()
        self.n, self.k, self.d_in, self.d_out, self.ridge = n, k, d_in, d_out, float(ridge)
        self.xq = x_query.contiguous()
        self.xb = x_basis.contiguous()
        self.yb = y_basis.contiguous()
        self.nbr = neighbors.contiguous()
        dev = y_basis.device
        self.out = torch.empty(n, d_out, dtype=y_basis.dtype, device=dev)
        self.return_alpha = return_alpha
        self.alpha = torch.zeros(n, k, dtype=torch.float32, device=dev) if return_alpha else self.out
        self.flags = torch.zeros(n, dtype=torch.int8, device=dev)
        self.variant = variant or _variant()
        self.cfg = cfg or _config(k, d_in, d_out, interpret=interpret, variant=self.variant)
        self.coef = torch.empty(n if self.cfg["SPLIT"] else 1, self.cfg["K"], dtype=torch.float32, device=dev)
        self.eps_full, self.eps_deficient, refine = regularisation(k, d_in, gram_fp64=False)
        self.kernel, self.fwd_meta, self.apply_meta = _launch_meta(
            self.cfg,
            self.variant,
            refine=refine,
            # The interpreter's bf16 arithmetic is wrong: upcast after loads there only.
            upcast=interpret and x_basis.dtype != torch.float32,
            write_alpha=return_alpha,
            fp32_inputs=self.xb.dtype == torch.float32,
            interpret=interpret,
        )
        # Tokens sharing their most similar neighbour run side by side (their Y rows stay in L2).
        if n > 1:
            self.order = torch.argsort(self.nbr[:, 0]).to(torch.int32)
        else:
            self.order = torch.zeros(1, dtype=torch.int32, device=dev)

    def solve(self) -> None:
        """Gram, solve, flags (and αᵀY when fused); with SPLIT the (n, K) weights go to ``coef``."""
        if self.n == 0:
            return
        tokens = self.fwd_meta.get("TOKENS")  # v3: TOKENS tokens a program, and n passed
        self.kernel[(triton.cdiv(self.n, tokens or 1),)](
            self.xq,
            self.xb,
            self.yb,
            self.nbr,
            self.order,
            self.out,
            self.alpha,
            self.flags,
            self.coef,
            *((self.n,) if tokens else ()),
            self.k,
            self.d_in,
            self.d_out,
            self.xq.stride(0),
            self.xb.stride(0),
            self.yb.stride(0),
            self.nbr.stride(0),
            self.out.stride(0),
            self.alpha.stride(0),
            self.ridge,
            float(self.eps_full),
            float(self.eps_deficient),
            **self.fwd_meta,
        )

    def apply(self) -> None:
        """αᵀY from ``coef`` (SPLIT configs only)."""
        meta = self.apply_meta
        if meta is None or self.n == 0 or self.d_out == 0:
            return
        grid = (triton.cdiv(self.n, meta["TOKENS"]), triton.cdiv(self.d_out, meta["BLOCK_N"]))
        _salt_apply_kernel[grid](
            self.coef,
            self.nbr,
            self.order,
            self.yb,
            self.out,
            self.n,
            self.k,
            self.d_out,
            self.nbr.stride(0),
            self.yb.stride(0),
            self.out.stride(0),
            **meta,
        )


def _salt_fit_triton(
    x_query: torch.Tensor,
    x_basis: torch.Tensor,
    y_basis: torch.Tensor,
    neighbors: torch.Tensor,
    ridge: float,
    return_alpha: bool,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """Launch the kernel(s); returns ``(out, alpha or None, flags)``, flags (n,) int8 = 1 where the
    fp32 solve had not converged (the caller re-solves those tokens)."""
    launch = _SaltLaunch(x_query, x_basis, y_basis, neighbors, ridge, return_alpha)
    launch.solve()
    launch.apply()
    return launch.out, (launch.alpha if return_alpha else None), launch.flags


# ---------------------------------------------------------------------------------------------
# 5. Public function (forward only: SALT initialises embeddings, nothing back-propagates through it).
# ---------------------------------------------------------------------------------------------
@torch.no_grad()
def salt_fit(
    x_query: torch.Tensor,
    x_basis: torch.Tensor,
    y_basis: torch.Tensor,
    neighbors: torch.Tensor,
    *,
    ridge: float = 0.0,
    chunk_size: int | None = None,
    return_alpha: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Fit every new token's embedding from its neighbours by least squares (SALT).

    Row t is ``x_t · pinv(X_t) · Y_t`` (ridge = 0, the minimum-norm answer on rank-deficient sets)
    or ``α_tᵀ Y_t`` with ``α_t = (X_t X_tᵀ + ridge·I)⁻¹ X_t x_t`` (ridge > 0), X_t / Y_t the rows of
    ``x_basis`` / ``y_basis`` listed in ``neighbors[t]``.

    Args:
        x_query: (n, d_in) float32/bfloat16 — PLM embeddings of the new tokens.
        x_basis: (m, d_in) float32/bfloat16 — PLM embeddings of the overlapping tokens.
        y_basis: (m, d_out) float32/bfloat16 — their LLM embeddings (input and untied output
            embeddings may be concatenated along d_out: one solve serves both).
        neighbors: (n, k) int64 row indices into the basis; -1 = unused slot, in any position.
            A row with no neighbour gives a zero row.
        ridge: absolute ridge λ ≥ 0 (0 = minimum-norm least squares).
        chunk_size: tokens per chunk on the reference path (None: automatic).
        return_alpha: also return the (n, k) float32 coefficients α (0 in unused slots).

    Returns:
        (n, d_out) in ``y_basis``'s dtype (fp32 accumulation), or ``(out, alpha)``.
    """
    neighbors = check_salt_inputs(x_query, x_basis, y_basis, neighbors, ridge)
    if chunk_size is not None and (isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1):
        # checked here, not only on the reference path: the Triton path ignored a bad value silently
        raise bad_arg("chunk_size", chunk_size, "pass a positive number of tokens per chunk, or None")
    path = choose("salt_fit", x_query, x_basis, y_basis, neighbors)
    k, d_in = neighbors.shape[1], x_query.shape[1]
    if path == "triton" and (k > _TRITON_MAX_K or k > d_in):
        # Explicit, logged exceptions: a k × k matrix too large for registers, or sets that are
        # rank-deficient by shape (k > d_in: tiny d_in, where the float64 Gram of the reference is
        # cheap and exact, while an fp32 Gram's rounding lands on the true null directions).
        if ("salt_fit", k, d_in) not in _logged_exceptions:
            _logged_exceptions.add(("salt_fit", k, d_in))
            logger.info("salt_fit: k=%d (d_in=%d) runs the reference path on %s", k, d_in, x_query.device)
        path = "reference"
    if path == "triton":
        out, alpha, flags = _salt_fit_triton(x_query, x_basis, y_basis, neighbors, float(ridge), return_alpha)
        # Tokens the kernel flagged: unconverged, or with non-finite weights (an fp32 Gram that overflows or
        # underflows, inputs scaled ~1e±19); the reference re-solves those from a float64 Gram.
        redo = torch.nonzero(flags)[:, 0]
        if redo.numel():
            # Ill-conditioned neighbour sets: the reference re-solves them (fp32, then float64).
            logger.debug("salt_fit: %d of %d tokens re-solved by the reference", redo.numel(), flags.numel())
            a = salt_alpha_reference(x_query[redo], x_basis, neighbors[redo], ridge=ridge, chunk_size=chunk_size)
            out[redo] = apply_alpha(a, neighbors[redo], y_basis)
            if return_alpha:
                alpha[redo] = a
        return (out, alpha) if return_alpha else out
    if return_alpha:
        alpha = salt_alpha_reference(x_query, x_basis, neighbors, ridge=ridge, chunk_size=chunk_size)
        return apply_alpha(alpha, neighbors, y_basis), alpha
    # salt_fit_reference without its own input check (done above: a second pass over the inputs)
    alpha = salt_alpha_reference(x_query, x_basis, neighbors, ridge=ridge, chunk_size=chunk_size)
    return apply_alpha(alpha, neighbors, y_basis)


class _CallableModule(types.ModuleType):
    """``cltx.kernels.salt_fit`` names both this module and the function: once the module is imported,
    Python's import system binds the package attribute to the module, so ``from cltx.kernels import
    salt_fit`` could hand back the module. Making the module callable keeps both spellings working."""

    def __call__(self, *args, **kwargs):
        return salt_fit(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
