"""Byzantine client attacks (firm_ray.federation.attacks) checked against their definitions:
element-wise references computed in Python floats, distribution moments, brute force over the
simplex for the lambda lie, and the fields an attacked ClientUpdate must keep."""

from __future__ import annotations

import itertools
import math
import random
from fractions import Fraction

import pytest
import torch

from firm_ray.federation.attacks import (
    ATTACKS,
    PAYLOAD_ATTACKS,
    attack_payloads,
    attack_update,
    attackers,
    is_self_mirrored,
    lie_about_lambda,
    mirrored_preference,
)
from firm_ray.types import ClientUpdate

SHAPES = {"l0.lora_A.weight": (4, 8), "l0.lora_B.weight": (8, 4), "l1.lora_A.weight": (3,)}


def make_state(seed: int, dtype: torch.dtype = torch.float32, offset: float = 0.0) -> dict:
    gen = torch.Generator().manual_seed(seed)
    return {
        k: (torch.randn(s, generator=gen, dtype=torch.float64) + offset).to(dtype)
        for k, s in SHAPES.items()
    }


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def clone(state: dict) -> dict:
    return {k: v.clone() for k, v in state.items()}


def assert_same(a: dict, b: dict) -> None:
    """Same names, dtypes and bits (NaN equal to NaN)."""
    assert list(a) == list(b)
    for k in a:
        assert a[k].dtype == b[k].dtype, k
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, equal_nan=True)


def entrywise(fn, *states: dict) -> dict[str, list[float]]:
    """fn applied entry by entry on Python floats (the definition, in double precision)."""
    out = {}
    for k in states[0]:
        columns = [s[k].double().reshape(-1).tolist() for s in states]
        out[k] = [fn(*xs) for xs in zip(*columns, strict=True)]
    return out


def assert_close(out: dict, expected: dict[str, list[float]], rtol: float, atol: float) -> None:
    for k, values in expected.items():
        got = out[k].double().reshape(-1)
        want = torch.tensor(values, dtype=torch.float64)
        torch.testing.assert_close(got, want, rtol=rtol, atol=atol)


# ---------------------------------------------------------------- attackers


@pytest.mark.parametrize("n", [1, 2, 3, 7, 10, 20, 33, 100])
@pytest.mark.parametrize("fraction", [0.0, 0.1, 0.2, 0.29, 0.3, 0.5, 0.7, 0.999])
def test_attackers_size_is_floor_of_exact_fraction(n: int, fraction: float) -> None:
    # floor with the decimal fraction as written (0.29 * 100 is 28.999... in floats: 29 expected)
    expected = math.floor(Fraction(str(fraction)) * n)
    chosen = attackers(n, fraction, seed=3)
    assert len(chosen) == expected
    assert chosen <= set(range(n))
    assert isinstance(chosen, frozenset)


def test_attackers_deterministic_and_independent_of_global_rng() -> None:
    random.seed(1)
    torch.manual_seed(1)
    first = attackers(50, 0.3, seed=7)
    random.seed(2)
    torch.manual_seed(2)
    random.random()
    assert attackers(50, 0.3, seed=7) == first
    assert len({attackers(50, 0.3, seed=s) for s in range(5)}) > 1  # the seed matters


def test_attackers_nested_across_fractions() -> None:
    for seed in range(5):
        sets = [attackers(40, f, seed) for f in (0.0, 0.1, 0.2, 0.3, 0.5)]
        assert all(a <= b for a, b in itertools.pairwise(sets))


def test_attackers_uniform_over_clients() -> None:
    # each of 10 clients is an attacker with probability 3/10: 2000 seeds, 4-sigma band
    counts = [0] * 10
    for seed in range(2000):
        for c in attackers(10, 0.3, seed):
            counts[c] += 1
    sigma = math.sqrt(2000 * 0.3 * 0.7)
    assert all(abs(c - 600) < 4 * sigma for c in counts), counts


@pytest.mark.parametrize("fraction", [1.0, -0.1, 1.5, math.nan, "x"])
def test_attackers_rejects_bad_fraction(fraction) -> None:
    with pytest.raises(ValueError, match="fraction") as info:
        attackers(10, fraction, 0)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("n", [0, -1, 2.0, True])
def test_attackers_rejects_bad_num_clients(n) -> None:
    with pytest.raises(ValueError, match="num_clients"):
        attackers(n, 0.1, 0)


# ---------------------------------------------------------------- payload attacks


