"""Neighbour selection for SALT and its peers: cosine similarity → top-k_max → sparsemax.

Math. For a query q and basis rows b_j (both L2-normalised; an all-zero row stays zero):

    s_j = cos(q, b_j) = q̂ · b̂_j,          z_j = s_j / temperature

Keep the k_max candidates with the largest s_j (sorted descending: z_(1) ≥ z_(2) ≥ …), then take
sparsemax (Martins & Astudillo, 2016) restricted to those candidates — the Euclidean projection of
z onto the probability simplex:

    k* = max{ j ≤ k_max : 1 + j·z_(j) > Σ_{i≤j} z_(i) },   τ = (Σ_{i≤k*} z_(i) − 1) / k*,
    p_j = max(z_j − τ, 0)

The support {p_j > 0} is the first k* candidates and its weights sum to 1. A smaller temperature
sharpens the distribution (fewer neighbours); k_max caps the set (and the k × k systems of
:func:`cltx.kernels.salt_fit`). At least ``k_min`` neighbours are kept: when k* < k_min the next
candidates by similarity are appended with weight 0 (they serve the least-squares fit, not a
weighted mean).

Cost: one (chunk × m) similarity matmul per chunk of queries plus a top-k; nothing of size n × m
is ever held (chunked), and it runs on CPU and GPU alike in PyTorch.
"""

from __future__ import annotations

import torch

from cltx.errors import bad_arg
from cltx.kernels._dispatch import check_finite

__all__ = ["select_neighbors", "sparsemax_sorted"]

# Bytes of similarities one chunk may hold (fp32).
_SIM_BYTES = 256 * 2**20


