"""firm_weights against two independent QP solvers: Clarabel (interior point) and exhaustive
active-set enumeration (exact for small M), on the cases that break naive MGDA code."""

from __future__ import annotations

import itertools

import clarabel
import numpy as np
import pytest
import scipy.sparse as sp
import torch

from firm_ray.core import effective_beta, firm_objective, firm_weights, kkt_residual
from firm_ray.core.solver import _augmented_gram, _wolfe_min_norm_point

TOL = 1e-6


def _normalized(gram: np.ndarray, beta: float) -> tuple[np.ndarray, float]:
    """The same problem divided by its scale, so the reference solvers see O(1) numbers."""
    scale = max(float(np.max(np.abs(np.diag(gram)))), beta, 1e-300)
    return gram / scale, beta / scale


def clarabel_solve(gram: np.ndarray, beta: float, pref: np.ndarray) -> np.ndarray:
    q_mat, beta_n = _normalized(gram, beta)
    m = len(pref)
    p_mat = sp.csc_matrix(np.triu(q_mat + beta_n * np.eye(m)))
    q = -beta_n * pref
    a_mat = sp.csc_matrix(np.vstack([np.ones((1, m)), -np.eye(m)]))
    b = np.concatenate([[1.0], np.zeros(m)])
    settings = clarabel.DefaultSettings()
    settings.verbose = False
    settings.tol_gap_abs = 1e-12
    settings.tol_gap_rel = 1e-12
    settings.tol_feas = 1e-12
    settings.max_iter = 500
    cones = [clarabel.ZeroConeT(1), clarabel.NonnegativeConeT(m)]
    solution = clarabel.DefaultSolver(p_mat, q, a_mat, b, cones, settings).solve()
    x = np.clip(np.asarray(solution.x), 0, None)
    return x / x.sum()


def enumerate_solve(gram: np.ndarray, beta: float, pref: np.ndarray) -> np.ndarray:
    """Exact: try every support, solve its equality-constrained QP, keep the best feasible."""
    q_mat, beta_n = _normalized(gram, beta)
    m = len(pref)
    h = q_mat + beta_n * np.eye(m)
    best, best_val = None, np.inf
    for size in range(1, m + 1):
        for support in itertools.combinations(range(m), size):
            s = list(support)
            kkt = np.zeros((size + 1, size + 1))
            kkt[:size, :size] = h[np.ix_(s, s)]
            kkt[:size, size] = 1
            kkt[size, :size] = 1
            rhs = np.concatenate([beta_n * pref[s], [1.0]])
            sol = np.linalg.lstsq(kkt, rhs, rcond=None)[0]
            x = np.zeros(m)
            x[s] = sol[:size]
            if (x < -1e-12).any() or abs(x.sum() - 1) > 1e-9:
                continue
            x = np.clip(x, 0, None)
            val = 0.5 * x @ h @ x - beta_n * pref @ x
            if val < best_val - 1e-15:
                best, best_val = x, val
    assert best is not None
    return best


def assert_optimal(gram: np.ndarray, beta: float, pref: np.ndarray | None) -> np.ndarray:
    m = gram.shape[0]
    p = np.full(m, 1 / m) if pref is None else pref
    lam = firm_weights(torch.tensor(gram), beta, None if pref is None else torch.tensor(pref))
    lam_np = lam.numpy()
    assert np.isfinite(lam_np).all()
    assert (lam_np >= 0).all() and abs(lam_np.sum() - 1) < 1e-12
    assert kkt_residual(torch.tensor(gram), beta, lam, torch.tensor(p)) < TOL
    references = [clarabel_solve(gram, beta, p)]
    if m <= 8:
        references.append(enumerate_solve(gram, beta, p))
    scale = max(float(np.max(np.abs(np.diag(_augmented_gram(gram, beta, p))))), 1e-300)
    ours = firm_objective(torch.tensor(gram), beta, lam, torch.tensor(p))
    for ref in references:
        theirs = firm_objective(torch.tensor(gram), beta, torch.tensor(ref), torch.tensor(p))
        gap = (ours - theirs) / max(abs(theirs), scale)
        assert gap < TOL, (ours, theirs, lam_np, ref)
    return lam_np


def random_gram(rng: np.random.Generator, m: int, dim: int, scale: float) -> np.ndarray:
    g = rng.standard_normal((dim, m)) * scale
    return g.T @ g


@pytest.mark.parametrize("m", [2, 3, 4, 8, 16])
@pytest.mark.parametrize("exponent", [-12, -6, 0, 6, 12])
def test_random_psd_all_scales(m: int, exponent: int) -> None:
    rng = np.random.default_rng(m * 100 + exponent + 50)
    scale = 10.0**exponent
    for dim in (1, max(1, m - 1), 3 * m):  # rank 1, rank-deficient, full rank
        gram = random_gram(rng, m, dim, scale)
        for rel_beta in (0.0, 1e-3, 0.1, 1.0, 10.0):
            beta = rel_beta * scale**2
            pref = rng.dirichlet(np.ones(m))
            assert_optimal(gram, beta, pref)
            assert_optimal(gram, beta, None)


@pytest.mark.parametrize("m", [2, 3, 5])
def test_identical_gradients(m: int) -> None:
    g = np.random.default_rng(0).standard_normal(7)
    gram = np.outer(np.ones(m), np.ones(m)) * (g @ g)
    for beta in (0.0, 0.5, 100.0):
        lam = assert_optimal(gram, beta, None)
        if beta > 0:  # G^T G adds the same to every lambda: only the pull toward p decides
            assert np.allclose(lam, 1 / m, atol=1e-9)


