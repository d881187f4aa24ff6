"""Secure aggregation (Bonawitz et al. 2017, Fig. 4) checked against its definitions.

References computed independently of the code under test: the plain float64 sum of the clipped
inputs, the integer sum of the encodings, polynomial evaluation and brute-force enumeration for
Shamir sharing, AES-ECB counter blocks for the AES-CTR PRG.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from scipy.stats import chi2

from firm_ray.privacy.secagg import (
    ClientKeys,
    SecAggClient,
    SecAggParams,
    SecAggServer,
    decode_sum,
    encode,
    encode_counted,
    fixed_point_scale,
    pack,
    unpack,
)
from firm_ray.privacy.secagg_primitives import (
    _CHUNK,
    PRIME,
    SHARE_BYTES,
    Randomness,
    add_prg,
    prg,
    shamir_reconstruct,
    shamir_split,
)

P = 10_000


def _seed(i: int, salt: int = 0) -> bytes:
    return bytes([i, salt]) * 16


def _inputs(n: int, seed: int = 0) -> dict[int, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {i: torch.randn(P, generator=g) * 0.6 for i in range(n)}  # ~10 % beyond clip=1


def _round(
    n: int,
    *,
    before_share: frozenset[int] = frozenset(),
    before_mask: frozenset[int] = frozenset(),
    silent: frozenset[int] = frozenset(),
    bits: int = 32,
    seed: int = 0,
):
    """One full round; the ids in each set drop out at that step. Returns all a test needs."""
    params = SecAggParams(clip=1.0, threshold=n // 2 + 1, bits=bits)
    clients = {i: SecAggClient(i, round_seed=_seed(i, seed)) for i in range(n)}
    server = SecAggServer(params, n)
    roster = server.collect_keys({i: c.advertise() for i, c in clients.items()})
    shared = {i: c.share_keys(roster, params) for i, c in clients.items() if i not in before_share}
    routed = server.route_shares(shared)
    xs, g = _inputs(n, seed), torch.Generator().manual_seed(seed + 1)
    encoded, masked = {}, {}
    for i, box in routed.items():
        encoded[i] = encode(xs[i], params, n, g)
        if i not in before_mask:
            masked[i] = clients[i].masked_input(encoded[i], box, params)
            server.add_masked(i, masked[i])
    survivors, dropped = server.unmask_request()
    responses = {i: clients[i].unmask(survivors, dropped) for i in survivors if i not in silent}
    return params, server, clients, xs, encoded, masked, survivors, dropped, responses


@pytest.mark.parametrize("n", [2, 3, 5, 8])
def test_sum_equals_plain_sum_without_dropout(n: int) -> None:
    params, server, _, xs, encoded, _, survivors, dropped, responses = _round(n, seed=n)
    total = server.finish(responses)
    assert survivors == list(range(n)) and dropped == [] and server.contributors == tuple(range(n))
    exact = sum(encoded[i].astype(object) for i in range(n))
    assert np.array_equal(total.astype(object), exact % 2**params.bits)  # the exact ring sum
    plain = sum(xs[i].double().clamp(-1.0, 1.0) for i in range(n))
    error = (decode_sum(total, params, n) - plain).abs().max().item()
    assert error < n / fixed_point_scale(params, n)


@pytest.mark.parametrize(
    ("drops", "expected"),
    [
        ({"before_share": frozenset({1})}, [0, 2, 3, 4]),
        ({"before_mask": frozenset({3})}, [0, 1, 2, 4]),
        ({"before_mask": frozenset({0, 4})}, [1, 2, 3]),
        ({"before_share": frozenset({2}), "before_mask": frozenset({4})}, [0, 1, 3]),
        ({"before_mask": frozenset({3}), "silent": frozenset({1})}, [0, 1, 2, 4]),
    ],
)
def test_dropouts_recover_the_survivors_sum(drops: dict, expected: list[int]) -> None:
    params, server, _, xs, encoded, _, survivors, _, responses = _round(5, **drops)
    assert survivors == expected
    total = server.finish(responses)
    exact = sum(encoded[i].astype(object) for i in expected) % 2**params.bits
    assert np.array_equal(total.astype(object), exact)
    plain = sum(xs[i].double().clamp(-1.0, 1.0) for i in expected)
    assert (decode_sum(total, params, 5) - plain).abs().max() < 5 / fixed_point_scale(params, 5)


def test_fewer_than_t_answers_raise() -> None:
    *_, server, _, _, _, _, _, _, responses = _round(5, before_mask=frozenset({3}))
    with pytest.raises(ValueError, match="2 unmasking responses, below t=3: redo the round"):
        server.finish({i: responses[i] for i in (0, 1)})
    with pytest.raises(ValueError, match="below t=3"):
        _round(5, before_mask=frozenset({0, 1, 2}))  # only 2 masked inputs: unmask_request


def test_server_never_holds_an_unmasked_input() -> None:
    _, server, _, _, encoded, masked, *_ = _round(5, before_mask=frozenset({2}))

    def leaves(obj, depth=0):
        if depth > 4:
            return
        yield obj
        children = []
        if isinstance(obj, dict):
            children = [*obj.keys(), *obj.values()]
        elif isinstance(obj, (list, tuple, set, frozenset)):
            children = list(obj)
        elif hasattr(obj, "__dict__"):
            children = list(vars(obj).values())
        for child in children:
            yield from leaves(child, depth + 1)

    held = list(leaves(server))
    arrays = [a for a in held if isinstance(a, np.ndarray)]
    assert len(arrays) == 1  # the running sum only: no individual y, no x
    assert not any(np.array_equal(arrays[0], v) for v in [*masked.values(), *encoded.values()])
    assert not any(isinstance(a, (X25519PrivateKey, torch.Tensor)) for a in held)
    assert {len(a) for a in held if isinstance(a, bytes)} == {32}  # public keys only


def test_masked_input_looks_uniform() -> None:
    _, _, _, _, encoded, masked, *_ = _round(3)
    critical = chi2.ppf(1 - 1e-6, df=15)

    def statistic(v: np.ndarray) -> float:  # top 4 bits of a 32-bit value: 16 equal bins
        counts = np.bincount((v >> np.uint64(28)).astype(np.int64), minlength=16)
        return float(((counts - v.size / 16) ** 2 / (v.size / 16)).sum())

    for i in range(3):
        assert statistic(masked[i]) < critical
        assert statistic(encoded[i]) > 100 * critical  # the plain encoding is far from uniform
        assert np.mean(masked[i] == encoded[i]) < 1e-3


def test_a_client_never_discloses_both_shares_of_a_peer() -> None:
    n = 5
    _, _, clients, *_ = _round(n)
    survivors = list(range(n))
    answer = clients[0].unmask(survivors, [])  # b shares of everybody (again: allowed)
    assert answer == clients[0].unmask(survivors, [])
    for victim in range(1, n):  # a server now claiming a survivor dropped, to learn s_sk
        others = [v for v in survivors if v != victim]
        with pytest.raises(ValueError, match="refusing to disclose both shares"):
            clients[0].unmask(others, [victim])
    # and in the other order: after disclosing s_sk of a dropped peer, never its b
    *_, clients2, _, _, _, survivors2, dropped2, _ = _round(n, before_mask=frozenset({4}))
    clients2[0].unmask(survivors2, dropped2)
    with pytest.raises(ValueError, match="refusing to disclose both shares"):
        clients2[0].unmask([*survivors2, 4], [])


def test_disclosed_shares_are_the_right_secret() -> None:
    """Survivors' answers hold shares of b_v (v alive) and of s_sk_v (v dropped), nothing else."""
    *_, clients, _, _, _, _, dropped, responses = _round(5, before_mask=frozenset({3}))
    for v in range(5):
        shares = {r + 1: int.from_bytes(resp[v], "big") for r, resp in responses.items()}
        secret = shamir_reconstruct(shares, 3).to_bytes(32, "big")
        if v in dropped:
            assert secret == clients[v]._s_sk.private_bytes_raw()
        else:
            assert secret == clients[v]._b