@pytest.mark.parametrize("scale", [1.0, 2.5])
def test_sign_flip_on_adapters_reflects_the_delta_about_theta_t(scale: float) -> None:
    ref = make_state(0, offset=1.5)  # non-zero theta^t
    payloads = [make_state(1, offset=1.5), make_state(2, offset=1.5)]
    out = attack_payloads("sign_flip", payloads, ref, scale, gen())
    for p, o in zip(payloads, out, strict=True):
        assert_close(o, entrywise(lambda x, r: r - scale * (x - r), p, ref), 1e-6, 1e-6)


@pytest.mark.parametrize("scale", [0.5, 10.0])
def test_scale_on_adapters_boosts_the_delta(scale: float) -> None:
    ref = make_state(0, offset=-2.0)
    payloads = [make_state(1, offset=-2.0)]
    out = attack_payloads("scale", payloads, ref, scale, gen())
    assert_close(out[0], entrywise(lambda x, r: r + scale * (x - r), payloads[0], ref), 1e-6, 1e-5)


def test_sign_flip_and_scale_on_deltas() -> None:
    deltas = [make_state(4), make_state(5), make_state(6)]  # fmgda's M = 3 deltas
    flipped = attack_payloads("sign_flip", deltas, None, 3.0, gen())
    scaled = attack_payloads("scale", deltas, None, 3.0, gen())
    for d, f, s in zip(deltas, flipped, scaled, strict=True):
        assert_close(f, entrywise(lambda x: -3.0 * x, d), 1e-6, 1e-6)
        assert_close(s, entrywise(lambda x: 3.0 * x, d), 1e-6, 1e-6)


def test_gaussian_replaces_the_delta_with_n_0_scale2() -> None:
    shapes = {"a": (300, 200), "b": (100_000,)}
    ref = {k: torch.full(s, 0.75) for k, s in shapes.items()}
    honest = {k: torch.full(s, 100.0) for k, s in shapes.items()}  # far from theta^t
    scale = 0.02
    (out,) = attack_payloads("gaussian", [honest], ref, scale, gen(11))
    noise = torch.cat([(out[k].double() - 0.75).reshape(-1) for k in shapes])
    n = noise.numel()
    assert abs(float(noise.mean())) < 5 * scale / math.sqrt(n)  # nothing of the honest delta
    assert float(noise.std()) == pytest.approx(scale, rel=0.01)
    # the Gaussian's quantiles: P(|z| < 1) = 0.6827, P(|z| < 2) = 0.9545
    z = noise.abs() / scale
    assert float((z < 1).double().mean()) == pytest.approx(0.6827, abs=0.005)
    assert float((z < 2).double().mean()) == pytest.approx(0.9545, abs=0.003)
    # independent of the honest payload, reproducible from the generator's seed
    other = {k: -v for k, v in honest.items()}
    (again,) = attack_payloads("gaussian", [other], ref, scale, gen(11))
    assert_same(again, out)
    (different,) = attack_payloads("gaussian", [honest], ref, scale, gen(12))
    assert not torch.equal(different["a"], out["a"])


def test_gaussian_on_deltas_and_distinct_draws_per_payload() -> None:
    deltas = [make_state(1), make_state(2)]
    out = attack_payloads("gaussian", deltas, None, 5.0, gen(3))
    assert not torch.equal(out[0]["l0.lora_A.weight"], out[1]["l0.lora_A.weight"])
    for o, d in zip(out, deltas, strict=True):
        assert all(not torch.equal(o[k], d[k]) for k in d)


def test_nan_makes_every_entry_nan() -> None:
    ref = make_state(0, offset=1.0)
    for payloads, reference in (([make_state(1)], ref), ([make_state(2), make_state(3)], None)):
        for o in attack_payloads("nan", payloads, reference, 0.0, gen()):  # scale is ignored
            assert all(bool(torch.isnan(t).all()) for t in o.values())


@pytest.mark.parametrize("kind", PAYLOAD_ATTACKS)
def test_bfloat16_in_bfloat16_out(kind: str) -> None:
    ref = make_state(0, torch.bfloat16, offset=1.0)
    payloads = [make_state(1, torch.bfloat16, offset=1.0)]
    out = attack_payloads(kind, payloads, ref, 2.0, gen())
    assert all(t.dtype == torch.bfloat16 for t in out[0].values())
    definitions = {
        "sign_flip": lambda x, r: r - 2.0 * (x - r),
        "scale": lambda x, r: r + 2.0 * (x - r),
    }
    if kind in definitions:  # within one bf16 rounding of the exact value
        assert_close(out[0], entrywise(definitions[kind], payloads[0], ref), 2**-7, 1e-2)
    deltas = attack_payloads(kind, [make_state(2, torch.bfloat16)], None, 2.0, gen())
    assert all(t.dtype == torch.bfloat16 for t in deltas[0].values())


