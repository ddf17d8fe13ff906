"""Initialisation rules for the new tokens' embedding rows: SALT and its peers.

Every rule works on the same inputs, so the comparison is fair: one token matching, one set of
SALT neighbours (sparsemax over cosine similarity), one similarity space. Rows are produced for the
LLM's *targets* concatenated along the feature axis (``Y``: input embeddings, then the untied output
embeddings when the model has them), so one fit, one weighted mean, one draw serves every matrix.

* ``salt``: e_t = x_t · pinv(X_N(t)) · Y_N(t) (:func:`cltx.kernels.salt_fit`), x the PLM embeddings.
* ``focus``: the sparsemax-weighted mean of the neighbours' LLM rows (FOCUS-style).
* ``wechsel``: softmax(similarity / 0.1) over the top-10 most similar overlap tokens (WECHSEL-style).
* ``subword-mean``: the mean of the LLM rows of the old tokenizer's pieces of the token's surface.
* ``mean``: the mean LLM row.
* ``random``: a draw from a normal with the LLM rows' mean and covariance (per target matrix).
"""

from __future__ import annotations

import math

import torch

METHODS = ("salt", "focus", "wechsel", "subword-mean", "mean", "random")


def sparse_combine(index: torch.Tensor, weight: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Rows ``Σ_j weight[t, j] · y[index[t, j]]`` as one sparse product (each row of ``y`` read once).

    Args:
        index: (n, k) int64 row indices into ``y``; ``-1`` marks an unused slot.
        weight: (n, k) float weights (unused slots ignored).
        y: (m, D) float32.

    Returns:
        (n, D) float32; a row with no valid slot is zero.
    """
    n = index.shape[0]
    valid = index >= 0
    rows = torch.arange(n, device=index.device).unsqueeze(1).expand_as(index)[valid]
    cols = index[valid]
    vals = weight[valid].to(torch.float32)
    if y.device.type == "cpu" or n == 0:
        out = torch.zeros(n, y.shape[1], dtype=torch.float32, device=y.device)
        out.index_add_(0, rows.to(y.device), y[cols.to(y.device)] * vals.to(y.device).unsqueeze(1))
        return out
    mat = torch.sparse_coo_tensor(torch.stack([rows, cols]), vals, (n, y.shape[0]), device=y.device).coalesce()
    return torch.sparse.mm(mat, y.to(torch.float32))


def topk_cosine(
    query: torch.Tensor, basis: torch.Tensor, k: int, *, chunk_size: int = 4096
) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` basis rows most cosine-similar to each query row (chunked over queries).

    Returns:
        ``(indices (n, k) int64, similarities (n, k) float32)``, most similar first.
    """
    k = min(k, basis.shape[0])
    bn = torch.nn.functional.normalize(basis.to(torch.float32), dim=1)
    idx, sim = [], []
    for s in range(0, query.shape[0], chunk_size):
        q = torch.nn.functional.normalize(query[s : s + chunk_size].to(torch.float32), dim=1)
        v, i = (q @ bn.T).topk(k, dim=1)
        idx.append(i)
        sim.append(v)
    if not idx:
        return (
            torch.empty(0, k, dtype=torch.int64, device=query.device),
            torch.empty(0, k, dtype=torch.float32, device=query.device),
        )
    return torch.cat(idx), torch.cat(sim)


def wechsel_weights(similarity: torch.Tensor, temperature: float = 0.1) -> torch.Tensor:
    """WECHSEL's weights: softmax over the top-k similarities divided by ``temperature``."""
    return torch.softmax(similarity / temperature, dim=1)


class Gaussian:
    """Mean and covariance of the LLM's rows, per target matrix, for seeded random draws.

    Args:
        y: (V, D) float32 LLM rows (the targets concatenated).
        blocks: widths of the concatenated matrices (they are drawn independently).
    """

    def __init__(self, y: torch.Tensor, blocks: list[int]):
        self.blocks = blocks
        self.mean: list[torch.Tensor] = []
        self.factor: list[torch.Tensor] = []
        start = 0
        for width in blocks:
            part = y[:, start : start + width].to(torch.float32)
            mu = part.mean(0)
            centred = part - mu
            cov = (centred.T @ centred).double().cpu() / max(part.shape[0] - 1, 1)
            evals, evecs = torch.linalg.eigh(cov)
            # cov = F Fᵀ with F = V·sqrt(λ⁺): exact for a singular covariance too.
            self.factor.append(evecs * evals.clamp(min=0).sqrt())
            self.mean.append(mu.double().cpu())
            start += width

    def draw(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """(n, D) float32 draws (CPU), deterministic for a seeded ``generator``."""
        parts = []
        for mu, fac in zip(self.mean, self.factor, strict=True):
            z = torch.randn(n, fac.shape[1], generator=generator, dtype=torch.float64)
            parts.append((mu + z @ fac.T).to(torch.float32))
        return torch.cat(parts, dim=1) if parts else torch.empty(n, 0)

    def mean_row(self) -> torch.Tensor:
        return torch.cat(self.mean).to(torch.float32)


def subword_pieces(llm_tokenizer, texts: list[str], word_start: list[bool], llm_family: str) -> list[list[int]]:
    """The old tokenizer's pieces of each new token's surface (a word start gets its leading space).

    SentencePiece tokenizers add the word-start marker themselves, so a continuation has it removed.
    """
    inputs = [(" " + t if ws and llm_family != "sentencepiece" else t) for t, ws in zip(texts, word_start, strict=True)]
    if not inputs:
        return []
    enc = llm_tokenizer(inputs, add_special_tokens=False)["input_ids"]
    if llm_family == "sentencepiece":
        marker = llm_tokenizer.convert_tokens_to_ids("\u2581")
        enc = [
            ids[1:] if (not ws and len(ids) > 1 and ids[0] == marker) else ids
            for ids, ws in zip(enc, word_start, strict=True)
        ]
    special = set(llm_tokenizer.all_special_ids)
    return [[i for i in ids if i not in special] for ids in enc]


def mean_of_pieces(pieces: list[list[int]], y: torch.Tensor) -> torch.Tensor:
    """(n, D) mean of ``y`` over each list of row ids (zero rows for empty lists)."""
    k = max((len(p) for p in pieces), default=1) or 1
    idx = torch.full((len(pieces), k), -1, dtype=torch.int64)
    w = torch.zeros(len(pieces), k)
    for r, p in enumerate(pieces):
        if p:
            idx[r, : len(p)] = torch.tensor(p)
            w[r, : len(p)] = 1.0 / len(p)
    return sparse_combine(idx.to(y.device), w.to(y.device), y)


def relative_error(pred: torch.Tensor, true: torch.Tensor) -> torch.Tensor:
    """Per-row ‖pred − true‖ / ‖true‖."""
    return (pred - true).norm(dim=1) / true.norm(dim=1).clamp(min=1e-12)


def cosine(pred: torch.Tensor, true: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.cosine_similarity(pred, true, dim=1)


def stats(values: torch.Tensor) -> dict[str, float]:
    """Mean, median, min, max of a 1-D tensor (NaN-free floats for JSON)."""
    if values.numel() == 0:
        return {"count": 0}
    v = values.double().cpu()
    out = {
        "count": int(v.numel()),
        "mean": float(v.mean()),
        "median": float(v.median()),
        "min": float(v.min()),
        "max": float(v.max()),
    }
    return {k: (x if not isinstance(x, float) or math.isfinite(x) else None) for k, x in out.items()}