def test_unmask_rejects_inconsistent_requests() -> None:
    *_, clients, _, _, _, _, _, _ = _round(5, before_mask=frozenset({3}))
    with pytest.raises(ValueError, match="do not partition"):
        clients[0].unmask([0, 1, 2], [3])  # 4 missing
    with pytest.raises(ValueError, match="do not partition"):
        clients[0].unmask([1, 2, 4], [0, 3])  # u itself declared dropped
    with pytest.raises(ValueError, match="distinct"):
        clients[0].unmask([0, 1, 2, 4, 3], [3])


def test_late_masked_input_is_refused() -> None:
    """A y arriving after its sender was declared dropped would be unmaskable: refused."""
    n, params = 5, SecAggParams(clip=1.0, threshold=3)
    clients = {i: SecAggClient(i, round_seed=_seed(i)) for i in range(n)}
    server = SecAggServer(params, n)
    roster = server.collect_keys({i: c.advertise() for i, c in clients.items()})
    routed = server.route_shares({i: c.share_keys(roster, params) for i, c in clients.items()})
    zero = encode(torch.zeros(P), params, n, None)
    for i in range(4):
        server.add_masked(i, clients[i].masked_input(zero, routed[i], params))
    assert server.unmask_request() == ([0, 1, 2, 3], [4])
    with pytest.raises(ValueError, match="until unmasking"):
        server.add_masked(4, clients[4].masked_input(zero, routed[4], params))


