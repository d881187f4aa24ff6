"""Secure aggregation of DP-FedAvg updates: round parameters, and updates <-> one flat vector.

Bonawitz et al. 2017 (CCS, §3) aggregate one vector x_u in Z_R per client; DP-FedAvg (McMahan
et al. 2018) sums clipped deltas. Here a client's whole contribution (fmgda: its M deltas
concatenated, so no mask is ever reused across streams) is ONE vector, and the server splits
the decoded sum back along the adapter's layout.

The fixed-point range (per coordinate) must cover every coordinate a client can send: a delta
clipped to L2 norm C has |x_j| <= C; distributed DP adds N(0, s^2) per coordinate
(s = sigma C / sqrt(k)), so the range is C + ``NOISE_TAILS`` s; a coordinate beyond it is
clipped by the encoding and counted (``encode_counted``), expected about 2e-9 of them per
coordinate at 6 s. The threshold is t = k // 2 + 1, the smallest t above half the k clients
sampled per round (secagg.py's security argument needs t > n / 2).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from firm_ray.privacy.secagg_encoding import SecAggParams

__all__ = ["NOISE_TAILS", "flatten_deltas", "round_params", "split_sum", "threshold_of"]

NOISE_TAILS = 6.0


def threshold_of(clients: int) -> int:
    """t = k // 2 + 1: a majority of the round's k sampled clients (k >= 2)."""
    if isinstance(clients, bool) or not isinstance(clients, int) or clients < 2:
        raise ValueError(f"secagg: a secure round needs k >= 2 clients, got {clients!r}")
    return clients // 2 + 1


def round_params(clip: float, local_noise_std: float, clients: int, bits: int) -> SecAggParams:
    """The public parameters of a round: range C + 6 s per coordinate, t = k // 2 + 1."""
    if not local_noise_std >= 0:
        raise ValueError(f"secagg: local_noise_std must be >= 0, got {local_noise_std!r}")
    return SecAggParams(
        clip=float(clip) + NOISE_TAILS * float(local_noise_std),
        threshold=threshold_of(clients),
        bits=bits,
    )


def flatten_deltas(
    deltas: Sequence[Mapping[str, torch.Tensor]], order: Sequence[str]
) -> torch.Tensor:
    """The deltas' tensors, each in ``order`` (the adapter's key order), flattened and
    concatenated into one float64 vector: delta 0's tensors first, then delta 1's ..."""
    if not deltas:
        raise ValueError("secagg: no delta to flatten")
    parts = []
    for delta in deltas:
        if set(delta) != set(order):
            raise ValueError("secagg: a delta's tensors are not the adapter's")
        parts += [delta[name].detach().reshape(-1).to("cpu", torch.float64) for name in order]
    return torch.cat(parts)


def split_sum(
    vector: torch.Tensor, layout: Mapping[str, torch.Size | Sequence[int]]
) -> list[dict[str, torch.Tensor]]:
    """Inverse of :func:`flatten_deltas` for a vector of M deltas (M from its length):
    ``layout`` maps each tensor name, in the flattening order, to its shape. Views of
    ``vector``."""
    sizes = [(name, torch.Size(shape)) for name, shape in layout.items()]
    per = sum(shape.numel() for _, shape in sizes)
    if per == 0 or vector.dim() != 1 or vector.numel() % per:
        raise ValueError(
            f"secagg: a sum of {vector.numel()} entries is no whole number of {per}-entry deltas"
        )
    out, at = [], 0
    for _ in range(vector.numel() // per):
        delta = {}
        for name, shape in sizes:
            delta[name] = vector[at : at + shape.numel()].view(shape)
            at += shape.numel()
        out.append(delta)
    return out
