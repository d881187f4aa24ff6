"""Cryptographic primitives of secure aggregation: Shamir sharing, PRG, key agreement, AE.

The building blocks of Bonawitz, Ivanov, Kreuter, Marcedone, McMahan, Patel, Ramage, Segal,
Seth 2017, "Practical Secure Aggregation for Privacy-Preserving Machine Learning" (CCS), §3 and
§4 (Fig. 4), instantiated as in their §6:

- ``SS``: Shamir t-of-n secret sharing (Shamir 1979) over GF(p), p = 2^256 + 297 (the smallest
  prime above 2^256), so a 32-byte secret (an X25519 private key or a mask seed) is ONE field
  element: :func:`shamir_split`, :func:`shamir_reconstruct`. A share is ``(x, y)`` with the
  x-coordinate ``client_id + 1`` (never 0, which is the secret) and ``y`` 33 big-endian bytes.
- ``KA``: X25519 Diffie-Hellman followed by HKDF-SHA256 with a purpose label
  (:func:`agree`), so the pairwise mask seed and the share-encryption keys never coincide.
- ``AE``: AES-256-GCM with a random 96-bit nonce (:func:`seal`, :func:`open_sealed`).
- ``PRG``: AES-256-CTR keystream under a 32-byte seed, read as little-endian unsigned integers
  (:func:`prg`). AES-CTR is a standard CSPRNG construction (NIST SP 800-90A CTR_DRBG without
  the reseeding) and, with AES-NI, produces hundreds of MB/s in one call of ``cryptography``;
  numpy's Philox/PCG64 would be as fast but are not designed to resist prediction. Each seed
  drives exactly one stream per round (keys are fresh every round), so the fixed zero IV is safe.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Mapping, Sequence

import numpy as np
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

__all__ = [
    "PRIME",
    "SHARE_BYTES",
    "Randomness",
    "add_prg",
    "agree",
    "decode_share",
    "encode_share",
    "open_sealed",
    "pair_header",
    "prg",
    "seal",
    "shamir_reconstruct",
    "shamir_split",
]

PRIME = 2**256 + 297
SHARE_BYTES = 33  # ceil(log2(PRIME) / 8): one share's y-coordinate on the wire
_NONCE = 12
_LABEL = b"firm_ray secagg v1 "
_CHUNK = 1 << 16  # PRG entries per keystream chunk (256 or 512 KiB)


class Randomness:
    """Random bytes from ``os.urandom``, or a reproducible AES-CTR stream from a 32-byte seed.

    The seeded form exists for tests and replayable simulations only: whoever knows the seed
    knows every key and mask of the client that uses it.
    """

    def __init__(self, seed: bytes | None = None) -> None:
        self._stream = None
        if seed is not None:
            key = _hkdf(bytes(seed), b"client randomness")
            self._stream = Cipher(algorithms.AES(key), modes.CTR(bytes(16))).encryptor()

    def bytes(self, n: int) -> bytes:
        return os.urandom(n) if self._stream is None else self._stream.update(bytes(n))

    def below(self, bound: int) -> int:
        """Uniform integer in [0, bound) by rejection sampling (no modulo bias)."""
        nbytes = (bound.bit_length() + 7) // 8
        excess = nbytes * 8 - bound.bit_length()
        while True:
            value = int.from_bytes(self.bytes(nbytes), "big") >> excess
            if value < bound:
                return value


def _hkdf(material: bytes, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_LABEL + info).derive(
        material
    )


def agree(private: X25519PrivateKey, public: bytes, info: bytes) -> bytes:
    """KA.agree: X25519(private, public) then HKDF-SHA256 to a 32-byte key for ``info``."""
    try:
        shared = private.exchange(X25519PublicKey.from_public_bytes(bytes(public)))
    except ValueError as error:  # low-order point: a malformed or malicious public key
        raise ValueError(f"secagg: key agreement failed ({type(error).__name__})") from None
    return _hkdf(shared, info)


def seal(key: bytes, plaintext: bytes, associated: bytes, rand: Randomness) -> bytes:
    """AE.enc: nonce (12 bytes) || AES-256-GCM(plaintext) || tag (16 bytes)."""
    nonce = rand.bytes(_NONCE)
    return nonce + AESGCM(key).encrypt(nonce, plaintext, associated)


def open_sealed(key: bytes, ciphertext: bytes, associated: bytes) -> bytes:
    """AE.dec; a forged, altered or misrouted ciphertext raises a one-line ValueError."""
    try:
        return AESGCM(key).decrypt(ciphertext[:_NONCE], ciphertext[_NONCE:], associated)
    except (InvalidTag, ValueError):
        raise ValueError("secagg: a share ciphertext failed authentication") from None


def add_prg(y: np.ndarray, seed: bytes, bits: int, subtract: bool = False) -> np.ndarray:
    """``y += PRG(seed)`` (or ``-=``) in place, mod 2^64 (so mod 2^bits); returns ``y``.

    The keystream is produced and added in chunks of ``_CHUNK`` entries into one reused buffer:
    no vector-sized temporary, no page faults, the chunk stays in cache. Each entry takes 4
    keystream bytes when ``bits <= 32`` (half the AES work), else 8. The keystream is not
    reduced here: 2^bits divides 2^64, so reducing ``y`` at the end gives the same residue.
    """
    width = 4 if bits <= 32 else 8
    encryptor = Cipher(algorithms.AES(bytes(seed)), modes.CTR(bytes(16))).encryptor()
    zeros = memoryview(bytes(_CHUNK * width))
    buffer = bytearray(_CHUNK * width + 15)  # update_into needs block_size - 1 spare bytes
    op = np.subtract if subtract else np.add
    for start in range(0, y.size, _CHUNK):
        count = min(_CHUNK, y.size - start)
        encryptor.update_into(zeros[: count * width], buffer)
        stream = np.frombuffer(buffer, dtype="<u4" if width == 4 else "<u8", count=count)
        part = y[start : start + count]
        op(part, stream, out=part)
    return y


def prg(seed: bytes, size: int, bits: int) -> np.ndarray:
    """PRG(seed): ``size`` uniform integers mod 2^bits (uint64), the AES-256-CTR keystream
    read as little-endian 4-byte (``bits <= 32``) or 8-byte words, top bits discarded (uniform
    since 2^bits divides 2^32 or 2^64)."""
    out = add_prg(np.zeros(size, dtype=np.uint64), seed, bits)
    return np.bitwise_and(out, np.uint64((1 << bits) - 1), out=out)


def shamir_split(
    secret: int, threshold: int, xs: Sequence[int], rand: Randomness, prime: int = PRIME
) -> dict[int, int]:
    """SS.share: ``{x: f(x)}`` for ``f`` of degree ``threshold - 1`` over GF(prime), f(0) = secret.

    The coefficients ``a_1..a_{t-1}`` are uniform in GF(prime), so any ``t - 1`` shares are
    uniformly distributed whatever the secret (Shamir 1979).
    """
    if not 0 <= secret < prime:
        raise ValueError("secagg: the secret is outside the field")
    if len(set(xs)) != len(xs) or any(not 0 < x < prime for x in xs):
        raise ValueError("secagg: share x-coordinates must be distinct and in (0, prime)")
    if not 1 <= threshold <= len(xs):
        raise ValueError(f"secagg: threshold {threshold} is not in [1, {len(xs)}]")
    coefficients = [secret] + [rand.below(prime) for _ in range(threshold - 1)]
    shares = {}
    for x in xs:
        y = 0
        for a in reversed(coefficients):  # Horner
            y = (y * x + a) % prime
        shares[x] = y
    return shares


def _lagrange_at(points: Sequence[tuple[int, int]], at: int, prime: int) -> int:
    total = 0
    for i, (xi, yi) in enumerate(points):
        num, den = 1, 1
        for j, (xj, _) in enumerate(points):
            if j != i:
                num = num * (at - xj) % prime
                den = den * (xi - xj) % prime
        total = (total + yi * num * pow(den, -1, prime)) % prime
    return total


def shamir_reconstruct(shares: Mapping[int, int], threshold: int, prime: int = PRIME) -> int:
    """SS.recon: f(0) by Lagrange interpolation through ``threshold`` of the shares.

    Shares beyond the threshold are checked against the interpolated polynomial; a share off
    it (corrupted in transit, or a lying client) raises instead of yielding a wrong key.
    """
    if len(shares) < threshold:
        raise ValueError(f"secagg: {len(shares)} shares, the threshold is {threshold}")
    points = sorted(shares.items())
    basis = points[:threshold]
    for x, y in points[threshold:]:
        if _lagrange_at(basis, x, prime) != y % prime:
            raise ValueError("secagg: the shares are inconsistent (a corrupted share)")
    return _lagrange_at(basis, 0, prime)


def encode_share(y: int) -> bytes:
    return y.to_bytes(SHARE_BYTES, "big")


def decode_share(data: bytes) -> int:
    if len(data) != SHARE_BYTES:
        raise ValueError(f"secagg: a share must be {SHARE_BYTES} bytes, got {len(data)}")
    return int.from_bytes(data, "big")


def pair_header(sender: int, recipient: int) -> bytes:
    """``u || v`` as 2 x uint32: authenticated with every share ciphertext (Fig. 4, round 1)."""
    return struct.pack(">II", sender, recipient)
