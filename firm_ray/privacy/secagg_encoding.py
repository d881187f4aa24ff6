"""Fixed-point encoding of secure aggregation: real vectors <-> integers mod 2^bits.

Secure aggregation (Bonawitz et al. 2017, CCS, §3: "inputs x_u in Z_R") adds integers in the
ring Z_{2^bits}; updates are clipped per coordinate to [-clip, clip], scaled by ``scale`` and
rounded (stochastically, unbiased, or to nearest), and negative values are stored in two's
complement. The sum of n encoded inputs decodes exactly (no wrap) when the scale satisfies
``n * (floor(clip * scale) + 1) <= 2^(bits-1) - 1`` (:func:`fixed_point_scale`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

__all__ = [
    "SecAggParams",
    "decode_sum",
    "encode",
    "encode_counted",
    "fixed_point_scale",
    "pack",
    "unpack",
]


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True, kw_only=True)
class SecAggParams:
    """Public parameters of one SecAgg round, identical on every client and the server.

    ``scale=None`` picks the largest fixed-point scale at which n inputs in [-clip, clip] cannot
    overflow the signed range of Z_{2^bits} (about ``2^(bits-1) / (n * clip)``, see
    :func:`fixed_point_scale`). ``threshold`` is t of the t-of-n Shamir sharing: at least t
    survivors are needed, and any t colluding clients with the server could unmask a client.
    """

    clip: float
    threshold: int
    bits: int = 32
    scale: float | None = None

    def __post_init__(self) -> None:
        if not _is_int(self.bits) or not 8 <= self.bits <= 62:
            raise ValueError(f"secagg: bits must be an int in [8, 62], got {self.bits!r}")
        if not _is_int(self.threshold) or self.threshold < 2:
            raise ValueError(f"secagg: threshold must be an int >= 2, got {self.threshold!r}")
        for name in ("clip", "scale"):
            value = getattr(self, name)
            if value is None and name == "scale":
                continue
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
                raise ValueError(f"secagg: {name} must be a finite number > 0, got {value!r}")

    @property
    def modulus_mask(self) -> np.uint64:
        return np.uint64((1 << self.bits) - 1)


def _fits(scale: float, clip: float, n: int, bits: int) -> bool:
    # Any rounding of x * scale with |x| <= clip lies within floor(clip * scale) + 1 of zero.
    return n * (math.floor(clip * scale) + 1) <= 2 ** (bits - 1) - 1


def fixed_point_scale(params: SecAggParams, n: int) -> float:
    """The scale s of the fixed-point grid; the sum of n encoded inputs never wraps.

    Default: the largest float s with ``n * (floor(clip * s) + 1) <= 2^(bits-1) - 1``, i.e.
    ``s ~= (2^(bits-1) - 1 - n) / (n * clip)``; a resolution of ``1/s`` per input and an error
    below ``n/s`` on the sum. ``n`` is the public number of clients of the round (not the
    survivors), the same on every client. An explicit ``params.scale`` that could overflow raises.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"secagg: n must be an int >= 1, got {n!r}")
    if params.scale is not None:
        if not _fits(params.scale, params.clip, n, params.bits):
            raise ValueError(
                f"secagg: scale {params.scale} overflows the sum of {n} inputs at clip "
                f"{params.clip} in {params.bits} bits"
            )
        return params.scale
    scale = (2 ** (params.bits - 1) - 1 - n) / (n * params.clip)
    while scale > 0 and not _fits(scale, params.clip, n, params.bits):
        scale = math.nextafter(scale, 0.0)
    if scale <= 0:
        raise ValueError(f"secagg: {params.bits} bits cannot hold the sum of {n} inputs")
    return scale


def encode_counted(
    vector: torch.Tensor, params: SecAggParams, n: int, generator: torch.Generator | None = None
) -> tuple[np.ndarray, int]:
    """:func:`encode`, also returning how many coordinates were clipped to [-clip, clip]."""
    scale = fixed_point_scale(params, n)
    # A private float64 copy, then in place: one pass per step over vectors of 1e6..1e7 entries.
    x = vector.detach().reshape(-1).to(device="cpu", dtype=torch.float64, copy=True)
    if not bool(torch.isfinite(x).all()):
        bad = int(x.numel() - torch.isfinite(x).sum())
        raise ValueError(f"secagg: {bad} non-finite values cannot be encoded")
    clipped = int(torch.count_nonzero(x.abs() > params.clip))
    x.clamp_(-params.clip, params.clip).mul_(scale)
    if generator is None:
        x.round_()
    else:  # unbiased stochastic rounding: E[q] = x * scale
        x.add_(torch.rand(x.shape, generator=generator, dtype=torch.float64)).floor_()
    out = x.to(torch.int64).numpy().view(np.uint64)  # two's complement, then mod 2^bits
    return np.bitwise_and(out, params.modulus_mask), clipped


def encode(
    vector: torch.Tensor, params: SecAggParams, n: int, generator: torch.Generator | None = None
) -> np.ndarray:
    """Flatten, clip to [-clip, clip], round to the grid 1/scale: uint64 values mod 2^bits.

    ``generator`` given: stochastic rounding (unbiased); None: round to nearest. Non-finite
    values raise (they have no encoding); use :func:`encode_counted` to count clipped ones.
    """
    return encode_counted(vector, params, n, generator)[0]


def decode_sum(total: np.ndarray, params: SecAggParams, n: int) -> torch.Tensor:
    """Signed (two's complement) value of ``total`` mod 2^bits, divided by the scale: float64."""
    scale = fixed_point_scale(params, n)
    half = np.uint64(1 << (params.bits - 1))
    # (v + 2^(b-1)) mod 2^b - 2^(b-1) maps [0, 2^b) onto [-2^(b-1), 2^(b-1)): two's complement.
    value = np.add(np.asarray(total, dtype=np.uint64), half)
    np.bitwise_and(value, params.modulus_mask, out=value)
    signed = value.view(np.int64)
    np.subtract(signed, np.int64(half), out=signed)
    return torch.from_numpy(signed).to(torch.float64).div_(scale)


def pack(y: np.ndarray, params: SecAggParams) -> bytes:
    """Wire form of a vector mod 2^bits: ceil(bits/8) little-endian bytes per entry."""
    width = (params.bits + 7) // 8
    rows = np.ascontiguousarray(y, dtype="<u8").view(np.uint8).reshape(-1, 8)
    return rows[:, :width].tobytes()


def unpack(data: bytes, params: SecAggParams) -> np.ndarray:
    """Inverse of :func:`pack`."""
    width = (params.bits + 7) // 8
    if len(data) % width:
        raise ValueError(f"secagg: {len(data)} bytes is not a multiple of {width}")
    rows = np.zeros((len(data) // width, 8), dtype=np.uint8)
    rows[:, :width] = np.frombuffer(data, dtype=np.uint8).reshape(-1, width)
    return rows.view("<u8").reshape(-1).astype(np.uint64)
