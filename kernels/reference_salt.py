"""Pure-PyTorch reference of the SALT per-token least-squares fit (the CPU path and the test oracle).

Math (DESIGN.md §2, issue 3). For every new token t with neighbour rows N(t) of the basis:

    X_t = x_basis[N(t)]   (k_t × d_in)      Y_t = y_basis[N(t)]   (k_t × d_out)
    e_t = x_t · pinv(X_t) · Y_t = α_tᵀ Y_t,   α_t = pinv(X_t X_tᵀ) X_t x_t          (ridge = 0)
    α_t = (X_t X_tᵀ + ridge·I)⁻¹ X_t x_t                                          (ridge > 0)

``α_t = pinv(X_tᵀ) x_t`` is the minimum-norm least-squares solution of ``X_tᵀ α ≈ x_t``, so only a
k × k system per token is ever solved (k ≤ 64 in practice, d_in = 768).

How ridge = 0 reaches the minimum-norm answer stably (shared with the Triton kernel):
solve with ``A = G + μ·I``, ``μ = max(ridge, ε·trace(G)/k_t)``, then refine towards the target
system ``(G + ridge·I) α = r`` by iterated Tikhonov: ``δ₀ = A⁻¹ r``, ``δ_{j+1} = (μ − ridge)·A⁻¹ δ_j``,
``α = Σ δ_j``. Along an eigen-direction of G with eigenvalue σ the bias after p refinements is
``(μ/(σ+μ))^(p+1)``, while exact null directions (duplicated neighbours, k > d_in) carry no part of
``r = X x`` and stay at zero: the minimum-norm answer, never NaN or inf. The one catch is rounding
in G itself: fp32 G has errors ~1e-7·‖G‖ along the null directions, which a tiny μ amplifies. So
this reference forms G, r and the solve in float64 when a set is rank-deficient by shape (k > d_in,
where d_in is small and float64 is cheap). Otherwise it works in fp32 and checks convergence: the
refinement steps are a power iteration of μA⁻¹, so their ratio ρ estimates the slowest
direction's μ/(σ+μ) and ‖δ_p‖·ρ/(1−ρ) the bias left; a token above 1e-6·‖α‖ (an ill-conditioned
set, e.g. k ≈ d_in) is solved again from float64 G and r of the same rows.

Speed (the CPU path must be fast, not a loop): tokens are processed in chunks; each chunk gathers
its neighbour rows once (k × d_in per token, a few MB), forms G and r with one batched matmul,
and solves with one batched Cholesky (fp32, with a float64 redo of any token whose refinement
has not converged: ill-conditioned sets). Then ``E = A @ y_basis`` with A the (n × m) sparse
matrix of the α's — one CSR × dense product: no (n × k × d_out) gathered tensor is ever built,
and neighbour rows shared by many tokens are served from cache (on CPU 5-20× faster than a
gather + bmm).
"""

from __future__ import annotations

import warnings

import torch

from cltx.errors import bad_arg
from cltx.kernels._dispatch import check_finite

__all__ = ["salt_fit_reference", "salt_alpha_reference", "regularisation", "check_salt_inputs"]

# Bytes of gathered neighbour rows a reference chunk may hold.
_CHUNK_BYTES = 32 * 2**20
# d_out columns per sparse-product block when Y must be upcast (bf16/fp16 → fp32).
_Y_COLUMN_BLOCK = 1024


def regularisation(k: int, d_in: int, *, gram_fp64: bool) -> tuple[float, float, int]:
    """The internal relative term ε and the number of refinement steps for ridge = 0.

    Args:
        k: neighbour slots per token.
        d_in: width of the similarity embeddings.
        gram_fp64: whether G is formed in float64 (reference, k > d_in) or fp32 (the kernel).

    Returns:
        ``(eps_full, eps_deficient, refine)``: μ = ε·trace(G)/k_t with ``eps_full`` for a token
        with at most d_in distinct neighbours and ``eps_deficient`` for more (rank-deficient by
        shape), then ``refine`` iterated-Tikhonov steps.
    """
    if gram_fp64:
        return 1e-9, 1e-9, 3
    # fp32 G: μ has to stay above the rounding in G (~1e-6·trace/k). On a set rank-deficient by
    # shape that rounding sits on true null directions, so μ is larger there (1e-2) and more
    # refinement steps remove the larger bias on the true directions.
    return 1e-4, 1e-2, (6 if k > d_in else 3)


