"""Pareto mask/front and hypervolume, cross-checked against brute-force references written here."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from firm_ray.core.pareto import hypervolume, pareto_front, pareto_mask


def sweep_line_hv_2d(points: np.ndarray, ref: np.ndarray) -> float:
    """Independent 2-D hypervolume for maximization: sweep x from high to low, add strips."""
    pts = [p for p in points if p[0] > ref[0] and p[1] > ref[1]]
    pts.sort(key=lambda p: -p[0])
    area, best_y = 0.0, ref[1]
    for i, (x, y) in enumerate(pts):
        best_y = max(best_y, y)
        next_x = pts[i + 1][0] if i + 1 < len(pts) else ref[0]
        area += (x - next_x) * (best_y - ref[1])
    return area


def grid_hv(points: np.ndarray, ref: np.ndarray) -> float:
    """Exact brute force for maximization in any dimension: split space on every coordinate of
    the points and reference, and add the volume of each grid cell whose centre is dominated."""
    axes = [np.unique(np.concatenate([points[:, d], [ref[d]]])) for d in range(len(ref))]
    total = 0.0
    for idx in itertools.product(*(range(len(a) - 1) for a in axes)):
        lo = np.array([axes[d][i] for d, i in enumerate(idx)])
        hi = np.array([axes[d][i + 1] for d, i in enumerate(idx)])
        centre = (lo + hi) / 2
        if (centre > ref).all() and (points >= centre).all(axis=1).any():
            total += float(np.prod(hi - lo))
    return total


POINTS = np.array(
    [
        [1.0, 5.0],  # non-dominated
        [2.0, 4.0],  # non-dominated
        [2.0, 4.0],  # duplicate of a non-dominated point
        [1.5, 3.0],  # dominated by (2, 4)
        [4.0, 1.0],  # non-dominated
        [4.0, 0.5],  # weakly dominated by (4, 1)
        [0.5, 0.5],  # dominated by everything (but non-dominated when minimizing)
    ]
)


def test_pareto_mask_maximize_keeps_duplicates():
    mask = pareto_mask(POINTS)
    assert mask.dtype == bool
    assert mask.tolist() == [True, True, True, False, True, False, False]


def test_pareto_mask_minimize():
    mask = pareto_mask(POINTS, maximize=False)
    assert mask.tolist() == [False, False, False, False, False, False, True]
    pts = np.array([[1.0, 2.0], [2.0, 1.0], [2.0, 2.0], [1.0, 2.0], [3.0, 0.5]])
    assert pareto_mask(pts, maximize=False).tolist() == [True, True, False, True, True]


def test_pareto_mask_matches_brute_force():
    rng = np.random.default_rng(0)
    pts = rng.integers(0, 5, size=(60, 3)).astype(float)  # many ties and duplicates
    for maximize in (True, False):
        s = pts if maximize else -pts
        expected = [
            not any((s[j] >= s[i]).all() and (s[j] > s[i]).any() for j in range(len(s)))
            for i in range(len(s))
        ]
        assert pareto_mask(pts, maximize=maximize).tolist() == expected


def test_pareto_mask_edge_cases():
    assert pareto_mask(np.zeros((0, 2))).shape == (0,)
    assert pareto_mask([]).shape == (0,)
    assert pareto_mask([[1.0, 2.0]]).tolist() == [True]
    assert pareto_mask([[1.0], [3.0], [3.0], [2.0]]).tolist() == [False, True, True, False]


@pytest.mark.parametrize("bad", [[1.0, 2.0], [[[1.0, 2.0]]], [[1.0, float("nan")]], [[]]])
def test_pareto_mask_rejects_bad_input(bad):
    with pytest.raises(ValueError):
        pareto_mask(bad)


def test_pareto_front_sorted_by_first_objective():
    front = pareto_front(POINTS)
    assert front.tolist() == [[1.0, 5.0], [2.0, 4.0], [2.0, 4.0], [4.0, 1.0]]
    assert pareto_front(POINTS, maximize=False).tolist() == [[0.5, 0.5]]
    assert pareto_front(np.zeros((0, 3))).shape == (0, 3)


def test_hypervolume_single_point_is_product_of_gains():
    assert hypervolume([[3.0, 2.0, 5.0]], [1.0, 0.0, 4.0]) == pytest.approx(2.0 * 2.0 * 1.0)
    assert hypervolume([[0.0, 1.0]], [2.0, 4.0], maximize=False) == pytest.approx(2.0 * 3.0)


def test_hypervolume_2d_staircase_by_hand():
    pts = [[1.0, 3.0], [2.0, 2.0], [3.0, 1.0]]
    # union of [0,1]x[0,3], [0,2]x[0,2], [0,3]x[0,1] = 3 + 2 + 1
    assert hypervolume(pts, [0.0, 0.0]) == pytest.approx(6.0)
    # dominated and duplicate points add nothing
    assert hypervolume([*pts, [1.0, 1.0], [2.0, 2.0]], [0.0, 0.0]) == pytest.approx(6.0)
    # moocore's own example, for maximization from reference 0
    dat = [[5, 5], [4, 6], [2, 7], [7, 4]]
    assert hypervolume(dat, [0, 0]) == pytest.approx(39.0)
    assert hypervolume(dat, [10, 10], maximize=False) == pytest.approx(38.0)


def test_hypervolume_of_points_not_dominating_reference_is_zero():
    ref = [1.0, 1.0]
    assert hypervolume([[0.5, 3.0], [3.0, 1.0], [1.0, 1.0]], ref) == 0.0
    assert hypervolume(np.zeros((0, 2)), ref) == 0.0
    assert hypervolume([], ref) == 0.0
    # a point failing in one objective is filtered, the others still count
    assert hypervolume([[0.5, 3.0], [2.0, 3.0]], ref) == pytest.approx(2.0)
    assert hypervolume([[2.0, 2.0]], ref, maximize=False) == 0.0


def test_hypervolume_2d_matches_sweep_line():
    rng = np.random.default_rng(1)
    for trial in range(20):
        pts = rng.uniform(-1.0, 3.0, size=(int(rng.integers(1, 30)), 2))
        ref = rng.uniform(-1.0, 1.0, size=2)
        expected = sweep_line_hv_2d(pts, ref)
        assert hypervolume(pts, ref) == pytest.approx(expected, rel=1e-12, abs=1e-12), trial
        # minimization is the mirror image
        assert hypervolume(-pts, -ref, maximize=False) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_hypervolume_3d_matches_grid_brute_force(seed):
    rng = np.random.default_rng(seed)
    pts = rng.uniform(0.0, 1.0, size=(12, 3))
    ref = np.array([0.1, 0.0, 0.2])
    assert hypervolume(pts, ref) == pytest.approx(grid_hv(pts, ref), rel=1e-9)


def test_hypervolume_3d_monte_carlo_sanity():
    rng = np.random.default_rng(3)
    pts = rng.uniform(0.2, 1.0, size=(8, 3))
    ref = np.zeros(3)
    samples = rng.uniform(0.0, 1.0, size=(200_000, 3))
    covered = (pts[None, :, :] >= samples[:, None, :]).all(axis=2).any(axis=1)
    estimate = covered.mean()  # box [0,1]^3 has volume 1
    assert hypervolume(pts, ref) == pytest.approx(estimate, abs=5e-3)


def test_hypervolume_validation():
    with pytest.raises(ValueError, match="reference has 3"):
        hypervolume([[1.0, 2.0]], [0.0, 0.0, 0.0])
    with pytest.raises(ValueError, match="reference"):
        hypervolume([[1.0, 2.0]], [[0.0, 0.0]])
    with pytest.raises(ValueError, match="reference"):
        hypervolume([[1.0, 2.0]], [0.0, float("nan")])
    with pytest.raises(ValueError, match="NaN"):
        hypervolume([[1.0, float("inf")]], [0.0, 0.0])
    with pytest.raises(ValueError, match="2-D"):
        hypervolume([1.0, 2.0], [0.0, 0.0])