def test_tampered_or_misrouted_share_ciphertext_is_rejected() -> None:
    n, params = 3, SecAggParams(clip=1.0, threshold=2)
    clients = {i: SecAggClient(i, round_seed=_seed(i)) for i in range(n)}
    server = SecAggServer(params, n)
    roster = server.collect_keys({i: c.advertise() for i, c in clients.items()})
    routed = server.route_shares({i: c.share_keys(roster, params) for i, c in clients.items()})
    zero = encode(torch.zeros(8), params, n, None)
    box = dict(routed[0])
    box[1] = box[1][:-1] + bytes([box[1][-1] ^ 1])  # one flipped bit
    clients[0].masked_input(zero, box, params)
    with pytest.raises(ValueError, match="failed authentication"):
        clients[0].unmask([0, 1, 2], [])
    box = {0: routed[2][0], 1: routed[0][1]}  # 1's ciphertext for client 0, routed to client 2
    clients[2].masked_input(zero, box, params)
    with pytest.raises(ValueError, match="failed authentication"):
        clients[2].unmask([0, 1, 2], [])


def test_threshold_and_roster_checks() -> None:
    with pytest.raises(ValueError, match="n/2 < t <= n"):
        SecAggServer(SecAggParams(clip=1.0, threshold=3), 6)
    params = SecAggParams(clip=1.0, threshold=2)
    a, b = SecAggClient(0, _seed(0)), SecAggClient(1, _seed(0))  # same seed: same keys
    with pytest.raises(ValueError, match="distinct 32-byte"):
        SecAggServer(params, 3).collect_keys({0: a.advertise(), 1: b.advertise()})
    c = SecAggClient(0, _seed(0))
    big = {i: SecAggClient(i, _seed(i)).advertise() for i in range(1, 4)} | {0: c.advertise()}
    with pytest.raises(ValueError, match="t <= n < 2t"):
        c.share_keys(big, params)  # 4 clients with t=2: two disjoint survivor sets possible
    assert SecAggClient(0).advertise() != SecAggClient(0).advertise()  # os.urandom keys
    assert isinstance(a.advertise(), ClientKeys) and len(a.advertise().c_pk) == 32


# --- Shamir sharing -------------------------------------------------------------------------


def _probably_prime(p: int) -> bool:  # Miller-Rabin, 40 fixed bases
    d, r = p - 1, 0
    while d % 2 == 0:
        d, r = d // 2, r + 1
    for a in range(2, 42):
        x = pow(a, d, p)
        if x in (1, p - 1):
            continue
        for _ in range(r - 1):
            x = pow(x, 2, p)
            if x == p - 1:
                break
        else:
            return False
    return True


