"""Pure-PyTorch reference of the fused linear paired log-prob loss (CLO: NLL + DPO-style CL).

This is the CPU path, the benchmark baseline and the skeleton the Triton path shares: the chunk
plan, the per-sequence coefficients and the loss assembly live here; :mod:`cltx.kernels.clo_loss`
swaps the two row operations (log-sum-exp + label gather, in-place d-logits) for Triton kernels.

Math (rows of ``hidden`` flattened to N = 2P·T tokens, z = h·Wᵀ + b, or z = c·tanh(s·(h·Wᵀ + b)/c) for a model
that scales (``logit_scale`` s) or soft-caps (``logit_softcap`` c) its logits, e.g. Gemma-2, Cohere, Granite; the row
operations apply it, and the chain factor s·(1 − (z/c)²) to the d-logits, so the products are unchanged):

* logp_t = z_t[y_t] − logsumexp(z_t) for scored tokens (y_t ≠ −100), 0 otherwise.
* s(row) = Σ_t logp_t, or Σ_t logp_t / count(row) with ``average_logps`` (0 for a row without tokens).
* NLL = −Σ_{chosen rows with nll_mask} Σ_t logp_t / (their token count) (0 when there are none).
* m_i = (s(c_i) − ref_c_i) − (s(r_i) − ref_r_i); CL = mean_i softplus(−β·m_i).
* loss = λ·NLL + (1 − λ)·CL.

Gradient: d loss / d z_t(v) = coef_t · (onehot(y_t)(v) − softmax(z_t)(v)), with coef_t = d loss / d logp_t:

* chosen row i:   coef = −(1 − λ)·β·σ(−β m_i)/P · scale_c + (−λ/N_nll if nll_mask_i)
* rejected row i: coef = +(1 − λ)·β·σ(−β m_i)/P · scale_r
* scale = 1/count(row) with ``average_logps`` (0 for an empty row), else 1; coef_t = 0 for ignored tokens.

grad_hidden = dz · W, grad_W = dzᵀ · h, grad_b = Σ_t dz_t. Since the loss is a scalar, loss and gradients
are computed together in the forward; backward scales them by the upstream gradient.

The coefficient of a token needs its whole pair's log-probs, so the chunk plan has two modes:

* ``pair``: chunks of whole pairs whose logits fit the budget are held; one matmul forward, two backward
  (6·N·H·V flops).
* ``deferred``: a pair does not fit but the weight is frozen or its per-row partial sums fit (6·N·H·V).
* ``recompute``: otherwise; pass 1 over aligned (token chunk × vocabulary slab) tiles keeps each token's
  log-sum-exp and label logit, pass 2 recomputes the tiles for the gradients (8·N·H·V flops), the hidden
  gradient of a token chunk summed over slabs in fp32.

``CLTX_CLO_OVERLAP=1`` (a candidate, off by default) runs the pair chunks with the row operations of one block of
rows on a side CUDA stream beside a product of the other (see :mod:`cltx.kernels.clo_loss`); elsewhere the side
stream is the same stream and the same code runs in order.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import math
import os
from collections.abc import Callable

import torch

from cltx.errors import bad_arg

logger = logging.getLogger("cltx.kernels")

IGNORE_INDEX = -100
DEFAULT_BUDGET_GIB = 2.0
MIN_CHUNK_TOKENS = 16

__all__ = [
    "ChunkPlan",
    "clo_loss_reference",
    "last_plan",
    "plan_chunks",
]


@dataclasses.dataclass(frozen=True)
class ChunkPlan:
    """How one call walks the (tokens × vocabulary) logits.

    Attributes:
        mode: ``"pair"`` (whole pairs' logits held) or ``"recompute"`` (two passes).
        chunks: per token chunk, the (start, end) ranges of flattened token indices it covers.
        slabs: the (start, end) vocabulary ranges each chunk is multiplied by (``pair``: the whole vocabulary).
        max_tokens: tokens in the largest chunk.
        max_cols: columns in the widest slab (the logits buffer holds max_tokens × max_cols).
        budget_bytes: the memory budget the plan was made for.
        path: ``"reference"`` or ``"triton"`` (set by the caller).
        dtype: the products' (and the logits buffer's) dtype (set by the caller).
        overlap: pair chunks ran with the row kernels of one block beside a product of the other
            (``CLTX_CLO_OVERLAP=1``; set by the caller).
    """

    mode: str
    chunks: tuple[tuple[tuple[int, int], ...], ...]
    slabs: tuple[tuple[int, int], ...]
    max_tokens: int
    max_cols: int
    budget_bytes: int
    path: str = "reference"
    dtype: str = ""
    overlap: bool = False


_LAST_PLAN: ChunkPlan | None = None
_WARNED_BUDGETS: set[int] = set()
# The narrowest vocabulary slab of the recompute mode before it also splits the tokens (keeps the
# products matmul-shaped); tests lower it to exercise both splits at small sizes.
MIN_SLAB = 2048
# Slab widths of the recompute plan are multiples of this many columns (aligned rows, whole GEMM tiles).
SLAB_ALIGN = 256
# The shortest token chunk worth the deferred plan with a trainable weight (each chunk adds a read and write
# of the V × H partial sums; shorter rows are taken whole). A frozen weight has no such cost.
DEFERRED_MIN_TOKENS = 1024


def last_plan() -> ChunkPlan | None:
    """The chunk plan of the most recent call in this process (for tests and benchmarks)."""
    return _LAST_PLAN


def _merge(ranges: list[tuple[int, int]]) -> tuple[tuple[int, int], ...]:
    out: list[tuple[int, int]] = []
    for a, b in ranges:
        if b <= a:
            continue
        if out and out[-1][1] == a:
            out[-1] = (out[-1][0], b)
        else:
            out.append((a, b))
    return tuple(out)


def _even_split(n: int, width: int) -> tuple[tuple[int, int], ...]:
    """[0, n) in ceil(n / width) near-equal ranges."""
    k = max(1, math.ceil(n / max(width, 1)))
    w = math.ceil(n / k)
    return tuple((a, min(n, a + w)) for a in range(0, n, w))


def plan_chunks(
    n_pairs: int,
    seq_len: int,
    vocab: int,
    *,
    bytes_per_logit: int,
    budget_bytes: int,
    fixed_bytes: int = 0,
    weight_grad_bytes: int | None = None,
    mode: str | None = None,
    row_bytes_per_token: int = 0,
    hidden_size: int = 0,
) -> ChunkPlan:
    """Choose the plan whose working buffers fit ``budget_bytes − fixed_bytes``.

    * ``pair`` when one pair's full logits (2·T × V) fit: chunks of as many whole pairs as fit (6·N·H·V).
    * ``deferred`` otherwise, when the weight is frozen or its per-row partial gradients fit (one V × H buffer
      for a single pair, two for several): token chunks whose d-logits are formed with a unit coefficient;
      the products are scaled once each row's coefficient is known (6·N·H·V, no recompute).
    * ``recompute`` otherwise: two passes over all tokens × vocabulary slabs as wide as fit (8·N·H·V); each
      weight-gradient slab is one product over every token; only when a slab would be narrower than
      ``MIN_SLAB`` are the tokens split too.

    Args:
        n_pairs: P. seq_len: T. vocab: V.
        bytes_per_logit: bytes one logit costs in the working buffer (storage plus any working copy).
        budget_bytes: the caller's memory budget.
        fixed_bytes: budget already spent elsewhere (a cast weight copy, accumulators).
        weight_grad_bytes: bytes of one weight-gradient buffer (V × H in the weight's dtype); 0 for a frozen
            weight; ``None`` rules the deferred plan out.
        mode: force ``"pair"``, ``"deferred"`` or ``"recompute"`` (tests); ``None`` chooses.
        row_bytes_per_token: recompute plan: per-token bytes of the hidden-gradient accumulator (0: none).
        hidden_size: H, for the recompute plan's traffic estimate.
    """
    return _plan_cached(
        n_pairs,
        seq_len,
        vocab,
        bytes_per_logit,
        budget_bytes,
        fixed_bytes,
        weight_grad_bytes,
        mode,
        row_bytes_per_token,
        hidden_size,
        MIN_SLAB,
    )


@functools.lru_cache(maxsize=256)
def _plan_cached(
    n_pairs: int,
    seq_len: int,
    vocab: int,
    bytes_per_logit: int,
    budget_bytes: int,
    fixed_bytes: int,
    weight_grad_bytes: int | None,
    mode: str | None,
    row_bytes_per_token: int,
    hidden_size: int,
    min_slab: int,
) -> ChunkPlan:
    P, T, V = n_pairs, seq_len, vocab
    N = 2 * P * T
    # A small margin for library workspaces (cuBLAS) and per-token statistics.
    margin = min(32 << 20, budget_bytes // 16)
    avail = max(budget_bytes - fixed_bytes - margin, 0)
    per_token = padded_cols(V) * bytes_per_logit
    fit = avail // per_token
    extra = None if weight_grad_bytes is None else (1 if P == 1 else 2) * weight_grad_bytes
    fit_deferred = 0 if extra is None else max(avail - extra, 0) // per_token
    if mode is None:
        if fit >= 2 * T:
            mode = "pair"
        elif fit_deferred >= (min(T, DEFERRED_MIN_TOKENS) if weight_grad_bytes else 1):
            mode = "deferred"
        else:
            mode = "recompute"
    if mode == "pair":
        k = max(1, min(P, fit // (2 * T)))
        chunks = []
        for i0 in range(0, P, k):
            i1 = min(P, i0 + k)
            chunks.append(_merge([(i0 * T, i1 * T), ((P + i0) * T, (P + i1) * T)]))
        return ChunkPlan("pair", tuple(chunks), ((0, V),), 2 * k * T, V, budget_bytes)
    if mode == "deferred":
        n = max(fit_deferred, MIN_CHUNK_TOKENS)
        if weight_grad_bytes:  # row by row, pair by pair: chosen row i, then rejected row P+i
            chunks = []
            for i in range(P):
                for r in (i, P + i):
                    chunks += [((r * T + a, r * T + b),) for a, b in _even_split(T, n)]
            chunks = tuple(chunks)
        else:  # frozen weight: nothing kept per row but the hidden gradient, scaled at the end
            chunks = tuple((r,) for r in _even_split(N, n))
        return ChunkPlan("deferred", chunks, ((0, V),), max(b - a for ((a, b),) in chunks), V, budget_bytes)
    if mode != "recompute":
        raise bad_arg("mode", mode, "use 'pair', 'deferred', 'recompute' or None")
    return _plan_recompute(N, V, avail, bytes_per_logit, budget_bytes, row_bytes_per_token, hidden_size, min_slab)


def _round_cols(w: int, V: int) -> int:
    """A slab width: the whole vocabulary, or a multiple of SLAB_ALIGN columns (8 for tiny widths), so that
    every slab's logits rows start 16-byte aligned and the products get cuBLAS's tensor-core kernels (an odd
    leading dimension, e.g. 14,251 bf16 columns, drops them to a several-times slower path)."""
    if w >= V:
        return V
    for a in (SLAB_ALIGN, 8):
        if w >= a:
            return w // a * a
    return w


def padded_cols(w: int) -> int:
    """Row stride (elements) of a logits buffer holding ``w`` columns: rounded up to 8 (16 bytes in bf16)."""
    return -(-w // 8) * 8


def _plan_recompute(
    N: int, V: int, avail: int, bytes_per_logit: int, budget_bytes: int, row_bytes: int, H: int, min_slab: int
) -> ChunkPlan:
    """Tiles of n tokens × w vocabulary columns for the two-pass plan.

    Pass 2 runs token chunks outer, slabs inner: the hidden gradient of a chunk is summed over slabs in a
    per-chunk accumulator (``row_bytes`` per token, fp32 under 16-bit products), the weight gradient of a
    slab over token chunks in the gradient itself. Among the splits that fit, take the one with the least
    accumulator traffic (token chunks × V·H·4 bytes for the weight gradient, slabs × N·H·8 for the hidden
    gradient's fp32 accumulator, plus a per-product overhead), keeping products at least 2,048 tokens deep and
    4,096 columns wide where the budget allows."""
    min_slab = min(V, min_slab)
    options = []
    # at most 256 token chunks (shorter chunks make thin products); a few hundred candidates: planning costs
    # well under a millisecond of host time (and plan_chunks is cached per shape and budget)
    for k in range(1, min(max(1, N // MIN_CHUNK_TOKENS), 256) + 1):
        n = -(-N // k)
        if k > 1 and n == -(-N // (k - 1)):
            continue
        per_tok = avail // n - row_bytes
        if per_tok <= 0:
            continue
        w = _round_cols(per_tok // bytes_per_logit, V)
        if padded_cols(w) * bytes_per_logit > per_tok:
            w = _round_cols(w - 8, V)
        if w < min_slab or w <= 0:
            continue
        n_slabs = -(-V // w)
        cost = k * V * H * 4 + n_slabs * N * H * 8 * (row_bytes > 0) + k * n_slabs * (64 << 20)
        options.append((n < min(N, 2048), w < min(V, 4096), cost, k, n, w))
    if options:
        *_, k, n, w = min(options)
    else:
        w = min_slab
        n = avail // max(padded_cols(w) * bytes_per_logit + row_bytes, 1)
        if n < MIN_CHUNK_TOKENS:
            if budget_bytes not in _WARNED_BUDGETS:
                _WARNED_BUDGETS.add(budget_bytes)
                logger.warning(
                    "clo_loss: memory budget %.3g GiB is too small for %d tokens × %d logits; using that much",
                    budget_bytes / 2**30,
                    MIN_CHUNK_TOKENS,
                    w,
                )
            n = MIN_CHUNK_TOKENS
    chunks = tuple((r,) for r in _even_split(N, n))
    slabs = _aligned_split(V, w)
    return ChunkPlan(
        "recompute",
        chunks,
        slabs,
        max(b - a for ((a, b),) in chunks),
        max(b - a for a, b in slabs),
        budget_bytes,
    )


def _aligned_split(V: int, width: int) -> tuple[tuple[int, int], ...]:
    """[0, V) in ceil(V / width) slabs of near-equal width, each a multiple of the alignment but the last."""
    k = max(1, math.ceil(V / max(width, 1)))
    if k == 1:
        return ((0, V),)
    a = SLAB_ALIGN if width >= SLAB_ALIGN else (8 if width >= 8 else 1)
    w = min(width, -(-math.ceil(V / k) // a) * a)
    return tuple((v, min(V, v + w)) for v in range(0, V, w))


# ---------------------------------------------------------------------------------------------------
# Validation shared by both paths
# ---------------------------------------------------------------------------------------------------


def validate(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    nll_mask: torch.Tensor,
    bias: torch.Tensor | None,
    beta: float,
    lam: float,
    memory_budget_gib: float | None,
    logit_scale: float = 1.0,
    logit_softcap: float | None = None,
) -> None:
    """Raise :class:`cltx.errors.CltxError` naming the first bad argument."""
    if not isinstance(hidden, torch.Tensor) or hidden.dim() != 3 or hidden.shape[0] < 2 or hidden.shape[0] % 2:
        shape = tuple(hidden.shape) if isinstance(hidden, torch.Tensor) else hidden
        raise bad_arg("hidden.shape", shape, "pass (2P, T, H): P chosen rows then their P rejected rows")
    if not hidden.is_floating_point():
        raise bad_arg("hidden.dtype", hidden.dtype, "pass floating-point hidden states")
    P2, T, H = hidden.shape
    P = P2 // 2
    if T < 1 or H < 1:
        raise bad_arg("hidden.shape", tuple(hidden.shape), "pass at least one position and one feature")
    tensors = (
        ("weight", weight),
        ("labels", labels),
        ("ref_chosen_logps", ref_chosen_logps),
        ("ref_rejected_logps", ref_rejected_logps),
        ("nll_mask", nll_mask),
    )
    for name, t in tensors:
        if not isinstance(t, torch.Tensor):  # a list here was an AttributeError from deep inside
            raise bad_arg(name, t, "pass a torch.Tensor (e.g. torch.tensor(...))")
    if bias is not None and not isinstance(bias, torch.Tensor):
        raise bad_arg("bias", bias, "pass a torch.Tensor or None")
    if weight.dim() != 2 or weight.shape[1] != H or weight.shape[0] < 1:
        raise bad_arg("weight.shape", tuple(weight.shape), f"pass the LM head weight (V, H) with V >= 1 and H = {H}")
    if not weight.is_floating_point():
        raise bad_arg("weight.dtype", weight.dtype, "pass a floating-point weight")
    V = weight.shape[0]
    if bias is not None and (bias.dim() != 1 or bias.shape[0] != V):
        raise bad_arg("bias.shape", tuple(bias.shape), f"pass a bias of shape ({V},) or None")
    if bias is not None and not bias.is_floating_point():
        raise bad_arg("bias.dtype", bias.dtype, "pass a floating-point bias (the LM head's)")
    if tuple(labels.shape) != (P2, T):
        raise bad_arg("labels.shape", tuple(labels.shape), f"pass labels aligned with hidden: ({P2}, {T})")
    if labels.dtype not in (torch.int64, torch.int32):
        raise bad_arg("labels.dtype", labels.dtype, "pass integer token ids (int64), -100 for unscored positions")
    for name, t in (("ref_chosen_logps", ref_chosen_logps), ("ref_rejected_logps", ref_rejected_logps)):
        if tuple(t.shape) != (P,):
            raise bad_arg(f"{name}.shape", tuple(t.shape), f"pass one float log-prob per pair: ({P},)")
        if not t.is_floating_point():
            raise bad_arg(f"{name}.dtype", t.dtype, "pass float log-probs (e.g. .float())")
    if tuple(nll_mask.shape) != (P,):
        raise bad_arg("nll_mask.shape", tuple(nll_mask.shape), f"pass one bool per pair: ({P},)")
    if nll_mask.is_floating_point() or nll_mask.is_complex():
        # read as bool, a float mask of weights (0.5) would silently count as a whole row
        raise bad_arg(
            "nll_mask.dtype", nll_mask.dtype, "pass a bool mask (e.g. mask > 0): it selects rows, it is no weight"
        )
    dev = hidden.device
    for name, t in (*tensors, ("bias", bias)):
        if t is not None and t.device != dev:
            raise bad_arg(f"{name}.device", str(t.device), f"put every tensor on {dev} (where hidden is)")
    beta_f = _real(beta)
    if beta_f is None or not math.isfinite(beta_f):
        raise bad_arg("beta", beta, "pass a finite float (e.g. 0.1)")
    lam_f = _real(lam)
    if lam_f is None or not (0.0 <= lam_f <= 1.0):
        raise bad_arg("lam", lam, "pass a weight between 0 and 1 (0.5 in the paper)")
    if memory_budget_gib is not None:
        budget = _real(memory_budget_gib)
        # inf was an OverflowError from deep inside (int(inf · 2**30))
        if budget is None or not (0 < budget < math.inf):
            raise bad_arg("memory_budget_gib", memory_budget_gib, "pass a finite positive number of GiB, or None for 2")
    scale = _real(logit_scale)
    if scale is None or not (0 < scale < math.inf):
        raise bad_arg(
            "logit_scale", logit_scale, "pass the finite positive factor the model multiplies its logits by (1 = none)"
        )
    if logit_softcap is not None:
        cap = _real(logit_softcap)
        if cap is None or not (0 < cap < math.inf):
            raise bad_arg(
                "logit_softcap", logit_softcap, "pass the model's final logit softcapping (e.g. 30.0), or None for none"
            )


def _real(x: object) -> float | None:
    """``x`` as a float when it is a real number (int, float, 0-d tensor), else None (str, None, bool)."""
    if isinstance(x, (str, bytes, bool)) or x is None:
        return None
    try:
        return float(x)
    except (TypeError, ValueError, RuntimeError):
        return None


def compute_dtype(hidden: torch.Tensor, weight: torch.Tensor) -> torch.dtype:
    """The matmul dtype: the activations' (bf16 activations with an fp32 master weight → bf16), or the
    autocast dtype for fp32 activations when autocast is on for their device (as a matmul under autocast)."""
    if hidden.dtype == torch.float32:
        try:
            if torch.is_autocast_enabled(hidden.device.type):
                return torch.get_autocast_dtype(hidden.device.type)
        except (AttributeError, TypeError, RuntimeError):  # a device type without autocast
            pass
    return hidden.dtype


# ---------------------------------------------------------------------------------------------------
# The fused forward (loss and gradients), parameterised by the two row operations
# ---------------------------------------------------------------------------------------------------

# stats(logits (n, w), labels (n,), col0) -> (lse (n,), label_logit (n,)) over columns col0 … col0+w−1,
# in the accumulation dtype; the label logit is 0 where the label is −100 or outside the slab.
RowStats = Callable[[torch.Tensor, torch.Tensor, int], tuple[torch.Tensor, torch.Tensor]]
# grad_(logits (n, w), labels (n,), lse (n,), coef (n,), col0) -> None; overwrites the slab of logits with
# coef·(onehot(label) − exp(z − lse)), lse being the full row's.
RowGrad = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, int], None]


def _in_slab(labels: torch.Tensor, col0: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    local = labels - col0
    inside = (labels != IGNORE_INDEX) & (local >= 0) & (local < width)
    return inside, torch.where(inside, local, 0)


def transform_logits(z: torch.Tensor, scale: float = 1.0, softcap: float | None = None) -> torch.Tensor:
    """The logits the model's softmax sees: softcap·tanh(scale·z / softcap) (Gemma-2's softcapping), or scale·z
    without a cap (Cohere's logit_scale, Granite's 1/logits_scaling); z itself when neither is set. Out of place."""
    if scale != 1.0:
        z = z * scale
    if softcap is not None:
        z = torch.tanh(z / softcap) * softcap
    return z


def ref_row_stats(
    logits: torch.Tensor, labels: torch.Tensor, col0: int = 0, *, scale: float = 1.0, softcap: float | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    acc = torch.promote_types(logits.dtype, torch.float32)
    z = transform_logits(logits.to(acc), scale, softcap)
    lse = torch.logsumexp(z, dim=-1)
    inside, local = _in_slab(labels, col0, z.shape[1])
    zl = z.gather(1, local.unsqueeze(1)).squeeze(1)
    return lse, torch.where(inside, zl, torch.zeros_like(zl))


def ref_row_grad_(
    logits: torch.Tensor,
    labels: torch.Tensor,
    lse: torch.Tensor,
    coef: torch.Tensor,
    col0: int = 0,
    *,
    scale: float = 1.0,
    softcap: float | None = None,
) -> None:
    acc = lse.dtype
    z = transform_logits(logits.to(acc), scale, softcap)
    g = torch.exp(z - lse.unsqueeze(1)).mul_(-coef.to(acc).unsqueeze(1))
    inside, local = _in_slab(labels, col0, logits.shape[1])
    g.scatter_add_(1, local.unsqueeze(1), torch.where(inside, coef.to(acc), 0).unsqueeze(1))
    if softcap is not None:  # d z / d raw = scale·(1 − tanh²) = scale·(1 − (z / softcap)²)
        g.mul_(z.div_(softcap).square_().neg_().add_(1.0).mul_(scale))
    elif scale != 1.0:
        g.mul_(scale)
    logits.copy_(g)


_MM_F32: dict[str, bool] = {}
_ADDMM_F32: dict[str, bool] = {}


def _probe_once(cache: dict[str, bool], device: torch.device, probe) -> bool:
    """``probe(device)`` run once per device type (CUDA only) and remembered in ``cache``; an
    exception (older torch, or no fp32-output kernel for this device) counts as unsupported. A later
    failure at the real call sets the entry to False."""
    if device.type not in cache:
        ok = False
        if device.type == "cuda":
            try:
                ok = bool(probe(device))
            except Exception:
                ok = False
        cache[device.type] = ok
    return cache[device.type]


def _mm_f32_probe(device: torch.device) -> bool:
    a = torch.ones(2, 2, device=device, dtype=torch.bfloat16)
    return torch.mm(a, a, out_dtype=torch.float32).dtype == torch.float32


def _addmm_f32_probe(device: torch.device) -> bool:
    a = torch.ones(8, 8, device=device, dtype=torch.bfloat16)
    c = torch.ones(8, 8, device=device, dtype=torch.float32)
    torch.addmm(c, a, a, out_dtype=torch.float32, out=c)
    return bool((c == 9).all())


def _mm_f32_supported(device: torch.device) -> bool:
    """Whether ``torch.mm(a16, b16, out_dtype=torch.float32)`` works here."""
    return _probe_once(_MM_F32, device, _mm_f32_probe)


def _addmm_f32_supported(device: torch.device) -> bool:
    """Whether ``torch.addmm(c32, a16, b16, out_dtype=torch.float32, out=c32)`` works (and adds) here."""
    return _probe_once(_ADDMM_F32, device, _addmm_f32_probe)


def _addmm_f32_(acc: torch.Tensor, a: torch.Tensor, b: torch.Tensor, first: bool) -> None:
    """acc (fp32) (+)= a · b for 16-bit a, b: one fp32-output product where supported, else a 16-bit product
    added in fp32 (each slab's product rounded once, the sum over slabs kept in fp32)."""
    if _addmm_f32_supported(acc.device):
        if first:
            acc.zero_()
        try:
            torch.addmm(acc, a, b, out_dtype=torch.float32, out=acc)
            return
        except (RuntimeError, TypeError):  # a layout without an fp32-output kernel: the fallback from now on
            _ADDMM_F32[acc.device.type] = False
    if a.dtype == acc.dtype:
        if first:
            torch.mm(a, b, out=acc)
        else:
            acc.addmm_(a, b)
    elif first:
        acc.copy_(torch.mm(a, b))
    else:
        acc.add_(torch.mm(a, b))


_WGRAD_SLAB = 8192  # vocab rows per fp32-output weight-gradient product (mixed dtypes only)


def _accumulate_weight_grad(gw: torch.Tensor, dz: torch.Tensor, h: torch.Tensor, first: bool = False) -> None:
    """gw (V, H) += dzᵀ (V, n) · h (n, H) (``first``: gw = …), in fp32 where gw is fp32 and dz, h are not."""
    if gw.dtype == dz.dtype:
        if first:
            torch.mm(dz.t(), h, out=gw)
        else:
            gw.addmm_(dz.t(), h)
        return
    if first:
        gw.zero_()
    fast = _mm_f32_supported(dz.device) and gw.dtype == torch.float32
    h_up = None
    for v0 in range(0, gw.shape[0], _WGRAD_SLAB):
        v1 = min(gw.shape[0], v0 + _WGRAD_SLAB)
        if fast:
            try:
                gw[v0:v1].add_(torch.mm(dz[:, v0:v1].t(), h, out_dtype=torch.float32))
                continue
            except (RuntimeError, TypeError):  # no fp32-output product for this layout: upcast instead
                _MM_F32[dz.device.type] = fast = False
        if h_up is None:
            h_up = h.to(gw.dtype)
        gw[v0:v1].addmm_(dz[:, v0:v1].t().to(gw.dtype), h_up)


def fused_loss_and_grads(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    labels: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    nll_mask: torch.Tensor,
    *,
    beta: float,
    lam: float,
    average_logps: bool,
    memory_budget_gib: float | None,
    need: tuple[bool, bool, bool],
    row_stats: RowStats,
    row_grad_: RowGrad,
    extra_bytes_per_logit: int = 0,
    path: str = "reference",
    mode: str | None = None,
    compute: torch.dtype | None = None,
    logit_scale: float = 1.0,
    logit_softcap: float | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor], tuple[torch.Tensor | None, ...]]:
    """Loss, raw metrics and the gradients (for upstream gradient 1) of hidden, weight, bias.

    ``need`` says which of (hidden, weight, bias) want a gradient; a gradient not needed costs nothing.
    ``logit_scale`` / ``logit_softcap``: the model's transform of h·Wᵀ + b (see :func:`transform_logits`),
    applied inside the row operations (the buffer keeps raw logits; d-logits come back for the raw ones).
    """
    if logit_scale != 1.0 or logit_softcap is not None:
        row_stats = functools.partial(row_stats, scale=logit_scale, softcap=logit_softcap)
        row_grad_ = functools.partial(row_grad_, scale=logit_scale, softcap=logit_softcap)
    global _LAST_PLAN
    P2, T, H = hidden.shape
    P = P2 // 2
    V = weight.shape[0]
    N = P2 * T
    dev = hidden.device
    cdt = compute_dtype(hidden, weight) if compute is None else compute
    acc = torch.promote_types(cdt, torch.float32)
    need_h, need_w, need_b = need
    any_grad = need_h or need_w or need_b

    h2 = hidden.reshape(N, H)
    if not h2.is_contiguous():
        h2 = h2.contiguous()
    lab = labels.reshape(N).to(torch.int64)
    valid = lab != IGNORE_INDEX
    # Out-of-range labels are an error, but reading a CUDA flag here would stall the host until the queue drains
    # (in training: the model's forward) and leave the GPU idle while this call's first kernels are prepared. The
    # flag goes to pinned host memory asynchronously and is read once this call's work is queued; until then such
    # a label is harmless (it matches no vocabulary column: no kernel indexes with it).
    bad_label = (((lab < 0) & valid) | (lab >= V)).any()
    bad_flag = bad_ready = None
    if bad_label.is_cuda:
        bad_flag = torch.empty((), dtype=torch.bool, pin_memory=True)
        bad_flag.copy_(bad_label, non_blocking=True)
        bad_ready = torch.cuda.Event()
        bad_ready.record()
    elif bool(bad_label):
        raise _bad_labels(V)

    # 1. Budget: the logits buffer plus whatever else this call allocates beyond the gradients.
    elt = torch.empty((), dtype=cdt).element_size()
    fixed = 0
    wc = weight
    if weight.dtype != cdt:
        wc = weight.to(cdt)
        fixed += wc.numel() * elt
    bc = None if bias is None else bias.to(cdt)
    if h2.dtype != cdt:  # fp32 activations under autocast: the products run in the autocast dtype
        h2 = h2.to(cdt)
        fixed += 2 * h2.numel() * elt  # the cast copy and the gradient before its cast back
    if need_w and weight.dtype != cdt:
        fixed += _WGRAD_SLAB * H * 4 + N * H * 4  # fp32-output slab products (or fp32 copies of the inputs)
    fixed += N * 4 * 8  # per-token statistics and coefficients
    if need_b:
        fixed += P2 * V * 4  # per-row bias partials of the deferred plan
    budget = int((DEFAULT_BUDGET_GIB if memory_budget_gib is None else memory_budget_gib) * 2**30)
    # Recompute plan: a token chunk's hidden gradient is summed over vocabulary slabs in fp32 (16-bit products:
    # one bf16 rounding at the end, not one per slab), through fp32-output cuBLAS products where available,
    # else through a 16-bit product and an fp32 add (a temporary of the chunk's size).
    acc_h = need_h and cdt in (torch.float16, torch.bfloat16)
    row_bytes = 0
    if acc_h:
        row_bytes = H * 4 + (0 if _addmm_f32_supported(dev) else H * elt)
    plan = plan_chunks(
        P,
        T,
        V,
        bytes_per_logit=elt + extra_bytes_per_logit,
        budget_bytes=budget,
        fixed_bytes=fixed,
        weight_grad_bytes=V * H * weight.element_size() if need_w else 0,
        mode=mode,
        row_bytes_per_token=row_bytes,
        hidden_size=H,
    )
    # The overlapped pair chunk (a candidate, off by default until measured on a GPU) needs a hidden gradient to
    # compute beside the row kernels.
    overlap = plan.mode == "pair" and need_h and os.environ.get(OVERLAP_ENV, "0") == "1"
    plan = dataclasses.replace(plan, path=path, dtype=str(cdt).replace("torch.", ""), overlap=overlap)
    _LAST_PLAN = plan

    # 2. Per-row token counts and the NLL normaliser: known from the labels alone.
    counts = valid.view(P2, T).sum(1).to(acc)
    mask = nll_mask.to(dev).bool()
    n_nll = (counts[:P] * mask).sum()
    ref_c = ref_chosen_logps.to(acc)
    ref_r = ref_rejected_logps.to(acc)

    def scale_of(rows_counts: torch.Tensor) -> torch.Tensor:
        if average_logps:
            return torch.where(rows_counts > 0, 1.0 / rows_counts.clamp(min=1), torch.zeros_like(rows_counts))
        return torch.ones_like(rows_counts)

    # d NLL / d logp_t of each chosen row (0 outside the NLL mask), once per call
    nll_coef = lam * mask.to(acc) / n_nll.clamp(min=1)

    def coefficients(pairs: slice, s_sum_c: torch.Tensor, s_sum_r: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-row d loss / d logp_t for the chosen and rejected rows of ``pairs``. (Without ``average_logps`` the
        scales are 1 and skipped: x·1 is x, bit for bit, and each tiny kernel costs a launch between the row
        kernels.)"""
        if average_logps:
            sc, sr = scale_of(counts[:P][pairs]), scale_of(counts[P:][pairs])
            m = (s_sum_c * sc - ref_c[pairs]) - (s_sum_r * sr - ref_r[pairs])
        else:
            m = (s_sum_c - ref_c[pairs]) - (s_sum_r - ref_r[pairs])
        d = (1.0 - lam) * beta * torch.sigmoid(-beta * m) / P
        if average_logps:
            return -d * sc - nll_coef[pairs], d * sr
        return -d - nll_coef[pairs], d

    def per_token(coef_rows: torch.Tensor, valid_rows: torch.Tensor) -> torch.Tensor:
        """Each row's coefficient on its scored tokens (r, T), 0 on the others, flattened."""
        return torch.where(valid_rows.view(-1, T), coef_rows.unsqueeze(1), 0.0).view(-1)

    ld = padded_cols(plan.max_cols)
    buf = torch.empty(plan.max_tokens * ld, dtype=cdt, device=dev)
    gh_acc = None
    if acc_h and plan.mode == "recompute" and len(plan.slabs) > 1:
        gh_acc = torch.empty(plan.max_tokens, H, dtype=torch.float32, device=dev)
    gh = torch.empty_like(h2) if need_h else None
    gw = torch.empty(weight.shape, dtype=weight.dtype, device=dev) if need_w else None
    gb = torch.zeros(V, dtype=acc, device=dev) if need_b else None
    tok_logp = torch.empty(N, dtype=acc, device=dev)  # every plan writes every token (its chunks cover [0, N))
    gh_started: set[int] = set()  # token chunks whose hidden gradient has been written once
    gw_started: set[int] = set()  # vocabulary slabs whose weight gradient has been written once

    def logits_view(n: int, v0: int, v1: int) -> torch.Tensor:
        # rows padded to a multiple of 8 columns: 16-byte aligned rows for cuBLAS and the row kernels
        return buf[: n * padded_cols(v1 - v0)].view(n, padded_cols(v1 - v0))[:, : v1 - v0]

    def logits_rows(a: int, b: int, out: torch.Tensor, v0: int, v1: int) -> None:
        if bc is None:
            torch.mm(h2[a:b], wc[v0:v1].t(), out=out)
        else:
            torch.addmm(bc[v0:v1], h2[a:b], wc[v0:v1].t(), out=out)

    def logits_into(ranges: tuple[tuple[int, int], ...], v0: int, v1: int) -> torch.Tensor:
        out = logits_view(sum(b - a for a, b in ranges), v0, v1)
        o = 0
        for a, b in ranges:  # a pair chunk is two blocks of rows (chosen, rejected) unless it holds all pairs
            logits_rows(a, b, out[o : o + b - a], v0, v1)
            o += b - a
        return out

    def backprop(ci: int, ranges: tuple[tuple[int, int], ...], dz: torch.Tensor, v0: int, v1: int) -> None:
        if need_w and len(ranges) == 2 and need_h and ranges[0][0] + dz.shape[0] <= P * T:
            # A pair chunk is two blocks of rows (chosen, rejected): two weight-gradient products would read
            # and write all of gw twice. Rows ≥ this chunk's first chosen row in gh's chosen half are not
            # written yet: gather the chunk's hidden rows there (no extra memory) for one product over both.
            (a1, b1), (a2, b2) = ranges
            s0 = a1
            scratch = gh[s0 : s0 + dz.shape[0]]
            scratch[: b1 - a1].copy_(h2[a1:b1])
            scratch[b1 - a1 :].copy_(h2[a2:b2])
            _accumulate_weight_grad(gw[v0:v1], dz, scratch, first=v0 not in gw_started)
            gw_started.add(v0)
            w_done = True
        else:
            w_done = False
        o = 0
        for a, b in ranges:
            d = dz[o : o + b - a]
            if need_h:
                if gh_acc is not None:
                    _addmm_f32_(gh_acc[: b - a], d, wc[v0:v1], first=ci not in gh_started)
                elif ci in gh_started:
                    gh[a:b].addmm_(d, wc[v0:v1])
                else:
                    torch.mm(d, wc[v0:v1], out=gh[a:b])
            if need_w and not w_done:
                _accumulate_weight_grad(gw[v0:v1], d, h2[a:b], first=v0 not in gw_started)
                gw_started.add(v0)
            o += b - a
        gh_started.add(ci)
        if need_b:
            gb[v0:v1].add_(dz.sum(0, dtype=acc))

    def pair_chunk_overlapped(ranges: tuple[tuple[int, int], ...], i0: int, i1: int, side: _SideStream) -> None:
        """One pair chunk as two blocks of rows, A (its chosen rows) and B (their rejected rows), with the row
        kernels of one block on a side stream beside a product of the other: stats(A) ‖ logits(B), then
        d-logits(B) ‖ grad_h(A) (+ grad_w(A) where the weight gradient takes one product per block). Same
        products as the plain path but for a chunk that holds all pairs, whose logits and hidden-gradient
        products are split in two; the same row kernels, coefficients and accumulation order."""
        n = sum(b - a for a, b in ranges)
        if len(ranges) == 2:
            blocks = ranges
        else:  # all pairs: one range, chosen rows then rejected rows
            ((a, b),) = ranges
            blocks = ((a, a + n // 2), (a + n // 2, b))
        (a1, b1), (a2, b2) = blocks
        z = logits_view(n, 0, V)
        za, zb = z[: b1 - a1], z[b1 - a1 :]
        # 1. Logits of A; A's statistics on the side stream while B's logits are computed; B's statistics.
        logits_rows(a1, b1, za, 0, V)
        side.fork()
        with side.on_side():
            lse_a, zl_a = row_stats(za, lab[a1:b1], 0)
        side.used_on_main(lse_a, zl_a)
        logits_rows(a2, b2, zb, 0, V)
        lse_b, zl_b = row_stats(zb, lab[a2:b2], 0)
        side.join()
        # 2. Log-probs, the pairs' coefficients.
        torch.where(valid[a1:b1], zl_a - lse_a, zero, out=tok_logp[a1:b1])
        torch.where(valid[a2:b2], zl_b - lse_b, zero, out=tok_logp[a2:b2])
        rows_c = tok_logp[a1:b1].view(-1, T).sum(1)
        rows_r = tok_logp[a2:b2].view(-1, T).sum(1)
        cc, cr = coefficients(slice(i0, i1), rows_c, rows_r)
        # 3. A's d-logits; B's on the side stream while A's hidden gradient (and weight gradient, when each block
        #    takes its own product) is computed; then the weight gradient and B's hidden gradient.
        row_grad_(za, lab[a1:b1], lse_a, per_token(cc, valid[a1:b1]), 0)
        coef_b = per_token(cr, valid[a2:b2])
        side.fork()
        with side.on_side():
            row_grad_(zb, lab[a2:b2], lse_b, coef_b, 0)
        torch.mm(za, wc, out=gh[a1:b1])
        # weight gradient: one product over the chunk (its hidden rows, when not contiguous, gathered into gh rows
        # from B's on, not yet written: B's own and later chunks' rejected rows), else one per block
        gather = need_w and len(ranges) == 2 and a2 + n <= N
        per_block = need_w and len(ranges) == 2 and not gather
        if per_block:
            _accumulate_weight_grad(gw, za, h2[a1:b1], first=0 not in gw_started)
            gw_started.add(0)
        side.join()
        if gather:
            scratch = gh[a2 : a2 + n]
            scratch[: b1 - a1].copy_(h2[a1:b1])
            scratch[b1 - a1 :].copy_(h2[a2:b2])
            _accumulate_weight_grad(gw, z, scratch, first=0 not in gw_started)
        elif per_block:
            _accumulate_weight_grad(gw, zb, h2[a2:b2])
        elif need_w:
            _accumulate_weight_grad(gw, z, h2[a1:b2], first=0 not in gw_started)
        gw_started.add(0)
        torch.mm(zb, wc, out=gh[a2:b2])
        if need_b:
            gb.add_(z.sum(0, dtype=acc))

    def take(x: torch.Tensor, ranges: tuple[tuple[int, int], ...]) -> torch.Tensor:
        return x[ranges[0][0] : ranges[0][1]] if len(ranges) == 1 else torch.cat([x[a:b] for a, b in ranges])

    if plan.mode == "pair":
        k = plan.max_tokens // (2 * T)
        zero = torch.zeros((), dtype=acc, device=dev)
        side = _SideStream(dev) if plan.overlap else None
        for ci, ranges in enumerate(plan.chunks):
            i0, i1 = ci * k, min(P, ci * k + k)
            if side is not None:
                pair_chunk_overlapped(ranges, i0, i1, side)
                continue
            z = logits_into(ranges, 0, V)
            lab_c = take(lab, ranges)
            valid_c = take(valid, ranges)
            lse, zl = row_stats(z, lab_c, 0)
            lp = zl - lse
            for (a, b), piece, ok in zip(ranges, _split(lp, ranges), _split(valid_c, ranges), strict=True):
                torch.where(ok, piece, zero, out=tok_logp[a:b])
            if any_grad:
                rows_c = tok_logp[i0 * T : i1 * T].view(-1, T).sum(1)
                rows_r = tok_logp[(P + i0) * T : (P + i1) * T].view(-1, T).sum(1)
                cc, cr = coefficients(slice(i0, i1), rows_c, rows_r)
                coef = per_token(torch.cat([cc, cr]), valid_c)
                row_grad_(z, lab_c, lse, coef, 0)
                backprop(ci, ranges, z, 0, V)
    elif plan.mode == "deferred":
        # d logp_t / d logits with a unit coefficient; every product is scaled by its row's coefficient
        # once the row's pair is scored: the hidden gradient in place at the end, the weight gradient from
        # per-row partial sums (a_c, a_r) pair by pair.
        unit = valid.to(acc)
        a_c = a_r = None
        if need_w:
            a_c = gw if P == 1 else torch.empty_like(gw)
            a_r = torch.empty_like(gw)
        gb_rows = torch.zeros(P2, V, dtype=acc, device=dev) if need_b else None
        started: set[int] = set()
        for ((a, b),) in plan.chunks:
            z = logits_into(((a, b),), 0, V)
            lse, zl = row_stats(z, lab[a:b], 0)
            tok_logp[a:b] = torch.where(valid[a:b], zl - lse, torch.zeros_like(lse))
            if not any_grad:
                continue
            row_grad_(z, lab[a:b], lse, unit[a:b], 0)
            if need_h:
                torch.mm(z, wc, out=gh[a:b])
            if need_b:
                for r in range(a // T, (b - 1) // T + 1):
                    r0, r1 = max(a, r * T), min(b, (r + 1) * T)
                    gb_rows[r].add_(z[r0 - a : r1 - a].sum(0, dtype=acc))
            if need_w:
                r = a // T  # with a weight gradient, chunks never cross rows
                target = a_c if r < P else a_r
                _accumulate_weight_grad(target, z, h2[a:b], first=id(target) not in started)
                started.add(id(target))
                if r >= P and b == (r + 1) * T:  # pair i = r − P is scored: fold its partial sums into gw
                    i = r - P
                    sc = tok_logp[i * T : (i + 1) * T].sum().view(1)
                    sr = tok_logp[r * T : (r + 1) * T].sum().view(1)
                    cc, cr = coefficients(slice(i, i + 1), sc, sr)
                    if P == 1:
                        gw.mul_(cc)
                    elif i == 0:
                        torch.mul(a_c, cc, out=gw)
                    else:
                        gw.addcmul_(a_c, cc)
                    gw.addcmul_(a_r, cr)
                    started.clear()
        if any_grad:
            rows = tok_logp.view(P2, T).sum(1)
            cc, cr = coefficients(slice(0, P), rows[:P], rows[P:])
            coef_row = torch.cat([cc, cr])
            if need_h:
                gh.view(P2, T, H).mul_(coef_row.view(P2, 1, 1))
            if need_b:
                gb.copy_((gb_rows * coef_row.unsqueeze(1)).sum(0))
        del a_c, a_r
    else:
        # Pass 1: log-sum-exp merged across vocabulary slabs, label logit from the slab that holds it.
        lse_all = torch.empty(N, dtype=acc, device=dev)
        zl_all = torch.zeros(N, dtype=acc, device=dev)
        for ranges in plan.chunks:
            (a, b) = ranges[0]
            for si, (v0, v1) in enumerate(plan.slabs):
                z = logits_into(ranges, v0, v1)
                lse, zl = row_stats(z, lab[a:b], v0)
                lse_all[a:b] = lse if si == 0 else torch.logaddexp(lse_all[a:b], lse)
                zl_all[a:b] += zl
        tok_logp = torch.where(valid, zl_all - lse_all, torch.zeros_like(lse_all))
        # Pass 2: the coefficients are known; recompute each slab of logits and turn it into d-logits.
        if any_grad:
            rows = tok_logp.view(P2, T).sum(1)
            cc, cr = coefficients(slice(0, P), rows[:P], rows[P:])
            coef_tok = per_token(torch.cat([cc, cr]), valid)
            # Token chunks outer, slabs inner: the chunk's hidden gradient is complete (and cast once) after
            # its last slab; each slab's weight gradient gets one product per token chunk. Pass 2 starts where
            # pass 1 ended (last chunk, last slab): that tile's logits are still in the buffer, one product fewer.
            last_tile = z
            for k, ci in enumerate(reversed(range(len(plan.chunks)))):
                ranges = plan.chunks[ci]
                (a, b) = ranges[0]
                slabs = plan.slabs if k else (plan.slabs[-1], *plan.slabs[:-1])
                for j, (v0, v1) in enumerate(slabs):
                    z = last_tile if k == 0 and j == 0 else logits_into(ranges, v0, v1)
                    row_grad_(z, lab[a:b], lse_all[a:b], coef_tok[a:b], v0)
                    backprop(ci, ranges, z, v0, v1)
                if gh_acc is not None:
                    gh[a:b].copy_(gh_acc[: b - a])

    # 3. The loss and metrics from the per-token log-probs.
    row_sum = tok_logp.view(P2, T).sum(1)
    logps = row_sum * scale_of(counts) if average_logps else row_sum
    chosen, rejected = logps[:P], logps[P:]
    nll = -(row_sum[:P] * mask).sum() / n_nll.clamp(min=1)
    m = (chosen - ref_c) - (rejected - ref_r)
    cl = torch.nn.functional.softplus(-beta * m).mean()
    loss = lam * nll + (1.0 - lam) * cl
    raw = {"chosen_logps": chosen, "rejected_logps": rejected, "nll": nll, "cl": cl}
    grads = (
        None if gh is None else gh.view(P2, T, H).to(hidden.dtype),
        gw,
        None if gb is None else gb.to(bias.dtype),
    )
    if bad_flag is not None:  # the label check of the top, read now that the work is queued
        bad_ready.synchronize()
        if bool(bad_flag):
            raise _bad_labels(V)
    return loss, raw, grads


OVERLAP_ENV = "CLTX_CLO_OVERLAP"
_SIDE_STREAMS: dict[int, torch.cuda.Stream] = {}


class _SideStream:
    """A second CUDA stream for the overlapped pair chunks. ``fork``: side work queued next waits for the main
    stream's work so far; ``join``: main waits for the side's. Every side segment of a chunk is joined before the
    chunk ends, so tensors the main stream allocated and freed later are never reused under a running side kernel;
    tensors allocated on the side and used on main are recorded on main. On other devices there is one stream:
    the same calls run in order (the CPU tests run this code path)."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        if self.cuda:
            index = torch.cuda.current_device() if device.index is None else device.index
            self.main = torch.cuda.current_stream(index)
            if index not in _SIDE_STREAMS:
                _SIDE_STREAMS[index] = torch.cuda.Stream(device=index)
            self.side = _SIDE_STREAMS[index]

    def fork(self) -> None:
        if self.cuda:
            self.side.wait_stream(self.main)

    def join(self) -> None:
        if self.cuda:
            self.main.wait_stream(self.side)

    def on_side(self):
        return torch.cuda.stream(self.side) if self.cuda else contextlib.nullcontext()

    def used_on_main(self, *tensors: torch.Tensor) -> None:
        if self.cuda:
            for t in tensors:
                t.record_stream(self.main)


def _bad_labels(V: int) -> Exception:
    return bad_arg("labels", "out of range", f"use token ids in [0, {V}) or -100 for unscored positions")


def _split(x: torch.Tensor, ranges: tuple[tuple[int, int], ...]) -> list[torch.Tensor]:
    out, o = [], 0
    for a, b in ranges:
        out.append(x[o : o + b - a])
        o += b - a
    return out


def metrics_from(raw: dict[str, torch.Tensor], ref_c: torch.Tensor, ref_r: torch.Tensor, beta: float) -> dict:
    """The public metrics dict (detached tensors) from the raw per-pair log-probs."""
    chosen = raw["chosen_logps"].detach()
    rejected = raw["rejected_logps"].detach()
    rc = beta * (chosen - ref_c.detach().to(chosen.dtype))
    rr = beta * (rejected - ref_r.detach().to(rejected.dtype))
    margins = rc - rr
    return {
        "chosen_logps": chosen,
        "rejected_logps": rejected,
        "rewards_chosen": rc,
        "rewards_rejected": rr,
        "margins": margins,
        "accuracy": (margins > 0).to(chosen.dtype).mean(),
        "nll": raw["nll"].detach(),
        "cl": raw["cl"].detach(),
    }


def _fused_with(hidden, weight, bias, labels, ref_c, ref_r, nll_mask, need, opts: dict, row_ops: dict):
    return fused_loss_and_grads(
        hidden,
        weight,
        bias,
        labels,
        ref_c,
        ref_r,
        nll_mask,
        need=need,
        row_stats=row_ops["stats"],
        row_grad_=row_ops["grad"],
        extra_bytes_per_logit=row_ops.get("extra_bytes", 0),
        path=row_ops.get("path", "reference"),
        **opts,
    )


class FusedCloFunction(torch.autograd.Function):
    """Loss and gradients in the forward (the loss is a scalar); backward scales the stored gradients."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, labels, ref_c, ref_r, nll_mask, opts, row_ops):
        need = (ctx.needs_input_grad[0], ctx.needs_input_grad[1], bias is not None and ctx.needs_input_grad[2])
        with torch.autocast(hidden.device.type, enabled=False):  # dtypes are chosen explicitly (opts["compute"])
            loss, raw, grads = _fused_with(hidden, weight, bias, labels, ref_c, ref_r, nll_mask, need, opts, row_ops)
        ctx.grads = grads
        ctx.set_materialize_grads(False)  # no zero-filled gradients for the non-differentiable metric outputs
        outs = (raw["chosen_logps"], raw["rejected_logps"], raw["nll"], raw["cl"])
        ctx.mark_non_differentiable(*outs)
        return (loss, *outs)

    @staticmethod
    def backward(ctx, grad_loss, *_unused):
        grads = ctx.grads
        if grads is None:
            raise RuntimeError(
                "clo_loss: backward ran twice on one graph (retain_graph is not supported: the gradients are "
                "computed in the forward and handed over once); call clo_loss again for each backward"
            )
        ctx.grads = None
        if torch.is_grad_enabled():
            # create_graph=True: the stored gradients are constants, so any gradient taken of them would silently
            # miss the second-order terms (e.g. a gradient penalty added to another loss).
            raise RuntimeError(
                "clo_loss: create_graph=True is not supported: its gradients are first-order only (computed in "
                "the forward), so differentiating them (gradient penalties, Hessian-vector products) would silently "
                "drop clo_loss's second-order terms; use an unfused log-softmax loss for those, or create_graph=False"
            )
        # Skip the scaling (a read and write of every gradient) for the usual loss.backward(); on a GPU the
        # check waits for the queued forward work but leaves the device busy.
        if bool(grad_loss == 1):
            return (*grads, None, None, None, None, None, None)
        out = []
        for g in grads:
            if g is None:
                out.append(None)
            else:
                out.append(g.mul_(grad_loss.to(g.dtype)))
        return (*out, None, None, None, None, None, None)


REFERENCE_ROW_OPS = {"stats": ref_row_stats, "grad": ref_row_grad_, "extra_bytes": 12, "path": "reference"}


def run_clo_loss(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    nll_mask: torch.Tensor,
    *,
    bias: torch.Tensor | None,
    beta: float,
    lam: float,
    average_logps: bool,
    memory_budget_gib: float | None,
    row_ops: dict,
    mode: str | None = None,
    logit_scale: float = 1.0,
    logit_softcap: float | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Validate, run the fused Function with ``row_ops`` and build the metrics (shared by both paths)."""
    validate(
        hidden,
        weight,
        labels,
        ref_chosen_logps,
        ref_rejected_logps,
        nll_mask,
        bias,
        beta,
        lam,
        memory_budget_gib,
        logit_scale,
        logit_softcap,
    )
    opts = {
        "logit_scale": float(logit_scale),
        "logit_softcap": None if logit_softcap is None else float(logit_softcap),
        "compute": compute_dtype(hidden, weight),
        "beta": float(beta),
        "lam": float(lam),
        "average_logps": bool(average_logps),
        "memory_budget_gib": memory_budget_gib,
        "mode": mode,
    }
    args = (hidden, weight, bias, labels, ref_chosen_logps, ref_rejected_logps, nll_mask)
    wants = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (hidden, weight, bias))
    if wants:
        loss, chosen, rejected, nll, cl = FusedCloFunction.apply(*args, opts, row_ops)
    else:
        with torch.autocast(hidden.device.type, enabled=False):
            loss, raw, _ = _fused_with(*args, (False, False, False), opts, row_ops)
        chosen, rejected, nll, cl = raw["chosen_logps"], raw["rejected_logps"], raw["nll"], raw["cl"]
    raw = {"chosen_logps": chosen, "rejected_logps": rejected, "nll": nll, "cl": cl}
    return loss, metrics_from(raw, ref_chosen_logps, ref_rejected_logps, beta)


def clo_loss_reference(
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
    """The pure-PyTorch CLO loss, chunked over tokens under ``memory_budget_gib`` (see the module docstring).

    Args and returns as :func:`cltx.kernels.clo_loss`; ``mode`` forces ``"pair"``, ``"deferred"`` or ``"recompute"``.
    """
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
        logit_scale=logit_scale,
        logit_softcap=logit_softcap,
    )
