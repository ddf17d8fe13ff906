"""select_neighbors: cosine top-k_max → sparsemax, against a brute-force float64 implementation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cltx.errors import CltxError
from cltx.kernels import select_neighbors
from cltx.kernels.neighbors import sparsemax_sorted


def brute_force(query, basis, k_max, k_min, temperature, exclude=None):
    """Per query, in float64 numpy: all cosines, full sort, sparsemax by its textbook definition."""
    q = query.double().numpy()
    b = basis.double().numpy()
    q = q / np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-12)
    b = b / np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-12)
    n = q.shape[0]
    idx = np.full((n, k_max), -1, dtype=np.int64)
    w = np.zeros((n, k_max))
    for t in range(n):
        s = b @ q[t]
        order = [j for j in np.argsort(-s, kind="stable") if exclude is None or j != exclude[t]][:k_max]
        z = s[order] / temperature
        # Sparsemax = Euclidean projection onto the simplex: p = max(z − τ, 0) with Σp = 1.
        # Solve for τ by bisection (independent of the sort-and-cumsum formula under test).
        lo, hi = z.max() - 1.0, z.max()
        for _ in range(200):
            mid = (lo + hi) / 2
            if np.maximum(z - mid, 0).sum() > 1:
                lo = mid
            else:
                hi = mid
        p = np.maximum(z - (lo + hi) / 2, 0)
        keep = max(int((p > 1e-12).sum()), min(k_min, len(order)))
        idx[t, :keep] = np.array(order[:keep])
        w[t, :keep] = p[:keep]
    return idx, w


def data(n, m, d, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g), torch.randn(m, d, generator=g)


@pytest.mark.parametrize("temperature", [1.0, 0.1, 0.03])
@pytest.mark.parametrize("k_max", [1, 7, 32])
def test_matches_brute_force(temperature, k_max):
    q, b = data(29, 113, 19, seed=k_max)
    idx, w = select_neighbors(q, b, k_max=k_max, temperature=temperature, chunk_size=8)
    ref_idx, ref_w = brute_force(q, b, k_max, 1, temperature)
    assert idx.dtype == torch.int64 and w.dtype == torch.float32
    assert np.array_equal(idx.numpy(), ref_idx)
    np.testing.assert_allclose(w.numpy(), ref_w, atol=1e-5)


def test_weights_are_a_distribution_and_padding_is_clean():
    q, b = data(40, 200, 16, seed=1)
    idx, w = select_neighbors(q, b, k_max=24, temperature=0.1)
    torch.testing.assert_close(w.sum(1), torch.ones(40), rtol=0, atol=1e-5)
    assert torch.all(w >= 0)
    assert torch.all(w[idx < 0] == 0)
    # Kept neighbours first, then -1 padding: no -1 before a valid index.
    kept = idx >= 0
    assert torch.all(kept[:, :-1] | ~kept[:, 1:])
    # Sorted by similarity, descending.
    bn = torch.nn.functional.normalize(b, dim=1)
    qn = torch.nn.functional.normalize(q, dim=1)
    sims = torch.where(kept, (qn[:, None, :] * bn[idx.clamp(min=0)]).sum(-1), torch.tensor(-9.0))
    assert torch.all(sims[:, :-1] >= sims[:, 1:] - 1e-6)


@pytest.mark.parametrize("temperature", [1e-12, 1e-20, 1e-40, 1e-300])
def test_tiny_temperature_keeps_the_best_neighbour_with_weight_one(temperature):
    """At 1e-20 the weights all vanished, at 1e-40 they were NaN (similarities / temperature overflowed)."""
    q, b = data(11, 57, 9, seed=5)
    idx, w = select_neighbors(q, b, k_max=6, k_min=3, temperature=temperature)
    ref_idx, _ = brute_force(q, b, 6, 3, 1.0)
    assert torch.isfinite(w).all()
    assert np.array_equal(idx[:, :3].numpy(), ref_idx[:, :3]) and torch.all(idx[:, 3:] == -1)
    assert torch.all(w[:, 0] == 1.0) and torch.all(w[:, 1:] == 0.0)


def test_k_min_is_honoured():
    q, b = data(30, 150, 12, seed=2)
    idx, w = select_neighbors(q, b, k_max=16, k_min=5, temperature=0.001)  # support would be 1
    assert torch.all((idx >= 0).sum(1) >= 5)
    assert torch.all((w > 0).sum(1) == 1)  # the extras carry weight 0
    torch.testing.assert_close(w.sum(1), torch.ones(30))
    ref_idx, _ = brute_force(q, b, 16, 5, 0.001)
    assert np.array_equal(idx.numpy(), ref_idx)


def test_exclude_and_small_basis():
    q, b = data(6, 5, 8, seed=3)
    idx, w = select_neighbors(b, b, k_max=8, k_min=8, exclude=torch.arange(5))
    assert torch.all(idx[:, 4:] == -1)  # only 4 candidates remain per query
    assert all(i not in idx[i].tolist() for i in range(5))
    ref_idx, ref_w = brute_force(b, b, 8, 8, 1.0, exclude=list(range(5)))
    assert np.array_equal(idx.numpy(), ref_idx)
    np.testing.assert_allclose(w.numpy(), ref_w, atol=1e-5)


def test_sparsemax_sorted_closed_form():
    z = torch.tensor([[2.0, 1.5, 0.1, -1.0], [0.3, 0.3, 0.3, 0.3]])
    p, support = sparsemax_sorted(z)
    torch.testing.assert_close(p, torch.tensor([[0.75, 0.25, 0.0, 0.0], [0.25, 0.25, 0.25, 0.25]]))
    assert support.tolist() == [2, 4]


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"k_max": 0}, "k_max"),
        ({"k_min": 0}, "k_min"),
        ({"k_min": 9, "k_max": 8}, "k_min"),
        ({"temperature": 0.0}, "temperature"),
        ({"chunk_size": 0}, "chunk_size"),
        ({"k_max": True}, "k_max=True"),  # was a TypeError from topk
        # exclude: >= m was an IndexError from inside; < -1 and bool were taken silently
        ({"exclude": torch.full((3,), 10)}, r"exclude='values in \[10, 10\]'"),
        ({"exclude": torch.full((3,), -2)}, r"exclude='values in \[-2, -2\]'"),
        ({"exclude": torch.ones(3, dtype=torch.bool)}, "exclude=torch.bool"),
    ],
)
def test_bad_arguments(kwargs, match):
    q, b = data(3, 10, 4)
    with pytest.raises(CltxError, match=match):
        select_neighbors(q, b, **kwargs)
    with pytest.raises(CltxError, match="basis.shape"):
        select_neighbors(q, torch.randn(10, 5))


@pytest.mark.parametrize("which", ["query", "basis"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_vectors_are_an_error(which, bad):
    """A NaN basis row sorted above every cosine in topk: it was picked first and the weights summed to
    more than 1; a NaN query silently got no neighbour."""
    q, b = data(3, 10, 4, seed=7)
    t = q if which == "query" else b
    t[1, 2] = bad
    with pytest.raises(CltxError, match=rf"{which}='NaN or inf in row 1'"):
        select_neighbors(q, b, k_max=4)


@pytest.mark.gpu
def test_gpu_matches_cpu():
    q, b = data(500, 3000, 64, seed=4)
    idx, w = select_neighbors(q.cuda(), b.cuda(), k_max=32, temperature=0.1)
    ref_idx, ref_w = select_neighbors(q, b, k_max=32, temperature=0.1)
    assert idx.is_cuda and w.is_cuda
    same = (idx.cpu() == ref_idx).float().mean().item()
    assert same > 0.99  # fp32 rounding may swap near-ties
    torch.testing.assert_close(w.cpu().sum(1), ref_w.sum(1))


def test_numpy_integers_are_integers():
    """k_max=np.int64(4) (e.g. from an array of settings) was refused as 'pass a positive integer'."""
    import numpy as np

    q, b = data(5, 12, 8, seed=3)
    idx, w = select_neighbors(q, b, k_max=np.int64(4), k_min=np.int32(2))
    ref_idx, ref_w = select_neighbors(q, b, k_max=4, k_min=2)
    assert torch.equal(idx, ref_idx) and torch.equal(w, ref_w)
    with pytest.raises(CltxError, match="k_max"):
        select_neighbors(q, b, k_max=True)


def test_no_graph_is_built_for_inputs_that_require_grad():
    """select_neighbors runs under no_grad: embeddings straight from a model (requires_grad) build no graph."""
    q, b = data(5, 12, 8, seed=5)
    idx, w = select_neighbors(q.requires_grad_(), b.requires_grad_(), k_max=4)
    assert not w.requires_grad and w.grad_fn is None