def test_shamir_field_and_definition() -> None:
    assert PRIME > 2**256 and _probably_prime(PRIME) and PRIME.bit_length() <= SHARE_BYTES * 8
    secret, t, xs = 2**256 - 12345, 4, [1, 2, 3, 5, 8, 13]
    shares = shamir_split(secret, t, xs, Randomness(b"k" * 32))
    stream = Randomness(b"k" * 32)  # the same draws, by hand: f(x) = s + a1 x + a2 x^2 + a3 x^3
    a = [secret] + [stream.below(PRIME) for _ in range(t - 1)]
    assert shares == {x: sum(c * x**k for k, c in enumerate(a)) % PRIME for x in xs}
    for subset in itertools.combinations(xs, t):  # any t shares reconstruct
        assert shamir_reconstruct({x: shares[x] for x in subset}, t) == secret
    for subset in itertools.combinations(xs, t - 1):  # t - 1 do not
        part = {x: shares[x] for x in subset}
        with pytest.raises(ValueError, match="the threshold is 4"):
            shamir_reconstruct(part, t)
        assert shamir_reconstruct(part, t - 1) != secret
    corrupted = dict(shares)
    corrupted[13] = (corrupted[13] + 1) % PRIME
    with pytest.raises(ValueError, match="inconsistent"):
        shamir_reconstruct(corrupted, t)


def test_shamir_t_minus_1_shares_are_independent_of_the_secret() -> None:
    """Brute force over GF(13), t = 3: every secret yields the same distribution of 2 shares."""
    p, t, xs = 13, 3, (2, 7)
    distributions = set()
    for secret in range(p):
        counts: dict[tuple[int, ...], int] = {}
        for coefficients in itertools.product(range(p), repeat=t - 1):
            f = (secret, *coefficients)
            key = tuple(sum(c * x**k for k, c in enumerate(f)) % p for x in xs)
            counts[key] = counts.get(key, 0) + 1
        distributions.add(tuple(sorted(counts.items())))
    assert len(distributions) == 1  # uniform on GF(13)^2 for every secret
    # and the implementation over the small field agrees with the definition
    rand, ref = Randomness(b"s" * 32), Randomness(b"s" * 32)
    shares = shamir_split(5, t, list(range(1, 6)), rand, prime=p)
    a = [5, ref.below(p), ref.below(p)]
    assert shares == {x: (a[0] + a[1] * x + a[2] * x * x) % p for x in range(1, 6)}


# --- PRG, fixed point, wire format ------------------------------------------------------------