def sparsemax_sorted(z: torch.Tensor, valid: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Sparsemax along the last dim of ``z`` already sorted descending.

    Args:
        z: (..., k) float, sorted descending along the last dim (invalid entries at the end).
        valid: (..., k) bool, False for padding entries (they get weight 0 and are never in support).

    Returns:
        ``(p, support)``: p (..., k) probabilities (sum 1 over the valid entries), support (...,)
        int64 support size (0 only when a row has no valid entry).
    """
    k = z.shape[-1]
    if valid is None:
        valid = torch.ones_like(z, dtype=torch.bool)
    z = z.double()
    zc = torch.where(valid, z, torch.zeros_like(z))
    csum = zc.cumsum(-1)
    j = torch.arange(1, k + 1, device=z.device, dtype=z.dtype)
    cond = (1 + j * z > csum) & valid
    # cond is a prefix for sorted z (1 + j·z_j − Σ_{i≤j} z_i is non-increasing in j); count it.
    support = cond.sum(-1)
    ks = support.clamp(min=1)
    tau = (csum.gather(-1, (ks - 1)[..., None])[..., 0] - 1) / ks.to(z.dtype)
    p = torch.clamp(z - tau[..., None], min=0)
    p = torch.where(valid & (j <= ks[..., None].to(z.dtype)), p, torch.zeros_like(p))
    return p.float(), support


def _as_int(x):
    """``x`` as a Python int when it is an integer (int, numpy integer), else unchanged (a bool stays a bool, which
    the callers refuse)."""
    import numbers

    if isinstance(x, numbers.Integral) and not isinstance(x, bool):
        return int(x)
    return x


@torch.no_grad()
def select_neighbors(
    query: torch.Tensor,
    basis: torch.Tensor,
    *,
    k_max: int = 64,
    k_min: int = 1,
    temperature: float = 1.0,
    chunk_size: int | None = None,
    exclude: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pick each query's neighbours among the basis rows by cosine similarity and sparsemax.

    Args:
        query: (n, d) float tensor (any float dtype; computed in fp32).
        basis: (m, d) float tensor on the same device.
        k_max: the most neighbours per query (candidates = the k_max most similar rows).
        k_min: the fewest neighbours kept (1 ≤ k_min ≤ k_max); extras beyond the sparsemax support
            get weight 0.
        temperature: z = similarity / temperature before sparsemax (> 0; smaller = fewer neighbours).
        chunk_size: queries per similarity chunk (None: keep ~256 MB of similarities).
        exclude: optional (n,) int64 basis row to exclude per query (-1 = none), e.g. the query itself.

    Returns:
        ``(indices, weights)``: indices (n, k_max) int64, sorted by similarity descending, the
        kept neighbours first and -1 padding after; weights (n, k_max) float32 sparsemax
        probabilities (sum 1 per query with any candidate, 0 on padding and k_min extras).
    """
    if not isinstance(query, torch.Tensor) or query.dim() != 2 or not query.dtype.is_floating_point:
        raise bad_arg("query", getattr(query, "shape", query), "pass an (n, d) float tensor")
    if not isinstance(basis, torch.Tensor) or basis.dim() != 2 or not basis.dtype.is_floating_point:
        raise bad_arg("basis", getattr(basis, "shape", basis), "pass an (m, d) float tensor")
    if basis.shape[1] != query.shape[1]:
        raise bad_arg("basis.shape", tuple(basis.shape), f"basis must have d={query.shape[1]} columns like query")
    if basis.device != query.device:
        raise bad_arg("basis.device", str(basis.device), f"put basis on {query.device} like query")
    # numpy / 0-d integer values are integers too (numbers.Integral); a bool is not
    k_max, k_min = _as_int(k_max), _as_int(k_min)
    if not isinstance(k_max, int) or isinstance(k_max, bool) or k_max < 1:
        raise bad_arg("k_max", k_max, "pass a positive integer")
    if not isinstance(k_min, int) or isinstance(k_min, bool) or not 1 <= k_min <= k_max:
        raise bad_arg("k_min", k_min, f"pass an integer in [1, k_max={k_max}]")
    if not (isinstance(temperature, (int, float)) and temperature > 0 and temperature != float("inf")):
        raise bad_arg("temperature", temperature, "pass a finite temperature > 0")
    if chunk_size is not None and (not isinstance(chunk_size, int) or chunk_size < 1):
        raise bad_arg("chunk_size", chunk_size, "pass a positive number of queries per chunk, or None")
    n, m = query.shape[0], basis.shape[0]
    for name, t in (("query", query), ("basis", basis)):
        # NaN sorts above every similarity in topk: a NaN basis row was picked first and the weights no longer
        # summed to 1; a NaN query silently got no neighbour.
        check_finite(name, t)
    if exclude is not None:
        if (
            not isinstance(exclude, torch.Tensor)
            or exclude.shape != (n,)
            or exclude.dtype.is_floating_point
            or exclude.dtype == torch.bool
        ):
            shown = exclude.dtype if isinstance(exclude, torch.Tensor) and exclude.shape == (n,) else None
            raise bad_arg(
                "exclude", shown or getattr(exclude, "shape", exclude), f"pass an ({n},) int64 tensor (-1 = none)"
            )
        exclude = exclude.to(device=query.device, dtype=torch.int64)
        if n:
            lo, hi = int(exclude.min()), int(exclude.max())
            if lo < -1 or hi >= m:  # was an IndexError from inside (>= m) or silently ignored (< -1)
                raise bad_arg("exclude", f"values in [{lo}, {hi}]", f"use basis row indices in [0, {m}), -1 = none")
    dev = query.device
    indices = torch.full((n, k_max), -1, dtype=torch.int64, device=dev)
    weights = torch.zeros(n, k_max, dtype=torch.float32, device=dev)
    k_cand = min(k_max, m)
    if n == 0 or k_cand == 0:
        return indices, weights
    # 1. Normalise once (fp32); zero rows stay zero (similarity 0 to everything).
    b = basis.float()
    b = b / b.norm(dim=1, keepdim=True).clamp(min=1e-12)
    c = chunk_size or max(1, _SIM_BYTES // (4 * max(m, 1)))
    for s in range(0, n, c):
        q = query[s : s + c].float()
        q = q / q.norm(dim=1, keepdim=True).clamp(min=1e-12)
        # 2. Similarities of this chunk only (c × m), then the k_max best candidates, sorted.
        sim = q @ b.T
        if exclude is not None:
            ex = exclude[s : s + c]
            rows = torch.nonzero(ex >= 0)[:, 0]
            sim[rows, ex[rows]] = float("-inf")
        top, idx = torch.topk(sim, k_cand, dim=1, largest=True, sorted=True)
        valid = torch.isfinite(top)
        # 3. Sparsemax over the candidates (ties and padding handled in sparsemax_sorted).
        # Shifted by the best similarity (sparsemax is shift-invariant) and clamped at −2: a candidate more
        # than 1 below the best is never in the support, so the clamp is exact, and a tiny temperature
        # (1e-20, 1e-40) gives the top candidate weight 1 instead of inf − inf = NaN or all-zero weights.
        # Below 1e-30 the temperature would round to 0 in fp32 (0 / 0 for the best candidate); any nonzero
        # gap between fp32 cosines over 1e-30 is far past the clamp, so the floor changes no result.
        z = ((top - top[:, :1]) / max(float(temperature), 1e-30)).clamp(min=-2.0)
        z = torch.where(valid, z, torch.zeros_like(top))
        p, support = sparsemax_sorted(z, valid)
        keep = torch.minimum(support.clamp(min=k_min), valid.sum(1))
        pos = torch.arange(k_cand, device=dev)[None, :]
        kept = pos < keep[:, None]
        indices[s : s + c, :k_cand] = torch.where(kept, idx, torch.full_like(idx, -1))
        weights[s : s + c, :k_cand] = torch.where(kept, p, torch.zeros_like(p))
    return indices, weights