def check_salt_inputs(
    x_query: torch.Tensor, x_basis: torch.Tensor, y_basis: torch.Tensor, neighbors: torch.Tensor, ridge: float
) -> torch.Tensor:
    """Validate shapes, dtypes, devices and the index range; return ``neighbors`` as int64."""
    floats = (torch.float32, torch.bfloat16, torch.float16)
    for name, t in (("x_query", x_query), ("x_basis", x_basis), ("y_basis", y_basis)):
        if not isinstance(t, torch.Tensor) or t.dim() != 2:
            raise bad_arg(name, getattr(t, "shape", t), "pass a 2-D tensor (rows × features)")
        if t.dtype not in floats:
            raise bad_arg(f"{name}.dtype", t.dtype, "pass float32 or bfloat16 (float16 also works)")
    if not isinstance(neighbors, torch.Tensor) or neighbors.dim() != 2:
        raise bad_arg("neighbors", getattr(neighbors, "shape", neighbors), "pass an (n, k) int64 tensor")
    if neighbors.dtype.is_floating_point or neighbors.dtype == torch.bool:
        raise bad_arg("neighbors.dtype", neighbors.dtype, "pass int64 row indices into the basis (-1 = unused)")
    n, d_in = x_query.shape
    m = x_basis.shape[0]
    if x_basis.shape[1] != d_in:
        raise bad_arg("x_basis.shape", tuple(x_basis.shape), f"x_basis must have d_in={d_in} columns like x_query")
    if y_basis.shape[0] != m:
        raise bad_arg("y_basis.shape", tuple(y_basis.shape), f"y_basis must have one row per basis row (m={m})")
    if neighbors.shape[0] != n:
        raise bad_arg("neighbors.shape", tuple(neighbors.shape), f"neighbors must have one row per query (n={n})")
    if neighbors.shape[1] < 1:
        raise bad_arg("neighbors.shape", tuple(neighbors.shape), "pass at least one neighbour slot (k >= 1)")
    devs = {t.device for t in (x_query, x_basis, y_basis, neighbors)}
    if len(devs) != 1:
        raise bad_arg("device", sorted(str(d) for d in devs), "put all four tensors on the same device")
    if not (isinstance(ridge, (int, float)) and ridge >= 0 and ridge == ridge and ridge != float("inf")):
        raise bad_arg("ridge", ridge, "pass a finite ridge >= 0 (0 = minimum-norm least squares)")
    for name, t in (("x_query", x_query), ("x_basis", x_basis), ("y_basis", y_basis)):
        # A NaN/inf row made the solve raise a LinAlgError from deep inside (reference) or write NaN (kernel).
        check_finite(name, t)
    neighbors = neighbors.long()
    if neighbors.numel():
        lo, hi = int(neighbors.min()), int(neighbors.max())
        if lo < -1 or hi >= m:
            raise bad_arg("neighbors", f"values in [{lo}, {hi}]", f"use row indices in [0, {m}), -1 = unused")
    return neighbors