@pytest.mark.parametrize("kind", PAYLOAD_ATTACKS)
def test_inputs_untouched_and_outputs_fresh(kind: str) -> None:
    ref, payloads = make_state(0, offset=1.0), [make_state(1), make_state(2)]
    ref_copy, payload_copies = clone(ref), [clone(p) for p in payloads]
    for reference in (ref, None):
        out = attack_payloads(kind, payloads, reference, 2.0, gen())
        for o in out:
            for t in o.values():
                t.add_(1.0)  # writing the output must not reach the inputs
        assert_same(ref, ref_copy)
        for p, c in zip(payloads, payload_copies, strict=True):
            assert_same(p, c)


@pytest.mark.parametrize("kind", ["sign_flip", "scale", "gaussian"])
@pytest.mark.parametrize("scale", [0.0, -1.0, math.inf, math.nan])
def test_bad_scale_is_a_one_line_error(kind: str, scale: float) -> None:
    with pytest.raises(ValueError, match="scale") as info:
        attack_payloads(kind, [make_state(1)], None, scale, gen())
    assert "\n" not in str(info.value)


def test_unknown_kind_lists_the_allowed_ones() -> None:
    with pytest.raises(ValueError, match=r"sign_flip, scale, gaussian, nan$") as info:
        attack_payloads("lambda_lie", [make_state(1)], None, 1.0, gen())
    assert "\n" not in str(info.value)
    update = ClientUpdate(client_id=0, round=0, num_samples=1, adapter=make_state(1))
    with pytest.raises(ValueError, match=r"opposite_preference, lambda_lie$"):
        attack_update("flip", update, make_state(0), 1.0, gen())


def test_reference_layout_mismatch_is_an_error() -> None:
    ref = make_state(0)
    del ref["l1.lora_A.weight"]
    with pytest.raises(ValueError, match=r"l1\.lora_A\.weight"):
        attack_payloads("sign_flip", [make_state(1)], ref, 1.0, gen())


# ---------------------------------------------------------------- preferences and lambdas


def test_mirrored_preference() -> None:
    assert mirrored_preference((0.8, 0.2)) == [0.2, 0.8]
    assert mirrored_preference([0.5, 0.3, 0.2]) == [0.2, 0.3, 0.5]
    assert mirrored_preference(torch.tensor([0.1, 0.2, 0.3, 0.4]).tolist()) == pytest.approx(
        [0.4, 0.3, 0.2, 0.1]
    )
    with pytest.raises(ValueError):
        mirrored_preference([])


def test_is_self_mirrored() -> None:
    assert is_self_mirrored((0.5, 0.5))
    assert is_self_mirrored((1 / 3, 1 / 3, 1 / 3))
    assert is_self_mirrored((0.2, 0.6, 0.2))
    assert is_self_mirrored((1.0,))
    assert not is_self_mirrored((0.8, 0.2))
    assert not is_self_mirrored((0.3, 0.3, 0.4))
    assert not is_self_mirrored((0.5, 0.5 + 1e-9))
    assert is_self_mirrored((0.5, 0.5 + 1e-9), tol=1e-6)


@pytest.mark.parametrize(
    ("lam", "lie"),
    [
        ((0.7, 0.3), [0.0, 1.0]),
        ((0.2, 0.5, 0.3), [1.0, 0.0, 0.0]),
        ((0.4, 0.2, 0.2, 0.2), [0.0, 1.0, 0.0, 0.0]),  # tie: lowest index
        ((0.5, 0.5), [1.0, 0.0]),
        ((0.0, 1.0), [1.0, 0.0]),
    ],
)
def test_lie_about_lambda_examples(lam, lie) -> None:
    assert lie_about_lambda(lam) == lie


def test_lie_is_the_farthest_simplex_point_brute_force() -> None:
    # max ||q - lambda|| over a grid of the simplex (step 1/20) equals the lie's distance
    rng = random.Random(0)
    grid = [(a / 20, b / 20, (20 - a - b) / 20) for a in range(21) for b in range(21 - a)]
    for _ in range(50):
        raw = [rng.random() for _ in range(3)]
        lam = [x / sum(raw) for x in raw]
        lie = lie_about_lambda(lam)
        farthest = max(math.dist(q, lam) for q in grid)
        assert math.dist(lie, lam) == pytest.approx(farthest, abs=1e-12)


def test_lie_rejects_nan_and_empty() -> None:
    for bad in ([], [math.nan, math.nan], [0.5, math.inf]):
        with pytest.raises(ValueError, match="lambda"):
            lie_about_lambda(bad)


