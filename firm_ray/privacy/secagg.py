"""Secure aggregation (SecAgg), simulated faithfully: the server only ever holds masked vectors.

Bonawitz, Ivanov, Kreuter, Marcedone, McMahan, Patel, Ramage, Segal, Seth 2017, "Practical
Secure Aggregation for Privacy-Preserving Machine Learning" (CCS), Fig. 4, honest-but-curious
variant (no signatures, so no ConsistencyCheck round: the server is trusted to send every client
the same survivor list). Inputs are fixed-point integers in Z_{2^bits} (:func:`encode`). A round:

0. AdvertiseKeys: client u -> server ``ClientKeys(c_pk, s_pk)`` (2 X25519 keys, 64 bytes); the
   server broadcasts the roster U1 (>= t clients).
1. ShareKeys: u Shamir-shares (t-of-|U1|) its mask key ``s_sk`` and its self-mask seed ``b_u``;
   for each v in U1 \\ {u} it sends ``AE(KA(c_sk_u, c_pk_v), u||v||share(s_sk_u)||share(b_u))``
   (102 bytes). The server routes to each v of U2 (those who sent) the ciphertexts for it.
2. MaskedInputCollection: u -> server
   ``y_u = x_u + PRG(b_u) + sum_{v in U2, v>u} PRG(s_uv) - sum_{v in U2, v<u} PRG(s_uv)``
   mod 2^bits with ``s_uv = KA(s_sk_u, s_pk_v)`` (so the pairwise masks cancel in the sum);
   ``ceil(bits/8) * P`` bytes with :func:`pack`. The server adds y_u to a running sum and drops
   it. U3: those whose y arrived.
3. Unmasking: the server sends (U3, U2 \\ U3); u answers, per peer v, the share of ``b_v`` if v
   survived, the share of ``s_sk_v`` if v dropped, NEVER both for one v (else the server learns
   x_v: the double-masking argument of §3). The server, from >= t answers, removes the self masks
   of U3 and the dropped clients' pairwise masks: the exact sum of the x_u of U3, mod 2^bits.

Security (Bonawitz §6, honest-but-curious): the server, colluding with fewer than t clients,
learns only the sum over U3. ``threshold`` must also exceed half the roster: two disjoint sets of
t answering clients cannot exist, so a server telling some clients that v dropped and others that
v survived cannot collect t shares of both of v's secrets. Dropouts after masking are handled;
with fewer than t unmasking answers, :meth:`SecAggServer.finish` raises and the round must be
redone without the dropped clients.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from firm_ray.privacy.secagg_encoding import (
    SecAggParams,
    decode_sum,
    encode,
    encode_counted,
    fixed_point_scale,
    pack,
    unpack,
)
from firm_ray.privacy.secagg_primitives import (
    SHARE_BYTES,
    Randomness,
    add_prg,
    agree,
    decode_share,
    encode_share,
    open_sealed,
    pair_header,
    seal,
    shamir_reconstruct,
    shamir_split,
)

__all__ = [
    "ClientKeys",
    "SecAggClient",
    "SecAggParams",
    "SecAggServer",
    "decode_sum",
    "encode",
    "encode_counted",
    "fixed_point_scale",
    "pack",
    "unpack",
]

_MASK_INFO = b"pairwise mask"
_SHARE_INFO = b"share encryption "
_MAX_ID = 2**32 - 2  # ids travel as uint32 and the Shamir x-coordinate is id + 1


@dataclass(frozen=True)
class ClientKeys:
    """Round 0 message, client -> server -> all: two raw X25519 public keys (32 bytes each)."""

    c_pk: bytes
    s_pk: bytes


def _check_ids(ids: object, what: str) -> None:
    for i in ids:  # type: ignore[attr-defined]
        if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i <= _MAX_ID:
            raise ValueError(f"secagg: {what} has a client id that is not an int in [0, 2^32-2]")


def _check_vector(y: np.ndarray, params: SecAggParams, what: str) -> np.ndarray:
    if not isinstance(y, np.ndarray) or y.dtype != np.uint64 or y.ndim != 1:
        raise ValueError(f"secagg: {what} must be a 1-D uint64 array")
    if y.size and int(y.max()) > int(params.modulus_mask):
        raise ValueError(f"secagg: {what} has values outside Z_2^{params.bits}")
    return y


class SecAggClient:
    """One client for one round: holds its secret keys and the shares it received.

    Keys and randomness come from ``os.urandom``; ``round_seed`` (tests, replays) derives them
    from a seed that must be secret and unique per client and round.
    """

    def __init__(self, client_id: int, round_seed: bytes | None = None) -> None:
        _check_ids([client_id], "the client")
        self.client_id = client_id
        self._rand = Randomness(round_seed)
        self._c_sk = X25519PrivateKey.from_private_bytes(self._rand.bytes(32))
        self._s_sk = X25519PrivateKey.from_private_bytes(self._rand.bytes(32))
        self._b = self._rand.bytes(32)  # self-mask seed b_u
        self._keys = ClientKeys(
            self._c_sk.public_key().public_bytes_raw(), self._s_sk.public_key().public_bytes_raw()
        )
        self._params: SecAggParams | None = None
        self._roster: dict[int, ClientKeys] = {}
        self._own_b_share = b""
        self._inbox: dict[int, bytes] = {}
        self._u2: frozenset[int] = frozenset()
        self._masked = False
        self._revealed: dict[int, str] = {}  # peer -> "b" or "s": what was ever disclosed

    def advertise(self) -> ClientKeys:
        """Round 0: the two public keys (c_pk for share encryption, s_pk for the masks)."""
        return self._keys

    def _share_key(self, peer: int, sender: int, recipient: int) -> bytes:
        info = _SHARE_INFO + pair_header(sender, recipient)
        return agree(self._c_sk, self._roster[peer].c_pk, info)

    def share_keys(
        self, roster: Mapping[int, ClientKeys], params: SecAggParams
    ) -> dict[int, bytes]:
        """Round 1: ``{v: AE(u||v||share of s_sk_u||share of b_u)}`` for every other v of U1."""
        u, t = self.client_id, params.threshold
        if self._params is not None:
            raise ValueError("secagg: share_keys was already called this round")
        _check_ids(roster, "the roster")
        if roster.get(u) != self._keys:
            raise ValueError("secagg: the roster does not hold this client's own keys")
        if not t <= len(roster) < 2 * t:
            raise ValueError(f"secagg: roster of {len(roster)} needs t={t} with t <= n < 2t")
        public = [k for keys in roster.values() for k in (keys.c_pk, keys.s_pk)]
        if len(set(public)) != len(public):
            raise ValueError("secagg: the roster repeats a public key")
        self._params, self._roster = params, dict(roster)
        xs = [v + 1 for v in sorted(roster)]
        s_int = int.from_bytes(self._s_sk.private_bytes_raw(), "big")
        s_shares = shamir_split(s_int, t, xs, self._rand)
        b_shares = shamir_split(int.from_bytes(self._b, "big"), t, xs, self._rand)
        self._own_b_share = encode_share(b_shares[u + 1])
        out = {}
        for v in sorted(roster):
            if v != u:
                header = pair_header(u, v)
                plain = header + encode_share(s_shares[v + 1]) + encode_share(b_shares[v + 1])
                out[v] = seal(self._share_key(v, u, v), plain, header, self._rand)
        return out

    def _mask_seed(self, v: int) -> bytes:
        return agree(self._s_sk, self._roster[v].s_pk, _MASK_INFO)

    def masked_input(
        self, encoded: np.ndarray, ciphertexts: Mapping[int, bytes], params: SecAggParams
    ) -> np.ndarray:
        """Round 2: y_u (uint64 mod 2^bits), masked for U2 = the senders of ``ciphertexts`` + u."""
        u = self.client_id
        if self._params is None or self._masked:
            raise ValueError("secagg: masked_input needs share_keys first, and runs once")
        if params != self._params:
            raise ValueError("secagg: the parameters changed within the round")
        senders = set(ciphertexts)
        if not senders <= set(self._roster) - {u}:
            raise ValueError("secagg: a share ciphertext comes from outside the roster")
        if len(senders) + 1 < params.threshold:
            raise ValueError(f"secagg: {len(senders) + 1} clients left, below t={params.threshold}")
        y = _check_vector(encoded, params, "the encoded input").copy()
        add_prg(y, self._b, params.bits)
        for v in sorted(senders):
            add_prg(y, self._mask_seed(v), params.bits, subtract=v < u)
        self._inbox = dict(ciphertexts)
        self._u2, self._masked = frozenset(senders | {u}), True
        return np.bitwise_and(y, params.modulus_mask, out=y)

    def unmask(self, survivors: list[int], dropped: list[int]) -> dict[int, bytes]:
        """Round 3: per v of U2, the share of b_v (v survived) or of s_sk_v (v dropped).

        Refuses (one-line ValueError) an inconsistent request: survivors and dropped must
        partition U2 with u a survivor and at least t survivors, and no peer may ever get
        both of its shares disclosed, across repeated requests too.
        """
        u, survive, drop = self.client_id, set(survivors), set(dropped)
        if not self._masked or self._params is None:
            raise ValueError("secagg: unmask needs masked_input first")
        if len(survive) != len(survivors) or len(drop) != len(dropped) or survive & drop:
            raise ValueError("secagg: survivors and dropped must be distinct ids")
        if survive | drop != self._u2 or u not in survive:
            raise ValueError("secagg: survivors and dropped do not partition this client's U2")
        if len(survive) < self._params.threshold:
            raise ValueError(f"secagg: {len(survive)} survivors, below t={self._params.threshold}")
        wants = {v: ("b" if v in survive else "s") for v in self._u2}
        if any(self._revealed.get(v, kind) != kind for v, kind in wants.items()):
            raise ValueError("secagg: refusing to disclose both shares of one client")
        out = {u: self._own_b_share}
        for v in sorted(self._u2 - {u}):
            header = pair_header(v, u)
            plain = open_sealed(self._share_key(v, v, u), self._inbox[v], header)
            if len(plain) != 8 + 2 * SHARE_BYTES or plain[:8] != header:
                raise ValueError("secagg: a share ciphertext is malformed")
            start = 8 if wants[v] == "s" else 8 + SHARE_BYTES
            out[v] = plain[start : start + SHARE_BYTES]
        self._revealed.update(wants)
        return out


class SecAggServer:
    """The aggregator's side: routes public keys and ciphertexts, sums masked vectors.

    Holds no secret of any client and no individual y after :meth:`add_masked` returns: only
    the roster's public keys, the id sets U1 ⊇ U2 ⊇ U3, and the running sum mod 2^bits.
    """

    def __init__(self, params: SecAggParams, n_expected: int) -> None:
        if isinstance(n_expected, bool) or not isinstance(n_expected, int):
            raise ValueError(f"secagg: n_expected must be an int, got {n_expected!r}")
        if not params.threshold <= n_expected < 2 * params.threshold:
            raise ValueError(
                f"secagg: threshold {params.threshold} must satisfy n/2 < t <= n for "
                f"n={n_expected} (choose t = {n_expected // 2 + 1})"
            )
        fixed_point_scale(params, n_expected)  # an overflowing explicit scale fails here
        self.params, self.n_expected = params, n_expected
        self._roster: dict[int, ClientKeys] = {}
        self._u2: tuple[int, ...] = ()
        self._u3: set[int] = set()
        self._total: np.ndarray | None = None
        self._closed = False

    @property
    def contributors(self) -> tuple[int, ...]:
        """U3: the clients whose masked input is in the sum (the sum's n for an average)."""
        return tuple(sorted(self._u3))

    def collect_keys(self, keys: Mapping[int, ClientKeys]) -> dict[int, ClientKeys]:
        """Round 0: the roster U1 to broadcast; fewer than t clients or repeated keys raise."""
        if self._roster:
            raise ValueError("secagg: keys were already collected this round")
        _check_ids(keys, "the key messages")
        if not self.params.threshold <= len(keys) <= self.n_expected:
            raise ValueError(
                f"secagg: {len(keys)} key messages, need {self.params.threshold}..{self.n_expected}"
            )
        public = [k for ck in keys.values() for k in (ck.c_pk, ck.s_pk)]
        if any(len(k) != 32 for k in public) or len(set(public)) != len(public):
            raise ValueError("secagg: public keys must be distinct 32-byte X25519 keys")
        self._roster = {i: keys[i] for i in sorted(keys)}
        return dict(self._roster)

    def route_shares(
        self, ciphertexts: Mapping[int, Mapping[int, bytes]]
    ) -> dict[int, dict[int, bytes]]:
        """Round 1: sender -> {recipient: ct} in, recipient -> {sender: ct} out, within U2."""
        if not self._roster or self._u2:
            raise ValueError("secagg: route_shares needs collect_keys first, and runs once")
        for u, box in ciphertexts.items():
            if u not in self._roster or set(box) != set(self._roster) - {u}:
                raise ValueError("secagg: a share message is not addressed to the roster")
        if len(ciphertexts) < self.params.threshold:
            raise ValueError(
                f"secagg: {len(ciphertexts)} clients shared keys, below t={self.params.threshold}"
            )
        self._u2 = tuple(sorted(ciphertexts))
        return {v: {u: ciphertexts[u][v] for u in self._u2 if u != v} for v in self._u2}

    def add_masked(self, client_id: int, y: np.ndarray) -> None:
        """Round 2, streaming: add y to the running sum mod 2^bits and keep nothing else of it."""
        if self._closed or not self._u2:
            raise ValueError("secagg: masked inputs are taken after route_shares, until unmasking")
        if client_id not in self._u2 or client_id in self._u3:
            raise ValueError("secagg: a masked input from outside U2, or sent twice")
        _check_vector(y, self.params, "a masked input")
        if self._total is None:
            self._total = y.copy()
        elif self._total.shape != y.shape:
            raise ValueError(f"secagg: masked input of {y.size} entries, not {self._total.size}")
        else:
            np.add(self._total, y, out=self._total)
            np.bitwise_and(self._total, self.params.modulus_mask, out=self._total)
        self._u3.add(client_id)

    def unmask_request(self) -> tuple[list[int], list[int]]:
        """Round 3 request (survivors U3, dropped U2 \\ U3); closes the masked-input round.

        A late y from a client declared dropped would be unmaskable (its s_sk is revealed), so
        no masked input is accepted after this call.
        """
        if len(self._u3) < self.params.threshold:
            raise ValueError(
                f"secagg: {len(self._u3)} masked inputs, below t={self.params.threshold}: "
                "redo the round without the dropped clients"
            )
        self._closed = True
        return sorted(self._u3), sorted(set(self._u2) - self._u3)

    def finish(self, responses: Mapping[int, Mapping[int, bytes]]) -> np.ndarray:
        """Round 3: the exact sum over U3 of the x_u mod 2^bits, from >= t survivors' shares."""
        if not self._closed or self._total is None:
            raise ValueError("secagg: finish needs unmask_request first")
        survivors, dropped = sorted(self._u3), sorted(set(self._u2) - self._u3)
        t, bits = self.params.threshold, self.params.bits
        if not set(responses) <= self._u3:
            raise ValueError("secagg: an unmasking response from outside the survivors")
        if len(responses) < t:
            raise ValueError(
                f"secagg: {len(responses)} unmasking responses, below t={t}: "
                "redo the round without the dropped clients"
            )
        if any(set(r) != set(self._u2) for r in responses.values()):
            raise ValueError("secagg: an unmasking response does not cover U2")

        def recover(v: int) -> bytes:
            shares = {r + 1: decode_share(bytes(resp[v])) for r, resp in responses.items()}
            secret = shamir_reconstruct(shares, t)
            if secret >= 2**256:
                raise ValueError("secagg: the shares reconstruct no 32-byte secret")
            return secret.to_bytes(32, "big")

        total = self._total.copy()
        for v in survivors:
            add_prg(total, recover(v), bits, subtract=True)
        for d in dropped:
            s_sk = X25519PrivateKey.from_private_bytes(recover(d))
            if s_sk.public_key().public_bytes_raw() != self._roster[d].s_pk:
                raise ValueError("secagg: a reconstructed key does not match its public key")
            for u in survivors:  # u added +PRG(s_ud) if d > u, -PRG(s_ud) if d < u
                seed = agree(s_sk, self._roster[u].s_pk, _MASK_INFO)
                add_prg(total, seed, bits, subtract=d > u)
        return np.bitwise_and(total, self.params.modulus_mask, out=total)