@pytest.mark.parametrize("bits", [20, 32, 40, 62])
def test_prg_is_the_aes_ctr_keystream(bits: int) -> None:
    seed, size = bytes(range(32)), 50
    width = 4 if bits <= 32 else 8
    ecb = Cipher(algorithms.AES(seed), modes.ECB()).encryptor()
    blocks = b"".join(ecb.update(i.to_bytes(16, "big")) for i in range(size * width // 16 + 1))
    expect = [int.from_bytes(blocks[k * width : (k + 1) * width], "little") % 2**bits
              for k in range(size)]  # fmt: skip
    assert prg(seed, size, bits).tolist() == expect
    big = 2 * _CHUNK + 7  # across the chunk boundaries: the one-shot keystream
    stream = (
        Cipher(algorithms.AES(seed), modes.CTR(bytes(16))).encryptor().update(bytes(big * width))
    )
    words = np.frombuffer(stream, dtype="<u4" if width == 4 else "<u8").astype(np.uint64)
    assert np.array_equal(prg(seed, big, bits), words & np.uint64(2**bits - 1))
    y = prg(b"y" * 32, big, 62)
    back = add_prg(add_prg(y.copy(), seed, bits), seed, bits, subtract=True)
    assert np.array_equal(back, y)


@pytest.mark.parametrize("bits", [8, 16, 32, 62])
@pytest.mark.parametrize("n", [1, 2, 3, 7, 8])
def test_no_overflow_at_the_default_scale(bits: int, n: int) -> None:
    params = SecAggParams(clip=0.5, threshold=2, bits=bits)
    scale = fixed_point_scale(params, n)
    bound = 2 ** (bits - 1) - 1 - 2 * n  # within ~2 grid steps (or float precision) of the bound
    assert scale * n * 0.5 >= bound * (1 - 2**-50)
    g = torch.Generator().manual_seed(bits * n)
    for sign in (1.0, -1.0):
        x = torch.full((64,), sign * (0.5 + 1e-9), dtype=torch.float64)  # clipped, counted
        for gen in (None, g):  # nearest and stochastic rounding
            codes = [encode_counted(x, params, n, gen) for _ in range(n)]
            assert all(count == 64 for _, count in codes)
            total = sum(c.astype(object) for c, _ in codes) % 2**bits
            decoded = decode_sum(np.array(total, dtype=np.uint64), params, n)
            assert torch.all((decoded - sign * 0.5 * n).abs() <= n / scale)


def test_explicit_scale_overflow_and_bad_inputs_raise() -> None:
    params = SecAggParams(clip=1.0, threshold=2, bits=16, scale=2.0**14)
    with pytest.raises(ValueError, match="overflows the sum of 3 inputs"):
        fixed_point_scale(params, 3)
    with pytest.raises(ValueError, match="2 non-finite values"):
        encode(torch.tensor([0.0, math.nan, math.inf]), SecAggParams(clip=1.0, threshold=2), 2)
    for bad in ({"bits": 63}, {"bits": 4}, {"threshold": 1}, {"clip": -1.0}, {"scale": 0.0}):
        with pytest.raises(ValueError, match="secagg:"):
            SecAggParams(**{"clip": 1.0, "threshold": 2, **bad})


def test_rounding_nearest_and_unbiased_stochastic() -> None:
    params = SecAggParams(clip=1.0, threshold=2, bits=16, scale=1000.0)
    x = torch.full((100_000,), 0.01025)  # 10.25 grid steps
    assert set(encode(x, params, 2, None).tolist()) == {10}
    q = encode(x, params, 2, torch.Generator().manual_seed(0))
    assert set(q.tolist()) == {10, 11} and abs(q.mean() - 10.25) < 0.01  # E[q] = x * scale
    assert encode(torch.tensor([-0.002]), params, 2, None).tolist() == [2**16 - 2]  # two's compl.
    x64 = torch.tensor([0.5, 2.0], dtype=torch.float64)
    encode(x64, params, 2, torch.Generator().manual_seed(1))
    assert x64.tolist() == [0.5, 2.0]  # the caller's tensor is not clipped in place


def test_decode_is_twos_complement_over_the_whole_ring() -> None:
    params = SecAggParams(clip=1.0, threshold=2, bits=8, scale=4.0)
    total = np.arange(256, dtype=np.uint64) + np.uint64(512)  # residues mod 2^8 of 512..767
    expect = [(v if v < 128 else v - 256) / 4.0 for v in range(256)]
    assert decode_sum(total, params, 2).tolist() == expect
    assert total[0] == 512  # not modified in place


@pytest.mark.parametrize("bits", [8, 12, 32, 33, 62])
def test_pack_roundtrip_and_size(bits: int) -> None:
    params = SecAggParams(clip=1.0, threshold=2, bits=bits)
    y = prg(b"p" * 32, 1000, bits)
    data = pack(y, params)
    assert len(data) == math.ceil(bits / 8) * 1000
    assert np.array_equal(unpack(data, params), y)


def test_message_sizes() -> None:
    """Bytes on the wire per message (bits = 32), as the report quotes them."""
    params, _, clients, _, _, masked, _, _, responses = _round(8)
    keys = clients[0].advertise()
    assert len(keys.c_pk) + len(keys.s_pk) == 64
    roster = {i: SecAggClient(i, _seed(i)).advertise() for i in range(8)}
    fresh = SecAggClient(0, _seed(0)).share_keys(roster, params)
    assert {len(ct) for ct in fresh.values()} == {12 + 8 + 2 * SHARE_BYTES + 16}  # 102
    assert {len(s) for r in responses.values() for s in r.values()} == {SHARE_BYTES}
    assert len(pack(masked[0], params)) == 4 * P  # = float32 size at bits <= 32