# ---------------------------------------------------------------- attack_update


def honest_update(**fields) -> ClientUpdate:
    base = dict(
        client_id=7,
        round=3,
        num_samples=42,
        metrics={"lambda": [0.6, 0.4], "reward_mean": [0.1, 0.2], "steps": 4.0, "kl": 0.01},
        client_state={"reward_norm": {"mean": [0.5, 0.25], "count": 12.0}},
    )
    base.update(fields)
    return ClientUpdate(**base)


def assert_kept(new: ClientUpdate, old: ClientUpdate, lam_changed: bool) -> None:
    assert (new.client_id, new.round, new.num_samples) == (old.client_id, old.round, 42)
    assert (new.valid, new.reason) == (old.valid, old.reason)
    assert new.client_state == old.client_state
    assert set(new.metrics) == set(old.metrics)  # nothing added that would announce the attack
    for key, value in old.metrics.items():
        if key != "lambda" or not lam_changed:
            assert new.metrics[key] == value, key


@pytest.mark.parametrize("kind", ATTACKS)
def test_attack_update_on_an_adapter_upload(kind: str) -> None:
    ref = make_state(0, offset=1.0)
    old = honest_update(adapter=make_state(1, offset=1.0))
    snapshot = (clone(old.adapter), dict(old.metrics), repr(old.client_state))
    new = attack_update(kind, old, ref, 2.0, gen(5))
    assert new is not old
    assert_kept(new, old, lam_changed=kind == "lambda_lie")
    assert new.objective_deltas is None
    if kind in PAYLOAD_ATTACKS:
        assert_same(new.adapter, attack_payloads(kind, [old.adapter], ref, 2.0, gen(5))[0])
    else:
        assert_same(new.adapter, old.adapter)
    expected_lambda = [0.0, 1.0] if kind == "lambda_lie" else [0.6, 0.4]
    assert new.metrics["lambda"] == expected_lambda
    # the honest update is untouched, also when the attacked one is changed afterwards
    new.metrics["kl"] = 99.0
    new.metrics["reward_mean"].append(1.0)
    new.client_state["reward_norm"]["count"] = 0.0
    assert_same(old.adapter, snapshot[0])
    assert old.metrics == snapshot[1] and repr(old.client_state) == snapshot[2]


@pytest.mark.parametrize("kind", PAYLOAD_ATTACKS)
def test_attack_update_on_fmgda_deltas_ignores_the_reference(kind: str) -> None:
    deltas = [make_state(1), make_state(2)]
    old = honest_update(objective_deltas=deltas)
    with_ref = attack_update(kind, old, make_state(0, offset=5.0), 3.0, gen(1))
    without = attack_update(kind, old, None, 3.0, gen(1))
    expected = attack_payloads(kind, deltas, None, 3.0, gen(1))
    assert new_adapter_is_none(with_ref) and new_adapter_is_none(without)
    for a, b, e in zip(with_ref.objective_deltas, without.objective_deltas, expected, strict=True):
        assert_same(a, e)
        assert_same(b, e)
    assert_kept(without, old, lam_changed=False)


def new_adapter_is_none(update: ClientUpdate) -> bool:
    return update.adapter is None


def test_attack_update_adapter_without_reference_is_an_error() -> None:
    with pytest.raises(ValueError, match="reference"):
        attack_update("sign_flip", honest_update(adapter=make_state(1)), None, 1.0, gen())


def test_lambda_lie_leaves_absent_and_nan_lambda() -> None:
    no_lambda = honest_update(adapter=make_state(1), metrics={"steps": 4.0})
    assert attack_update("lambda_lie", no_lambda, None, 1.0, gen()).metrics == {"steps": 4.0}
    nan_lambda = honest_update(metrics={"lambda": [math.nan, math.nan], "steps": 0.0})
    lied = attack_update("lambda_lie", nan_lambda, None, 1.0, gen())
    assert all(math.isnan(x) for x in lied.metrics["lambda"])
    three = honest_update(metrics={"lambda": [0.2, 0.1, 0.7]})
    assert attack_update("lambda_lie", three, None, 1.0, gen()).metrics["lambda"] == [
        0.0,
        1.0,
        0.0,
    ]


def test_attack_update_keeps_an_invalid_update_without_payload() -> None:
    old = honest_update(valid=False, reason="worker crashed")
    new = attack_update("gaussian", old, make_state(0), 1.0, gen())
    assert new.adapter is None and new.objective_deltas is None
    assert (new.valid, new.reason) == (False, "worker crashed")