def _chunk_rows(k: int, d_in: int, chunk_size: int | None) -> int:
    if chunk_size is not None:
        if chunk_size < 1:
            raise bad_arg("chunk_size", chunk_size, "pass a positive number of tokens per chunk, or None")
        return int(chunk_size)
    return max(16, _CHUNK_BYTES // (4 * k * max(d_in, k)))


def _solve(G: torch.Tensor, r: torch.Tensor, k_valid: torch.Tensor, ridge: float, eps: float, refine: int):
    """Batched (G + ridge·I) α = r (minimum-norm limit for ridge = 0) in G's dtype. G (c,k,k), r (c,k).

    Returns ``(alpha, converged)``: converged is False where the Cholesky failed or where the
    refinement's geometric tail (‖δ_p‖·ρ/(1−ρ), ρ = ‖δ_p‖/‖δ_{p−1}‖: the steps are a power iteration
    of μA⁻¹, so ρ estimates μ/(σ+μ) of the slowest direction) is still above 1e-6·‖α‖.
    """
    k = G.shape[-1]
    tr = G.diagonal(dim1=-2, dim2=-1).sum(-1)
    mu = torch.clamp(eps * tr / k_valid.clamp(min=1), min=ridge)
    # A token with no neighbour (or only zero vectors) has G = 0 and r = 0: any μ > 0 gives α = 0.
    mu = torch.where(mu > 0, mu, torch.ones_like(mu))
    eye = torch.eye(k, dtype=G.dtype, device=G.device)
    L, info = torch.linalg.cholesky_ex(G + mu[:, None, None] * eye)
    bad = info != 0
    if bool(bad.any()):
        L[bad] = eye  # placeholder: these rows are reported unconverged (or solved by eigh below)
    alpha = torch.cholesky_solve(r[:, :, None], L)
    shift = (mu - ridge)[:, None, None]
    step, prev = alpha, alpha
    for _ in range(refine):
        prev, step = step, torch.cholesky_solve(shift * step, L)
        alpha = alpha + step
    alpha = alpha[:, :, 0]
    s_norm, p_norm = step.norm(dim=(1, 2)), prev.norm(dim=(1, 2))
    rho = torch.where(p_norm > 0, s_norm / p_norm.clamp(min=torch.finfo(G.dtype).tiny), torch.zeros_like(s_norm))
    tail = torch.where(rho < 1, s_norm * rho / (1 - rho).clamp(min=1e-30), torch.full_like(s_norm, float("inf")))
    converged = ~bad & (tail <= 1e-6 * alpha.norm(dim=1) + torch.finfo(G.dtype).tiny)
    if refine == 0 or shift.abs().max() == 0:
        converged = ~bad
    if bool(bad.any()) and G.dtype == torch.float64:
        # Rounding made A indefinite even in float64: an eigen-solve on those rows (never seen).
        w, V = torch.linalg.eigh(G[bad] + mu[bad][:, None, None] * eye)
        w = torch.where(w > 0, w, torch.full_like(w, float("inf")))
        inv = lambda b: V @ ((V.transpose(-1, -2) @ b) / w[:, :, None])  # noqa: E731
        a = inv(r[bad][:, :, None])
        st = a
        for _ in range(refine):
            st = inv(shift[bad] * st)
            a = a + st
        alpha[bad] = a[:, :, 0]
        converged[bad] = True
    return alpha, converged


@torch.no_grad()
def salt_alpha_reference(
    x_query: torch.Tensor,
    x_basis: torch.Tensor,
    neighbors: torch.Tensor,
    *,
    ridge: float = 0.0,
    chunk_size: int | None = None,
) -> torch.Tensor:
    """The per-token coefficients α_t (n, k) float32; 0 in unused slots and for tokens with no neighbour.

    Precision: G, r and the solve run in fp32 (fast); a token whose fp32 solve has not converged
    (ill-conditioned neighbour set, Cholesky failure) and every token of a set rank-deficient by
    shape (k > d_in) is solved again from float64 G and r of the same rows.

    Args:
        x_query: (n, d_in) float32/bfloat16.
        x_basis: (m, d_in) float32/bfloat16.
        neighbors: (n, k) int64 indices into the basis, -1 = unused slot (validated by the caller).
        ridge: absolute ridge λ ≥ 0.
        chunk_size: tokens per chunk (None: sized to keep ~32 MB of gathered rows).

    Returns:
        (n, k) float32 α with ``e_t = Σ_j α_tj · y_basis[neighbors[t, j]]``.
    """
    n, k = neighbors.shape
    d_in = x_query.shape[1]
    eps64, _, refine64 = regularisation(k, d_in, gram_fp64=True)
    # fp32 here is backed by the float64 redo of unconverged tokens, so one refinement step with a
    # smaller ε suffices (bias (ε·trace/k/σ)² on a well-conditioned set).
    eps32, refine32 = 1e-5, 1
    all_fp64 = k > d_in
    acc = torch.float64 if all_fp64 else torch.float32
    xb = x_basis.to(acc)
    alpha = torch.zeros(n, k, dtype=torch.float32, device=x_query.device)
    c = _chunk_rows(k, d_in, chunk_size)
    if x_basis.shape[0] == 0:  # an empty basis: every slot is -1 (checked), nothing to gather
        return alpha
    # The batched solve runs on larger blocks than the gather (LAPACK's per-call overhead dominates
    # small batches); its G block is at most 32 MB.
    block = max(c, min(n, _CHUNK_BYTES // (4 * k * k)))
    if chunk_size is not None:
        block = c
    for b0 in range(0, n, block):
        b1 = min(n, b0 + block)
        G = torch.empty(b1 - b0, k, k, dtype=acc, device=x_query.device)
        r = torch.empty(b1 - b0, k, dtype=acc, device=x_query.device)
        valid = neighbors[b0:b1] >= 0
        v = valid.to(acc)
        for s in range(b0, b1, c):
            e = min(b1, s + c)
            idx = neighbors[s:e]
            X = xb.index_select(0, idx.clamp(min=0).reshape(-1)).view(e - s, k, d_in)
            torch.bmm(X, X.transpose(1, 2), out=G[s - b0 : e - b0])
            r[s - b0 : e - b0] = torch.bmm(X, x_query[s:e].to(acc)[:, :, None])[:, :, 0]
        # Unused slots gathered row 0: mask them out of the small G and r (cheaper than masking X).
        G *= v[:, :, None] * v[:, None, :]
        r *= v
        if all_fp64:
            a, ok = _solve(G, r, v.sum(-1), float(ridge), eps64, refine64)
        else:
            a, ok = _solve(G, r, v.sum(-1), float(ridge), eps32, refine32)
            if not bool(ok.all()):
                redo = torch.nonzero(~ok)[:, 0]
                idx = neighbors[b0:b1][redo]
                X64 = x_basis.index_select(0, idx.clamp(min=0).reshape(-1)).view(len(redo), k, d_in).double()
                v64 = v[redo].double()
                G64 = torch.bmm(X64, X64.transpose(1, 2)) * (v64[:, :, None] * v64[:, None, :])
                r64 = torch.bmm(X64, x_query[b0:b1][redo].double()[:, :, None])[:, :, 0] * v64
                a64, _ = _solve(G64, r64, v64.sum(-1), float(ridge), eps64, refine64)
                a = a.double()
                a[redo] = a64
        alpha[b0:b1] = (a * valid).float()
    return alpha


@torch.no_grad()
def apply_alpha(alpha: torch.Tensor, neighbors: torch.Tensor, y_basis: torch.Tensor) -> torch.Tensor:
    """``E[t] = Σ_j α_tj · y_basis[neighbors[t, j]]`` as one sparse (n × m) @ (m × d_out) product.

    No gathered (n × k × d_out) tensor; duplicated indices in a row add up. Output in ``y_basis``'s dtype.
    """
    n, k = neighbors.shape
    m, d_out = y_basis.shape
    dev = y_basis.device
    out = torch.empty(n, d_out, dtype=y_basis.dtype, device=dev)
    if n == 0 or d_out == 0:
        return out
    if m == 0:
        return out.zero_()
    cols = neighbors.clamp(min=0).reshape(-1)
    vals = (alpha * (neighbors >= 0)).reshape(-1).float()
    crow = torch.arange(0, n * k + 1, k, device=dev, dtype=torch.int64)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*[Ss]parse CSR tensor support is in beta.*")
        # torch 2.11 warns (with a segfault scare) that check_invariants=False skips the checks: the indices
        # were range-checked by check_salt_inputs and crow is built here, so the invariants hold by construction.
        warnings.filterwarnings("ignore", message=".*[Ss]parse invariant checks are implicitly disabled.*")
        A = torch.sparse_csr_tensor(crow, cols, vals, size=(n, m), device=dev, check_invariants=False)
    if y_basis.dtype == torch.float32:
        return A @ y_basis
    for j in range(0, d_out, _Y_COLUMN_BLOCK):
        out[:, j : j + _Y_COLUMN_BLOCK] = (A @ y_basis[:, j : j + _Y_COLUMN_BLOCK].float()).to(y_basis.dtype)
    return out


@torch.no_grad()
def salt_fit_reference(
    x_query: torch.Tensor,
    x_basis: torch.Tensor,
    y_basis: torch.Tensor,
    neighbors: torch.Tensor,
    *,
    ridge: float = 0.0,
    chunk_size: int | None = None,
) -> torch.Tensor:
    """Pure-PyTorch SALT fit: row t = x_t · pinv(X_t) · Y_t (or the ridge solution), batched and chunked.

    Args:
        x_query: (n, d_in) float32/bfloat16 — PLM embeddings of the new tokens.
        x_basis: (m, d_in) float32/bfloat16 — PLM embeddings of the overlapping tokens.
        y_basis: (m, d_out) float32/bfloat16 — their LLM embeddings.
        neighbors: (n, k) int64 indices into the basis; -1 marks an unused slot (any position).
        ridge: absolute ridge λ ≥ 0; 0 = minimum-norm least squares.
        chunk_size: tokens per chunk of the Gram/solve phase (None: automatic).

    Returns:
        (n, d_out) in ``y_basis``'s dtype; a token with no neighbour gets a zero row.
    """
    neighbors = check_salt_inputs(x_query, x_basis, y_basis, neighbors, ridge)
    alpha = salt_alpha_reference(x_query, x_basis, neighbors, ridge=ridge, chunk_size=chunk_size)
    return apply_alpha(alpha, neighbors, y_basis)
