"""FIRM's in-client regularized multi-gradient problem.

    lambda* = argmin_{lambda in simplex_M}  1/2 lambda^T (G^T G) lambda + beta/2 ||lambda - p||^2

Why one solver serves every case: on the simplex, sum_m lambda_m = 1, so

    beta ||lambda - p||^2 = || sum_m lambda_m sqrt(beta) (e_m - p) ||^2

and the whole objective is the squared norm of sum_m lambda_m v_m with the *augmented* gradients
v_m = [g_m ; sqrt(beta) (e_m - p)]. FIRM's problem is therefore exactly MGDA's min-norm-point
problem on augmented gradients, with Gram matrix

    K = G^T G + beta (I - p 1^T - 1 p^T + ||p||^2 1 1^T).

We solve it with Wolfe's minimum-norm-point algorithm (Wolfe 1976), an active-set method that
terminates after finitely many steps with the exact optimum (up to floating-point rounding) and
needs only inner products, so rank-deficient, identical or exactly opposed gradients are fine.
For M = 2 the closed form below is used. beta = 0 is plain MGDA; beta -> infinity returns p.

Scale: the solution is invariant to scaling K, so K is divided by its largest diagonal entry
before solving; gradients from 1e-12 to 1e12 give the same lambda. ``beta`` here is absolute
(it multiplies ||lambda - p||^2 next to G^T G); :func:`effective_beta` turns the scale-free
"relative" beta of the config into an absolute one.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
import torch

BetaScale = Literal["absolute", "relative"]

# Relative tolerances on the unit-diagonal-scaled problem.
_OPTIMALITY_TOL = 1e-14  # Frank-Wolfe gap at which Wolfe's algorithm stops
_POSITIVE_TOL = 1e-15  # affine weights at or below this count as leaving the corral
_DEGENERATE_TOL = 1e-15  # M = 2 denominator below this: the objective is flat in lambda


def firm_weights(
    gram: torch.Tensor, beta: float, preference: torch.Tensor | None = None
) -> torch.Tensor:
    """Return lambda on the simplex minimizing ``1/2 l^T gram l + beta/2 ||l - p||^2``.

    Args:
        gram: [M, M] Gram matrix G^T G of the M per-objective gradients (symmetric PSD).
        beta: regularization strength (absolute), >= 0 and finite.
        preference: p on the simplex, shape [M]; uniform when None.

    Returns:
        lambda, shape [M], on the simplex, dtype of ``gram`` (float64 math inside).

    Raises:
        ValueError: for a non-square or non-finite ``gram``, a negative or non-finite ``beta``,
            or a ``preference`` that is not a probability vector of length M.
    """
    matrix = _as_gram(gram)
    size = matrix.shape[0]
    beta = _check_beta(beta)
    pref = _check_preference(preference, size)
    out_dtype = gram.dtype if gram.dtype.is_floating_point else torch.float64
    if size == 1:
        lam = np.ones(1)
    elif size == 2:
        lam = _closed_form_2(matrix, beta, pref)
    else:
        lam = _wolfe_min_norm_point(_augmented_gram(matrix, beta, pref), pref)
    return torch.as_tensor(lam, dtype=out_dtype, device=gram.device)


def effective_beta(gram: torch.Tensor, beta: float, scale: BetaScale = "relative") -> float:
    """The absolute beta to pass to :func:`firm_weights`.

    ``relative`` multiplies ``beta`` by the mean squared gradient norm (mean of diag(gram)), so a
    given beta means the same balance between "follow the gradients" and "stay near p" whatever
    the model, loss scale or training phase; that makes sweeps portable. ``absolute`` returns
    ``beta`` unchanged (the paper's formulation).
    """
    beta = _check_beta(beta)
    if scale == "absolute":
        return beta
    if scale != "relative":
        raise ValueError(f"beta scale {scale!r}: must be 'absolute' or 'relative'")
    mean_sq_norm = float(torch.diagonal(_as_gram_tensor(gram).detach()).double().mean())
    return beta * max(mean_sq_norm, 0.0)


def firm_objective(
    gram: torch.Tensor, beta: float, lam: torch.Tensor, preference: torch.Tensor | None = None
) -> float:
    """Value of ``1/2 l^T gram l + beta/2 ||l - p||^2`` (float64)."""
    matrix = _as_gram(gram)
    pref = _check_preference(preference, matrix.shape[0])
    x = np.asarray(lam.detach().cpu().double().numpy() if torch.is_tensor(lam) else lam, float)
    return float(0.5 * x @ matrix @ x + 0.5 * beta * np.sum((x - pref) ** 2))


def kkt_residual(
    gram: torch.Tensor, beta: float, lam: torch.Tensor, preference: torch.Tensor | None = None
) -> float:
    """Scale-free KKT residual of ``lam`` for the FIRM problem (0 at the exact optimum).

    With h = gram l + beta (l - p) and nu = l.h, optimality on the simplex means h_m = nu where
    l_m > 0 and h_m >= nu everywhere. The residual is the largest violation of those conditions
    and of feasibility, divided by the problem's scale (largest diagonal of the augmented Gram).
    """
    matrix = _as_gram(gram)
    pref = _check_preference(preference, matrix.shape[0])
    x = np.asarray(lam.detach().cpu().double().numpy() if torch.is_tensor(lam) else lam, float)
    scale = _scale(_augmented_gram(matrix, beta, pref))
    grad = matrix @ x + beta * (x - pref)
    nu = float(x @ grad)
    stationarity = np.abs(grad - nu) * np.clip(x, 0.0, None)  # complementary slackness, weighted
    dual = np.clip(nu - grad, 0.0, None)
    primal = max(abs(float(x.sum()) - 1.0), float(np.clip(-x, 0.0, None).max(initial=0.0)))
    worst = max(float(stationarity.max(initial=0.0)), float(dual.max(initial=0.0)))
    return worst / scale + primal if scale > 0 else primal


# ----------------------------------------------------------------------------------------------
# validation


def _as_gram_tensor(gram: torch.Tensor) -> torch.Tensor:
    if not torch.is_tensor(gram):
        raise TypeError(f"gram must be a torch.Tensor, got {type(gram).__name__}")
    if gram.dim() != 2 or gram.shape[0] != gram.shape[1] or gram.shape[0] == 0:
        raise ValueError(f"gram must be a non-empty square [M, M] matrix, got {tuple(gram.shape)}")
    return gram


def _as_gram(gram: torch.Tensor) -> np.ndarray:
    matrix = _as_gram_tensor(gram).detach().cpu().double().numpy()
    if not np.isfinite(matrix).all():
        raise ValueError(
            "gram contains NaN or inf: a per-objective gradient or loss is not finite "
            "(skip this step instead of solving)"
        )
    return 0.5 * (matrix + matrix.T)


def _check_beta(beta: float) -> float:
    beta = float(beta)
    if not math.isfinite(beta) or beta < 0:
        raise ValueError(f"beta = {beta}: must be finite and >= 0")
    return beta


def _check_preference(preference: torch.Tensor | None, size: int) -> np.ndarray:
    if preference is None:
        return np.full(size, 1.0 / size)
    pref = np.asarray(
        preference.detach().cpu().double().numpy() if torch.is_tensor(preference) else preference,
        dtype=float,
    ).reshape(-1)
    if pref.shape[0] != size:
        raise ValueError(f"preference has length {pref.shape[0]}, expected M = {size}")
    if not np.isfinite(pref).all() or (pref < 0).any() or abs(pref.sum() - 1.0) > 1e-6:
        raise ValueError(
            f"preference = {pref.tolist()}: must be a probability vector (entries >= 0, sum 1)"
        )
    return pref / pref.sum()


# ----------------------------------------------------------------------------------------------
# solvers


def _augmented_gram(matrix: np.ndarray, beta: float, pref: np.ndarray) -> np.ndarray:
    """K = G^T G + beta (I - p 1^T - 1 p^T + ||p||^2 1 1^T): Gram of the augmented gradients."""
    size = matrix.shape[0]
    ones = np.ones(size)
    reg = np.eye(size) - np.outer(pref, ones) - np.outer(ones, pref) + (pref @ pref)
    return matrix + beta * reg


def _scale(k: np.ndarray) -> float:
    return float(np.max(np.abs(np.diag(k)))) if k.size else 0.0


def _closed_form_2(matrix: np.ndarray, beta: float, pref: np.ndarray) -> np.ndarray:
    """M = 2: lambda_1 = clip((b - c + 2 beta p_1) / (a + b - 2c + 2 beta), 0, 1).

    Minimizing over lambda_1 = t the 1-D quadratic 1/2 ||t v_1 + (1 - t) v_2||^2 of the augmented
    gradients gives t = (K22 - K12) / (K11 + K22 - 2 K12); substituting K gives the formula.
    All terms are divided by the largest magnitude first, so nothing overflows or underflows.
    """
    a, b, c = float(matrix[0, 0]), float(matrix[1, 1]), float(matrix[0, 1])
    scale = max(abs(a), abs(b), abs(c), beta)
    if scale == 0.0:
        return pref.copy()
    a, b, c, beta_s = a / scale, b / scale, c / scale, beta / scale
    denom = a + b - 2.0 * c + 2.0 * beta_s
    if denom <= _DEGENERATE_TOL:
        # g_1 == g_2 and beta == 0: every lambda is optimal; the preference is the natural pick.
        return pref.copy()
    t = (b - c + 2.0 * beta_s * pref[0]) / denom
    t = min(1.0, max(0.0, t))
    return np.array([t, 1.0 - t])


def _wolfe_min_norm_point(k: np.ndarray, pref: np.ndarray) -> np.ndarray:
    """Weights of the minimum-norm point of conv{v_1..v_M} given only K = V^T V.

    Wolfe's algorithm: keep a "corral" S of affinely independent points whose affine hull's
    min-norm point lies in their convex hull; add the point most aligned against the current x
    (the Frank-Wolfe vertex) until none improves; when the new affine minimizer leaves the hull,
    step to the hull boundary and drop the points whose weight reached zero. Finite termination.
    """
    size = k.shape[0]
    scale = _scale(k)
    if scale == 0.0:
        return pref.copy()  # every gradient is zero and beta == 0: lambda is free
    k = k / scale
    start = int(np.argmin(np.diag(k)))
    lam = np.zeros(size)
    lam[start] = 1.0
    corral = [start]
    for _ in range(20 * size + 20):
        k_lam = k @ lam
        xx = float(lam @ k_lam)
        j = int(np.argmin(k_lam))
        if xx - k_lam[j] <= _OPTIMALITY_TOL * max(1.0, abs(xx)) or j in corral:
            break
        corral.append(j)
        for _minor in range(size + 1):
            alpha = _affine_minimizer(k[np.ix_(corral, corral)])
            if np.all(alpha > _POSITIVE_TOL):
                lam[:] = 0.0
                lam[corral] = alpha
                break
            current = lam[corral]
            leaving = alpha <= _POSITIVE_TOL
            denom = current[leaving] - alpha[leaving]
            with np.errstate(divide="ignore", invalid="ignore"):
                ratios = np.where(denom > 0, current[leaving] / denom, np.inf)
            theta = float(np.clip(np.min(ratios), 0.0, 1.0))
            current = current + theta * (alpha - current)
            keep = current > _POSITIVE_TOL
            if keep.all():  # rounding: force out the most negative affine weight
                keep[int(np.argmin(alpha))] = False
            corral = [idx for idx, kept in zip(corral, keep, strict=True) if kept]
            lam[:] = 0.0
            lam[corral] = current[keep] / current[keep].sum()
            if len(corral) == 1:
                break
    lam = np.clip(lam, 0.0, None)
    return lam / lam.sum()


def _affine_minimizer(k_s: np.ndarray) -> np.ndarray:
    """argmin_a a^T K_S a subject to sum(a) = 1 (the min-norm point of the corral's affine hull).

    Solves the KKT system [[K_S, 1], [1^T, 0]] [a; mu] = [0; 1]; lstsq keeps it defined when
    rounding makes the corral slightly affinely dependent.
    """
    n = k_s.shape[0]
    system = np.zeros((n + 1, n + 1))
    system[:n, :n] = k_s
    system[:n, n] = 1.0
    system[n, :n] = 1.0
    rhs = np.zeros(n + 1)
    rhs[n] = 1.0
    solution = np.linalg.lstsq(system, rhs, rcond=1e-13)[0]
    alpha = solution[:n]
    return alpha / alpha.sum() if abs(alpha.sum()) > 0 else np.full(n, 1.0 / n)
