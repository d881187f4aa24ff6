"""Robust aggregation rules against brute-force references written from their definitions
(Yin et al. 2018 Defs. 1-2, Blanchard et al. 2017 Krum / Multi-Krum, Sun et al. 2019 norm
bounding), layout round trips, and the one-line errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from firm_ray.core import robust
from firm_ray.core.aggregation import flatten_state
from firm_ray.core.robust import (
    RULES,
    Layout,
    coordinate_median,
    krum,
    krum_scores,
    min_clients,
    multi_krum,
    norm_bound,
    norm_bound_factors,
    robust_aggregate,
    stack_states,
    trimmed_mean,
    unstack,
    weighted_mean,
)

DTYPES = [torch.float32, torch.float64]
SIZES = [(1, 5), (2, 3), (5, 7), (8, 4), (11, 9)]  # (k, P), odd and even k


def rand(k: int, p: int, dtype: torch.dtype, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(k, p, generator=gen, dtype=torch.float64).to(dtype)


def close(actual: torch.Tensor, expected, dtype: torch.dtype) -> None:
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    np.testing.assert_allclose(actual.numpy(), np.asarray(expected), rtol=tol, atol=tol)


# ---- brute-force references (python loops over the definitions, float64) -------------------


def ref_trimmed(x: np.ndarray, b: int) -> np.ndarray:
    k, p = x.shape
    out = []
    for j in range(p):
        col = sorted(float(v) for v in x[:, j])
        kept = col[b : k - b]
        out.append(sum(kept) / len(kept))
    return np.array(out)


def ref_krum_scores(x: np.ndarray, f: int) -> list[float]:
    k = x.shape[0]
    scores = []
    for i in range(k):
        dists = sorted(
            sum((float(a) - float(b)) ** 2 for a, b in zip(x[i], x[j], strict=True))
            for j in range(k)
            if j != i
        )
        scores.append(sum(dists[: k - f - 2]))
    return scores


# ---- mean, trimmed mean, median --------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("k,p", SIZES)
def test_weighted_mean_matches_definition(dtype, k, p):
    x = rand(k, p, dtype, seed=k)
    w = torch.arange(1, k + 1, dtype=torch.float64)
    xn = x.double().numpy()
    expected = sum(float(w[i]) * xn[i] for i in range(k)) / float(w.sum())
    out = weighted_mean(x, w)
    assert out.dtype == dtype
    close(out, expected, dtype)
    close(weighted_mean(x), xn.mean(axis=0), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    "k,beta,b",  # b = floor(beta * k), written out by hand
    [(5, 0.1, 0), (5, 0.2, 1), (8, 0.25, 2), (10, 0.3, 3), (11, 0.49, 5), (100, 0.29, 29)],
)
def test_trimmed_mean_matches_definition(dtype, k, beta, b):
    x = rand(k, 6, dtype, seed=k)
    out = trimmed_mean(x, beta)
    assert out.dtype == dtype
    close(out, ref_trimmed(x.double().numpy(), b), dtype)
    assert robust_aggregate("trimmed_mean", x, trim_fraction=beta).trimmed == b


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("k,p", SIZES)
def test_trimmed_mean_beta_zero_is_the_mean(dtype, k, p):
    x = rand(k, p, dtype, seed=3)
    assert torch.equal(trimmed_mean(x, 0.0), x.mean(dim=0))


def test_trimmed_mean_ignores_outliers_within_budget():
    x = rand(10, 4, torch.float64, seed=1)
    honest = x.clone()
    x[0] = 1e9  # one huge and one tiny attacker per coordinate; beta = 0.1 trims one per side
    x[1] = -1e9
    assert trimmed_mean(x, 0.1).abs().max() < honest.abs().max()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("k,p", SIZES)
def test_coordinate_median_equals_numpy_median(dtype, k, p):
    x = rand(k, p, dtype, seed=k + p)
    out = coordinate_median(x)
    assert out.dtype == dtype
    np.testing.assert_array_equal(out.numpy(), np.median(x.numpy(), axis=0))


def test_sort_rules_in_column_blocks(monkeypatch):
    """Large updates are sorted block by block; a tiny block size must give the same answer."""
    x = rand(7, 23, torch.float64, seed=5)
    monkeypatch.setattr(robust, "_BLOCK", 10)  # 1 column per block at k = 7
    np.testing.assert_array_equal(coordinate_median(x).numpy(), np.median(x.numpy(), axis=0))
    close(trimmed_mean(x, 0.3), ref_trimmed(x.numpy(), 2), torch.float64)
    close(krum_scores(x, 1), ref_krum_scores(x.numpy(), 1), torch.float64)


# ---- Krum and Multi-Krum --------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("k,f", [(3, 0), (5, 1), (6, 1), (7, 2), (9, 3), (12, 2)])
def test_krum_scores_match_brute_force(dtype, k, f):
    x = rand(k, 5, dtype, seed=10 * k + f)
    expected = ref_krum_scores(x.double().numpy(), f)
    scores = krum_scores(x, f)
    assert scores.dtype == dtype
    close(scores, expected, dtype)
    vec, idx = krum(x, f)
    assert idx == int(np.argmin(expected))
    assert torch.equal(vec, x[idx])


@pytest.mark.parametrize("f", [1, 2, 3])
@pytest.mark.parametrize("extra", [0, 4])
def test_krum_never_selects_far_attackers(f, extra):
    k = 2 * f + 3 + extra
    for seed in range(5):
        x = rand(k, 16, torch.float32, seed=seed)
        attackers = sorted(torch.randperm(k, generator=torch.Generator().manual_seed(seed))[:f])
        for a in attackers:
            x[a] = 1e6 * torch.ones(16)
        vec, idx = krum(x, f)
        assert idx not in attackers
        assert torch.equal(vec, x[idx])  # an honest row, unchanged


def test_krum_ties_go_to_the_lower_row():
    # rows 1 and 3, and rows 2 and 5, are duplicates, so their scores tie exactly
    x = torch.tensor([[5.0, 5.0], [0.0, 0.0], [3.0, 0.0], [0.0, 0.0], [0.0, 1.0], [3.0, 0.0]])
    scores = krum_scores(x, 1)
    assert scores[1] == scores[3] and scores[2] == scores[5]
    expected = ref_krum_scores(x.double().numpy(), 1)
    order = sorted(range(6), key=lambda i: (expected[i], i))
    assert order[:2] == [1, 3]  # the tied best pair
    assert krum(x, 1)[1] == 1
    assert multi_krum(x, 1, 5)[1] == order[:5]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("k,f,m", [(5, 1, 1), (5, 1, 4), (7, 2, 3), (10, 1, 6), (9, 3, 6)])
def test_multi_krum_matches_brute_force(dtype, k, f, m):
    x = rand(k, 6, dtype, seed=k * m + f)
    scores = ref_krum_scores(x.double().numpy(), f)
    best = sorted(range(k), key=lambda i: (scores[i], i))[:m]
    vec, rows = multi_krum(x, f, m)
    assert rows == best
    close(vec, x.double().numpy()[best].mean(axis=0), dtype)


@pytest.mark.parametrize("f", [1, 2, 3])
def test_multi_krum_with_m_k_minus_f_keeps_exactly_the_honest_rows(f):
    k = 3 * f + 4
    x = rand(k, 12, torch.float64, seed=f)
    attackers = list(range(1, 2 * f + 1, 2))
    for a in attackers:
        x[a] = 1e6 * torch.ones(12)
    honest = [i for i in range(k) if i not in attackers]
    result = robust_aggregate("multi_krum", x, f=f)  # m defaults to k - f
    assert sorted(result.selected) == honest
    close(result.vector, x[honest].numpy().mean(axis=0), torch.float64)
    one, rows = multi_krum(x, f, 1)
    assert rows == [krum(x, f)[1]] and torch.equal(one, krum(x, f)[0])


# ---- norm bounding ---------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bound", [0.5, 2.5, 100.0])
def test_norm_bound_matches_definition(dtype, bound):
    k, p = 9, 7
    x = rand(k, p, dtype, seed=2) * torch.linspace(0.1, 3.0, k, dtype=dtype)[:, None]
    w = torch.arange(1, k + 1, dtype=torch.float64)
    xn = x.double().numpy()
    norms = [math.sqrt(sum(float(v) ** 2 for v in row)) for row in xn]
    scaled = [row / max(1.0, n / bound) for row, n in zip(xn, norms, strict=True)]
    expected = sum(float(w[i]) * scaled[i] for i in range(k)) / float(w.sum())
    vec, clipped = norm_bound(x, bound, w)
    assert clipped == sum(n > bound for n in norms)
    close(vec, expected, dtype)
    factors = norm_bound_factors(x, bound)
    for i in range(k):
        if norms[i] > bound:
            got = float(torch.linalg.vector_norm((x[i] * factors[i]).double()))
            assert got == pytest.approx(bound, rel=1e-6)
        else:
            assert factors[i] == 1.0


def test_norm_bound_caps_one_clients_influence():
    x = torch.zeros(4, 3, dtype=torch.float64)
    x[0] = torch.tensor([1e6, 0.0, 0.0])
    vec, clipped = norm_bound(x, 1.0)
    assert clipped == 1
    assert float(torch.linalg.vector_norm(vec)) == pytest.approx(1.0 / 4)


# ---- layout ----------------------------------------------------------------------------------

SHAPES = {"a.lora_A": (2, 3), "a.lora_B": (3, 2), "scale": (), "b.lora_A": (4,), "c": (1, 2, 2)}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_stack_unstack_round_trip_is_exact(dtype):
    gen = torch.Generator().manual_seed(0)
    states = [{n: torch.randn(s, generator=gen).to(dtype) for n, s in SHAPES.items()}]
    states.append({n: states[0][n] * 3 for n in reversed(list(SHAPES))})  # other key order
    x, layout = stack_states(states)
    assert x.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    assert x.shape == (2, layout.numel) and layout.numel == 6 + 6 + 1 + 4 + 4
    assert layout.names == tuple(SHAPES)
    for i, state in enumerate(states):
        back = unstack(x[i], layout)
        assert list(back) == list(SHAPES)
        for name, t in state.items():
            assert back[name].dtype == dtype and back[name].shape == t.shape
            assert torch.equal(back[name], t)
    # rows follow flatten_state's key-order convention
    assert torch.equal(x[0], flatten_state(states[0]).to(x.dtype))
    back = unstack(x[0], layout)
    back["c"].fill_(7)  # fresh tensors, not views of the matrix
    assert not torch.equal(unstack(x[0], layout)["c"], back["c"])


def test_stack_promotes_to_float64_when_any_tensor_is():
    a = {"p": torch.ones(2), "q": torch.ones(3, dtype=torch.float64)}
    x, layout = stack_states([a, {"p": torch.ones(2), "q": torch.ones(3)}])
    assert x.dtype == torch.float64
    assert layout == Layout(
        ("p", "q"), (torch.Size([2]), torch.Size([3])), (torch.float32, torch.float64)
    )


def test_stack_layout_errors_name_the_key():
    a = {"p": torch.ones(2), "q": torch.ones(3)}
    with pytest.raises(ValueError, match=r"state #1 shape of 'q' is \(4,\), expected \(3,\)"):
        stack_states([a, {"p": torch.ones(2), "q": torch.ones(4)}])
    with pytest.raises(
        ValueError, match=r"state #1 names differ.*missing \['q'\], unexpected \['r'"
    ):
        stack_states([a, {"p": torch.ones(2), "r": torch.ones(3)}])
    with pytest.raises(ValueError, match=r"state #0 'p' is torch\.int64, not a float tensor"):
        stack_states([{"p": torch.ones(2, dtype=torch.long)}])
    with pytest.raises(ValueError, match="at least one state"):
        stack_states([])
    _, layout = stack_states([a])
    with pytest.raises(ValueError, match=r"unstack: expected a 1-D vector of 5 values"):
        unstack(torch.zeros(6), layout)


# ---- dispatch and errors ---------------------------------------------------------------------


def test_robust_aggregate_dispatches_and_reports():
    x = rand(7, 5, torch.float64, seed=9)
    w = torch.arange(1.0, 8.0)
    assert torch.equal(robust_aggregate("mean", x, w).vector, weighted_mean(x, w))
    for rule, direct in [
        ("trimmed_mean", trimmed_mean(x, 0.2)),
        ("coordinate_median", coordinate_median(x)),
        ("krum", krum(x, 2)[0]),
        ("multi_krum", multi_krum(x, 2, 5)[0]),
    ]:
        result = robust_aggregate(rule, x, w, trim_fraction=0.2, f=2)
        assert torch.equal(result.vector, direct)  # weights ignored by these rules
        assert result.clipped == 0
    assert robust_aggregate("krum", x, f=2).selected == [krum(x, 2)[1]]
    assert robust_aggregate("multi_krum", x, f=2, m=3).selected == multi_krum(x, 2, 3)[1]
    nb = robust_aggregate("norm_bound", x, w, bound=0.5)
    assert (nb.clipped, nb.selected, nb.trimmed) == (norm_bound(x, 0.5, w)[1], None, 0)
    assert torch.equal(nb.vector, norm_bound(x, 0.5, w)[0])
    assert robust_aggregate("mean", x).selected is None


def test_min_clients():
    assert [min_clients(r, 2) for r in RULES] == [1, 1, 1, 7, 7, 1]
    assert min_clients("krum", 0) == 3


def test_half_precision_is_computed_in_float32():
    x = rand(5, 4, torch.bfloat16, seed=1)
    for rule in RULES:
        assert robust_aggregate(rule, x, bound=1.0).vector.dtype == torch.float32


def test_deterministic():
    x = rand(9, 33, torch.float32, seed=4)
    for rule in RULES:
        a = robust_aggregate(rule, x, f=2, bound=1.0, trim_fraction=0.2).vector
        b = robust_aggregate(rule, x.clone(), f=2, bound=1.0, trim_fraction=0.2).vector
        assert torch.equal(a, b)


@pytest.mark.parametrize(
    "call,message",
    [
        (lambda x: krum(x[:5], 2), r"^krum with f = 2 needs at least 7 client updates, got 5$"),
        (lambda x: multi_krum(x[:4], 1, 2), r"^multi_krum with f = 1 needs at least 5 client"),
        (lambda x: multi_krum(x, 1, 8), r"^multi_krum with f = 1 and 8 .* 1 <= m <= 7, got 8$"),
        (lambda x: krum(x, -1), r"^krum needs f = the number of Byzantine clients"),
        (lambda x: trimmed_mean(x, 0.5), r"^trimmed_mean needs 0 <= trim_fraction < 0.5, got 0.5"),
        (lambda x: trimmed_mean(x, -0.1), r"trim_fraction < 0.5, got -0.1$"),
        (lambda x: trimmed_mean(x, float("nan")), r"trim_fraction < 0.5, got nan$"),
        (lambda x: norm_bound(x, 0.0), r"^norm_bound needs bound = a finite number > 0, got 0.0"),
        (lambda x: robust_aggregate("norm_bound", x), r"^norm_bound needs bound = .* got None"),
        (lambda x: robust_aggregate("median", x), r"^unknown aggregation rule 'median'; choose"),
        (lambda x: weighted_mean(x, torch.ones(3)), r"^mean needs one weight per client update"),
        (lambda x: norm_bound(x, 1.0, -torch.ones(8)), r"^norm_bound: weight of row 0 must be"),
        (lambda x: coordinate_median(x[0]), r"^coordinate_median needs a 2-D float tensor"),
        (lambda x: weighted_mean(x[:0]), r"^mean needs at least 1 client updates, got 0$"),
    ],
)
def test_one_line_errors(call, message):
    x = rand(8, 3, torch.float32)
    with pytest.raises(ValueError, match=message) as info:
        call(x)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_row_is_named(rule, bad):
    x = rand(8, 3, torch.float32)
    x[3, 1] = bad
    with pytest.raises(ValueError, match=rf"^{rule}: client update row 3 contains NaN or inf"):
        robust_aggregate(rule, x, bound=1.0)
