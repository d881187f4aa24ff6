"""Seeded client partitions: coverage, determinism, heterogeneity, errors and statistics."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest

from firm_ray.config import DataConfig, PartitionConfig
from firm_ray.data import (
    NO_CATEGORY,
    DataError,
    Partition,
    Prompt,
    client_prompts,
    load_prompts,
    partition_prompts,
)

SCHEMES = ["iid", "dirichlet", "natural", "shards"]


def _prompts(sizes: dict[str, int]) -> list[Prompt]:
    """Prompts of several categories, interleaved so category order differs from index order."""
    out = []
    pools = {c: list(range(n)) for c, n in sizes.items()}
    while any(pools.values()):
        for cat, pool in pools.items():
            if pool:
                i = pool.pop(0)
                out.append(Prompt(f"{cat} {i}", cat, f"mem:{len(out) + 1}"))
    return out


PROMPTS = _prompts({"a": 60, "b": 50, "c": 40, "d": 30})  # 180 prompts, 4 categories


def _assert_exact_cover(partition: Partition, n: int) -> None:
    flat = [i for client in partition.clients for i in client]
    assert sorted(flat) == list(range(n)), "every index exactly once"
    assert all(client == sorted(client) for client in partition.clients)


@pytest.mark.parametrize("scheme", SCHEMES)
def test_every_scheme_covers_each_prompt_once_and_is_seeded(scheme):
    cfg = PartitionConfig(scheme=scheme, alpha=0.5)
    k = 4
    part = partition_prompts(PROMPTS, k, cfg, seed=7)
    assert part.num_clients == k
    _assert_exact_cover(part, len(PROMPTS))
    assert all(part.clients), "no empty client"
    assert partition_prompts(PROMPTS, k, cfg, seed=7) == part
    if scheme != "natural":  # natural does not depend on the seed
        assert partition_prompts(PROMPTS, k, cfg, seed=8).clients != part.clients
    # statistics add up
    stats = part.stats
    assert stats.scheme == scheme and stats.num_prompts == len(PROMPTS)
    assert stats.sizes == [len(c) for c in part.clients] and sum(stats.sizes) == len(PROMPTS)
    assert stats.global_counts == {"a": 60, "b": 50, "c": 40, "d": 30}
    for cat in stats.categories:
        assert sum(c.get(cat, 0) for c in stats.client_counts) == stats.global_counts[cat]
    for members, counts in zip(part.clients, stats.client_counts, strict=True):
        assert counts == dict(Counter(PROMPTS[i].category for i in members))


def test_iid_sizes_differ_by_at_most_one():
    for k in (1, 3, 7, 13):
        part = partition_prompts(PROMPTS, k, PartitionConfig(scheme="iid"), seed=0)
        sizes = part.stats.sizes
        assert max(sizes) - min(sizes) <= 1 and sum(sizes) == len(PROMPTS)
        _assert_exact_cover(part, len(PROMPTS))


def test_iid_needs_no_categories():
    prompts = [Prompt(f"p{i}") for i in range(10)]
    part = partition_prompts(prompts, 3, PartitionConfig(scheme="iid"), seed=0)
    assert part.stats.categories == [NO_CATEGORY]
    assert part.stats.global_counts == {NO_CATEGORY: 10}
    assert part.stats.mean_tv == 0.0


def _mean_tv(alpha: float, seeds=range(6)) -> float:
    prompts = _prompts({c: 40 for c in "abcdefgh"})
    cfg = PartitionConfig(scheme="dirichlet", alpha=alpha, allow_empty=True)
    return float(np.mean([partition_prompts(prompts, 5, cfg, s).stats.mean_tv for s in seeds]))


def test_dirichlet_small_alpha_is_more_skewed():
    skewed, near_iid = _mean_tv(0.1), _mean_tv(100.0)
    assert skewed > 0.5 > 0.15 > near_iid, (skewed, near_iid)


def test_dirichlet_retries_so_no_client_is_empty():
    # alpha 0.1 over 6 clients and 8 categories often leaves a client empty on the first draw
    cfg = PartitionConfig(scheme="dirichlet", alpha=0.1)
    prompts = _prompts({c: 25 for c in "abcdefgh"})
    for seed in range(10):
        part = partition_prompts(prompts, 6, cfg, seed)
        assert all(part.clients)
        _assert_exact_cover(part, len(prompts))


def test_dirichlet_empty_client_error_and_allow_empty():
    prompts = _prompts({"a": 20, "b": 20})
    cfg = PartitionConfig(scheme="dirichlet", alpha=0.01)
    with pytest.raises(DataError) as info:
        partition_prompts(prompts, 20, cfg, seed=0)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("scheme 'dirichlet': client ")
    assert "received no prompts (40 prompts over 20 clients)" in message
    assert "larger partition.alpha (now 0.01) or partition.allow_empty: true" in message
    part = partition_prompts(prompts, 20, cfg.model_copy(update={"allow_empty": True}), 0)
    _assert_exact_cover(part, len(prompts))
    assert 0 in part.stats.sizes and part.stats.tv_distances().count(None) > 0


def test_natural_one_category_per_client():
    part = partition_prompts(PROMPTS, 4, PartitionConfig(scheme="natural"), seed=0)
    assert [set(c) for c in part.stats.client_counts] == [{"a"}, {"b"}, {"c"}, {"d"}]
    assert part.stats.sizes == [60, 50, 40, 30]


def test_natural_fewer_clients_keeps_categories_whole_and_balanced():
    prompts = _prompts({"a": 50, "b": 40, "c": 30, "d": 20, "e": 10})
    part = partition_prompts(prompts, 2, PartitionConfig(scheme="natural"), seed=0)
    owners = {}
    for j, counts in enumerate(part.stats.client_counts):
        for cat in counts:
            assert cat not in owners, "a category split over clients"
            owners[cat] = j
    assert owners == {"a": 0, "b": 1, "c": 1, "d": 0, "e": 0}  # loads 80 / 70
    assert part.stats.sizes == [80, 70]


def test_natural_more_clients_than_categories():
    cfg = PartitionConfig(scheme="natural")
    with pytest.raises(DataError) as info:
        partition_prompts(PROMPTS, 6, cfg, seed=0)
    assert str(info.value) == (
        "scheme 'natural' gives each client whole categories: 6 clients but 4 categories "
        "(a, b, c, d); use num_clients <= 4 or partition.allow_empty: true"
    )
    part = partition_prompts(PROMPTS, 6, cfg.model_copy(update={"allow_empty": True}), seed=0)
    assert part.stats.sizes == [60, 50, 40, 30, 0, 0]


def test_shards_limit_categories_per_client():
    prompts = _prompts({c: 50 for c in "abcd"})  # shards of 10 never straddle a category
    cfg = PartitionConfig(scheme="shards", shards_per_client=2)
    part = partition_prompts(prompts, 10, cfg, seed=1)
    _assert_exact_cover(part, len(prompts))
    assert part.stats.sizes == [20] * 10
    assert all(len(counts) <= 2 for counts in part.stats.client_counts)
    iid = partition_prompts(prompts, 10, PartitionConfig(scheme="iid"), seed=1)
    assert part.stats.mean_tv > iid.stats.mean_tv


def test_shards_need_enough_prompts():
    cfg = PartitionConfig(scheme="shards", shards_per_client=3)
    with pytest.raises(DataError, match=r"at least num_clients \* shards_per_client = 4 \* 3 = 12"):
        partition_prompts(PROMPTS[:10], 4, cfg, seed=0)
    part = partition_prompts(PROMPTS[:10], 4, cfg.model_copy(update={"allow_empty": True}), 0)
    _assert_exact_cover(part, 10)


@pytest.mark.parametrize("scheme", ["dirichlet", "natural", "shards"])
def test_non_iid_schemes_need_categories(scheme):
    prompts = [*PROMPTS[:5], Prompt("no category", None, "f.jsonl:9")]
    with pytest.raises(DataError) as info:
        partition_prompts(prompts, 2, PartitionConfig(scheme=scheme), seed=0)
    assert str(info.value) == (
        f"scheme {scheme!r} needs a category for every prompt, but prompt 5 (f.jsonl:9) has "
        "none; set data.category_field (or partition.field), or use scheme 'iid'"
    )


def test_more_clients_than_prompts():
    with pytest.raises(DataError) as info:
        partition_prompts(PROMPTS[:3], 5, PartitionConfig(scheme="iid"), seed=0)
    assert str(info.value) == (
        "scheme 'iid': 3 prompts cannot fill 5 clients; use at most 3 clients or "
        "partition.allow_empty: true"
    )
    cfg = PartitionConfig(scheme="iid", allow_empty=True)
    assert partition_prompts(PROMPTS[:3], 5, cfg, seed=0).stats.sizes.count(0) == 2
    with pytest.raises(DataError, match="no prompts to partition"):
        partition_prompts([], 2, cfg, seed=0)


def test_partition_by_an_extra_field():
    prompts = [Prompt(f"p{i}", "same", f"x:{i}", (("topic", f"t{i % 3}"),)) for i in range(30)]
    cfg = PartitionConfig(scheme="natural", field="topic")
    part = partition_prompts(prompts, 3, cfg, seed=0, category_field_name="category")
    assert [set(c) for c in part.stats.client_counts] == [{"t0"}, {"t1"}, {"t2"}]
    # partition.field equal to data.category_field means Prompt.category
    same = PartitionConfig(scheme="natural", field="category")
    assert partition_prompts(prompts, 1, same, 0, "category").stats.categories == ["same"]
    with pytest.raises(DataError, match=r"needs a field 'topic' for every prompt"):
        partition_prompts(PROMPTS, 2, cfg, seed=0, category_field_name="category")


def test_loaded_file_partitions_by_partition_field(tmp_path):
    rows = [{"prompt": f"q{i}", "category": "x", "topic": f"t{i % 4}"} for i in range(40)]
    path = tmp_path / "p.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    data = DataConfig(
        source="jsonl", path=str(path), partition={"scheme": "natural", "field": "topic"}
    )
    splits = load_prompts(data, seed=0)
    part = partition_prompts(splits.train, 4, data.partition, 0, data.category_field)
    assert sorted(next(iter(c)) for c in part.stats.client_counts) == ["t0", "t1", "t2", "t3"]


def test_stats_to_dict_and_table():
    part = partition_prompts(PROMPTS, 3, PartitionConfig(alpha=1.0), seed=2)
    d = part.stats.to_dict()
    assert json.loads(json.dumps(d)) == d
    assert d["num_clients"] == 3 and sum(d["sizes"]) == 180
    assert len(d["tv_distances"]) == 3 and d["mean_tv"] == pytest.approx(part.stats.mean_tv)
    table = part.stats.format_table()
    lines = table.splitlines()
    assert lines[0].startswith("partition dirichlet: 180 prompts over 3 clients")
    assert lines[1].split() == ["client", "prompts", "a", "b", "c", "d", "tv"]
    assert [line.split()[0] for line in lines[2:]] == ["0", "1", "2", "all"]
    assert lines[-1].split()[1:6] == ["180", "60", "50", "40", "30"]


def test_client_prompts():
    part = partition_prompts(PROMPTS, 3, PartitionConfig(scheme="iid"), seed=0)
    got = [client_prompts(PROMPTS, part, i) for i in range(3)]
    assert sorted(p.text for ps in got for p in ps) == sorted(p.text for p in PROMPTS)
    assert got[1] == [PROMPTS[j] for j in part.clients[1]]
    with pytest.raises(IndexError, match="client 3 out of range"):
        client_prompts(PROMPTS, part, 3)
    with pytest.raises(ValueError, match="made for 180 prompts, got 10"):
        client_prompts(PROMPTS[:10], part, 0)
