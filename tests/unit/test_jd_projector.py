"""jd's dual-cone projector (UPGrad / DualProj without the GPL quadprog): exact against a
brute-force active-set solution of the same QP, torchjd's documented UPGrad example, and a real
jd local step with upgrad on the built-in world model."""

from __future__ import annotations

from itertools import combinations

import pytest
import torch
from torchjd._linalg import normalize, regularize
from torchjd.aggregation import DualProjWeighting, UPGrad, UPGradWeighting

from firm_ray.algorithms import build_algorithm
from firm_ray.algorithms.jd import available_aggregators
from firm_ray.algorithms.jd_projector import BvlsProjector, kkt_violation
from firm_ray.config import load_config


def exact_projection(u: torch.Tensor, gram: torch.Tensor) -> torch.Tensor:
    """argmin_v v^T G v s.t. v >= u by enumerating active sets S (v_S = u_S): the free part solves
    G_FF v_F = -G_FS u_S; the KKT point has v >= u, (G v)_S >= 0 and (G v)_F = 0. G is positive
    definite (regularized), so exactly one active set qualifies."""
    m = len(u)
    found = []
    for k in range(m + 1):
        for active in combinations(range(m), k):
            S = list(active)
            F = [i for i in range(m) if i not in active]
            v = u.clone()
            if F:
                rhs = -gram[F][:, S] @ u[S] if S else torch.zeros(len(F), dtype=u.dtype)
                v[F] = torch.linalg.solve(gram[F][:, F], rhs)
            gv = gram @ v
            tol = 1e-10
            if (v >= u - tol).all() and (gv[S] >= -tol).all() and (gv[F].abs() <= tol).all():
                found.append(v)
    assert len(found) >= 1
    return found[0]


def random_gramian(m: int, rank: int, scale: float, gen: torch.Generator) -> torch.Tensor:
    J = torch.randn(m, rank, dtype=torch.float64, generator=gen) @ torch.randn(
        rank, 50, dtype=torch.float64, generator=gen
    )
    return scale * (J @ J.T)


CASES = [(m, rank) for m in (2, 3, 4) for rank in range(1, m + 1)]


@pytest.mark.parametrize("m, rank", CASES)
def test_projection_is_the_exact_qp_solution(m: int, rank: int) -> None:
    """Random PSD Gramians (full rank and rank-deficient, scales 1e-3 to 1e6), random u of both
    signs and scales 1e-2 to 1e2 (all-negative u, solution 0, made Clarabel's interior point hit
    MaxIterations): the weights equal the exact solution of the same normalized, regularized QP,
    near-degenerate active constraints included (Clarabel's were off by up to 3e-4)."""
    gen = torch.Generator().manual_seed(100 * m + rank)
    projector = BvlsProjector()
    worst = 0.0
    for trial in range(40):
        gram = random_gramian(m, rank, 10.0 ** (trial % 10 - 3), gen)
        U = torch.randn(3, m, dtype=torch.float64, generator=gen) * 10.0 ** (trial % 5 - 2)
        W = projector(U, gram)
        prepared = regularize(normalize(gram, 1e-4), 1e-4)
        for u, w in zip(U, W, strict=True):
            worst = max(worst, float((w - exact_projection(u, prepared)).abs().max()))
    assert worst < 1e-6, worst


@pytest.mark.parametrize("m", [2, 3, 4, 5])
def test_weightings_match_the_exact_qp_for_random_preferences(m: int) -> None:
    """UPGrad's and DualProj's own calls (u = diag(p) rows and u = p, p on the simplex), the
    inputs jd gives: exact, and never a refusal (BVLS's own stop once gave up on optimal answers:
    the KKT check is the judge)."""
    gen = torch.Generator().manual_seed(m)
    projector = BvlsProjector()
    worst = 0.0
    for trial in range(30):
        gram = random_gramian(m, 1 + trial % m, 10.0 ** (trial % 10 - 4), gen)
        p = torch.rand(m, dtype=torch.float64, generator=gen)
        p = p / p.sum()
        prepared = regularize(normalize(gram, 1e-4), 1e-4)
        dual = DualProjWeighting(pref_vector=p, projector=projector)(gram)
        up = UPGradWeighting(pref_vector=p, projector=projector)(gram)
        want_up = sum(
            exact_projection(p[i] * torch.eye(m, dtype=p.dtype)[i], prepared) for i in range(m)
        )
        worst = max(worst, float((dual - exact_projection(p, prepared)).abs().max()))
        worst = max(worst, float((up - want_up).abs().max()))
    assert worst < 1e-9, worst


def test_batches_and_a_vanishing_gramian() -> None:
    """UPGrad passes U = diag(p) ([m, m]), DualProj one u ([m]): same rows, same answers. All-zero
    gradients: normalize gives 0, so G = reg_eps I and v = max(u, 0)."""
    gen = torch.Generator().manual_seed(7)
    gram = random_gramian(3, 2, 1.0, gen)
    U = torch.randn(3, 3, dtype=torch.float64, generator=gen)
    projector = BvlsProjector()
    W = projector(U, gram)
    assert W.shape == U.shape and W.dtype == gram.dtype
    for u, w in zip(U, W, strict=True):
        assert torch.allclose(projector(u, gram), w, atol=1e-12)
    u = torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64)
    zero = projector(u, torch.zeros(3, 3, dtype=torch.float64))
    assert torch.allclose(zero, u.clamp_min(0.0), atol=1e-7)