def test_exactly_opposed_gradients() -> None:
    g = np.array([1.0, -2.0, 3.0])
    grads = np.stack([g, -g], axis=1)
    lam = assert_optimal(grads.T @ grads, 0.0, None)
    assert np.allclose(lam, [0.5, 0.5])  # min-norm point is the origin
    three = np.stack([g, -g, np.array([0.5, 0.5, 0.0])], axis=1)
    assert_optimal(three.T @ three, 0.0, None)
    assert_optimal(three.T @ three, 0.3, np.array([0.6, 0.2, 0.2]))


@pytest.mark.parametrize("m", [2, 3, 6])
def test_preference_at_vertex(m: int) -> None:
    rng = np.random.default_rng(m)
    gram = random_gram(rng, m, 4, 1.0)
    for vertex in range(m):
        pref = np.eye(m)[vertex]
        for beta in (0.0, 0.01, 1.0, 1e3):
            assert_optimal(gram, beta, pref)
        lam = firm_weights(torch.tensor(gram), 1e12, torch.tensor(pref)).numpy()
        assert np.allclose(lam, pref, atol=1e-6)


@pytest.mark.parametrize("m", [2, 4, 16])
def test_beta_zero_is_min_norm_mgda(m: int) -> None:
    rng = np.random.default_rng(7 + m)
    grads = rng.standard_normal((20, m))
    lam = firm_weights(torch.tensor(grads.T @ grads), 0.0).numpy()
    point = grads @ lam
    # Min-norm point of the convex hull: no vertex lies strictly on the near side of it.
    assert np.min(grads.T @ point) >= point @ point - 1e-9 * np.max(np.sum(grads**2, axis=0))


@pytest.mark.parametrize("m", [2, 3, 16])
def test_huge_beta_returns_preference(m: int) -> None:
    rng = np.random.default_rng(3)
    gram = random_gram(rng, m, 5, 1.0)
    pref = rng.dirichlet(np.ones(m))
    lam = firm_weights(torch.tensor(gram), 1e14, torch.tensor(pref)).numpy()
    assert np.allclose(lam, pref, atol=1e-6)


def test_closed_form_matches_general_solver() -> None:
    rng = np.random.default_rng(11)
    for _ in range(200):
        gram = random_gram(rng, 2, int(rng.integers(1, 5)), 10.0 ** rng.uniform(-6, 6))
        beta = float(rng.choice([0.0, 10.0 ** rng.uniform(-3, 3)])) * gram[0, 0]
        pref = rng.dirichlet(np.ones(2))
        closed = firm_weights(torch.tensor(gram), beta, torch.tensor(pref)).numpy()
        general = _wolfe_min_norm_point(_augmented_gram(gram, beta, pref), pref)
        assert np.allclose(closed, general, atol=1e-7)
        # The design document's formula, written out independently.
        a, b, c = gram[0, 0], gram[1, 1], gram[0, 1]
        denom = a + b - 2 * c + 2 * beta
        if denom > 1e-12 * max(a, b, beta):
            expect = np.clip((b - c + 2 * beta * pref[0]) / denom, 0, 1)
            assert abs(closed[0] - expect) < 1e-9


def test_scale_invariance_and_dtype() -> None:
    rng = np.random.default_rng(5)
    gram = random_gram(rng, 4, 6, 1.0)
    base = firm_weights(torch.tensor(gram), 0.2)
    for factor in (1e-12, 1e12):
        scaled = firm_weights(torch.tensor(gram * factor), 0.2 * factor)
        assert torch.allclose(base, scaled, atol=1e-9)
    assert firm_weights(torch.tensor(gram, dtype=torch.float32), 0.2).dtype == torch.float32


def test_zero_gradients_and_single_objective() -> None:
    assert torch.allclose(
        firm_weights(torch.zeros(3, 3, dtype=torch.float64), 0.0), 1 / torch.ones(3).mul(3).double()
    )
    assert firm_weights(torch.ones(1, 1), 0.5).tolist() == [1.0]


def test_finite_extremes_never_nan() -> None:
    big = np.array([[1e300, -1e300], [-1e300, 1e300]])
    for gram in (big, np.array([[1e-300, 0.0], [0.0, 5e-324]]), np.full((3, 3), 1e300)):
        for beta in (0.0, 1e300):
            lam = firm_weights(torch.tensor(gram), beta)
            assert torch.isfinite(lam).all() and abs(float(lam.sum()) - 1) < 1e-12


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_input_raises(bad: float) -> None:
    gram = torch.eye(3, dtype=torch.float64)
    gram[0, 1] = bad
    with pytest.raises(ValueError, match="NaN or inf"):
        firm_weights(gram, 0.1)
    with pytest.raises(ValueError, match="beta"):
        firm_weights(torch.eye(2), bad)


def test_invalid_arguments() -> None:
    with pytest.raises(ValueError, match="beta"):
        firm_weights(torch.eye(2), -0.1)
    with pytest.raises(ValueError, match="length"):
        firm_weights(torch.eye(2), 0.1, torch.tensor([0.2, 0.3, 0.5]))
    with pytest.raises(ValueError, match="probability"):
        firm_weights(torch.eye(2), 0.1, torch.tensor([0.7, 0.7]))
    with pytest.raises(ValueError, match="probability"):
        firm_weights(torch.eye(2), 0.1, torch.tensor([1.5, -0.5]))
    with pytest.raises(ValueError, match="square"):
        firm_weights(torch.ones(2, 3), 0.1)


def test_effective_beta() -> None:
    gram = torch.diag(torch.tensor([4.0, 16.0]))
    assert effective_beta(gram, 0.5, "absolute") == 0.5
    assert effective_beta(gram, 0.5, "relative") == pytest.approx(5.0)
    with pytest.raises(ValueError):
        effective_beta(gram, 0.5, "bogus")  # type: ignore[arg-type]