def test_kkt_check_rejects_a_wrong_answer() -> None:
    """The check every answer passes: the exact solution has violation ~0; an infeasible point,
    or a feasible one with a negative multiplier, does not."""
    gram = regularize(
        normalize(random_gramian(3, 3, 1.0, torch.Generator().manual_seed(3)), 1e-4), 1e-4
    )
    u = torch.tensor([0.5, 0.0, 0.2], dtype=torch.float64)
    exact = exact_projection(u, gram)
    assert kkt_violation(exact.numpy(), u.numpy(), gram.numpy()) < 1e-12
    assert kkt_violation((exact - 0.1).numpy(), u.numpy(), gram.numpy()) > 0.05
    assert kkt_violation((exact + 1.0).numpy(), u.numpy(), gram.numpy()) > 1e-3


def test_upgrad_on_torchjds_documented_example() -> None:
    """torchjd.aggregation's module docstring: UPGrad on [[-4, 1, 1], [6, 1, 1]] is
    [0.2929, 1.9004, 1.9004] with weights [1.1109, 0.7894] (printed to 4 decimals)."""
    J = torch.tensor([[-4.0, 1.0, 1.0], [6.0, 1.0, 1.0]], dtype=torch.float64)
    aggregation = UPGrad(projector=BvlsProjector())(J)
    weights = UPGradWeighting(projector=BvlsProjector())(J @ J.T)
    assert torch.allclose(aggregation, torch.tensor([0.2929, 1.9004, 1.9004]).double(), atol=1e-4)
    assert torch.allclose(weights, torch.tensor([1.1109, 0.7894]).double(), atol=1e-4)
    assert torch.allclose(weights @ J, aggregation, atol=1e-12)
    # UPGrad's property: the direction conflicts with no objective
    assert (J @ aggregation >= -1e-9).all()


def _jd(aggregator: str, pref: str = "[0.2,0.3,0.5]"):
    cfg = load_config(
        None,
        [
            "algorithm.name=jd",
            f"algorithm.aggregator={aggregator}",
            f"algorithm.preference={pref}",
            "rewards=[{name: a, type: length}, {name: b, type: relevance}, {name: c, type: "
            "harmlessness}]",
        ],
    )
    return build_algorithm(cfg.algorithm, 3)


@pytest.mark.parametrize("aggregator", ["upgrad", "dualproj"])
def test_upgrad_and_dualproj_are_available_and_use_the_preference(aggregator: str) -> None:
    """No extra needed any more; lambda is torchjd's weighting with our projector and
    algorithm.preference as pref_vector, checked against the exact QP."""
    assert aggregator in available_aggregators()
    J = torch.tensor([[-4.0, 1.0, 1.0], [6.0, 1.0, 1.0], [1.0, -2.0, 0.5]], dtype=torch.float64)
    pref = torch.tensor([0.2, 0.3, 0.5], dtype=torch.float64)
    lam, direction, coef = _jd(aggregator).direction(J, torch.zeros(3), pref, None)
    prepared = regularize(normalize(J @ J.T, 1e-4), 1e-4)
    if aggregator == "upgrad":
        want = sum(exact_projection(pref[i] * torch.eye(3)[i].double(), prepared) for i in range(3))
        own = UPGradWeighting(pref_vector=pref, projector=BvlsProjector())
    else:
        want = exact_projection(pref, prepared)
        own = DualProjWeighting(pref_vector=pref, projector=BvlsProjector())
    assert torch.allclose(lam, want, atol=1e-6)
    assert torch.allclose(lam, own(J @ J.T), atol=1e-12)
    assert torch.allclose(direction, lam @ J, atol=1e-12) and torch.equal(coef, lam)
    assert (lam >= pref - 1e-9).all()  # v >= u row by row, and every other row's weight >= 0
    # in the dual cone of the regularized Gramian: (G/tr G + eps I) lam >= 0, so no objective
    # gets worse by more than what the eps = 1e-4 regularization allows
    trace = float(torch.trace(J @ J.T))
    assert ((J @ direction) / trace + 1e-4 * lam >= -1e-9).all()


# ------------------------------------------------------------ on the built-in world model
def test_upgrad_local_step_on_the_world_model(world_model_dir) -> None:
    """Two real local steps of jd with upgrad: valid update, no skipped step, the adapter moves,
    and the logged lambda is >= the preference (UPGrad's weights, not a fallback)."""
    from firm_ray.data.sources import load_prompts
    from firm_ray.models.adapter import get_adapter_state
    from firm_ray.models.policy import load_policy
    from firm_ray.rewards import build_rewards
    from firm_ray.trainer import LocalTrainer

    cfg = load_config(
        None,
        [
            f"model.name_or_path={world_model_dir}",
            "algorithm.name=jd",
            "algorithm.aggregator=upgrad",
            "algorithm.preference=[0.7,0.3]",
            "trainer.batch_prompts=4",
            "trainer.generations_per_prompt=4",
            "trainer.max_new_tokens=12",
        ],
    )
    policy = load_policy(cfg.model, cfg.lora, seed=0)
    theta0 = get_adapter_state(policy.model)
    prompts = load_prompts(cfg.data, 0).train[:32]
    trainer = LocalTrainer(
        policy, build_rewards(cfg.rewards), cfg.trainer, cfg.algorithm, 2, seed=0
    )
    update = trainer.run_round(theta0, prompts, client_id=0, round_index=0)
    assert update.valid and update.metrics["skipped_steps"] == 0
    moved = sum(float((update.adapter[k] - v).abs().sum()) for k, v in theta0.items())
    assert moved > 0
    lam = torch.tensor(update.metrics["lambda"], dtype=torch.float64)
    assert lam.shape[-1] == 2 and torch.isfinite(lam).all()
    assert (lam >= torch.tensor([0.7, 0.3], dtype=torch.float64) - 1e-6).all(), lam
