"""Seeded partitioning of prompts over federated clients.

Why: FIRM's point is client disagreement drift, which only exists when clients hold different
data. These schemes are the standard ways FL papers make clients heterogeneous, each reproducible
from (seed, scheme), and each reported by `PartitionStats` so a run records how non-iid it was.

Schemes (``data.partition.scheme``); every scheme assigns each prompt to exactly one client and
returns each client's indices in ascending order:

- ``iid``: a seeded permutation cut into ``num_clients`` nearly equal parts (sizes differ by <= 1).
- ``dirichlet`` (Hsu et al. 2019; Flower's DirichletPartitioner): for each category (in sorted
  order) draw proportions q ~ Dirichlet(alpha * 1_K) over the K clients, shuffle the category's
  prompts and cut them at floor(cumsum(q) * n_c). Small alpha: each category lands on few clients.
  Unless ``allow_empty``, a draw that leaves a client empty is redrawn from the same generator,
  at most `DIRICHLET_TRIES` times in all (no rebalancing: it would bias the Dirichlet skew);
  if every draw leaves a client empty, DataError names the client and suggests a larger alpha.
- ``natural``: each client holds whole categories. Categories sorted by size (largest first,
  ties by name) are dealt one at a time to the client with the fewest prompts so far (ties: lowest
  index), so with K == number of categories client i holds exactly the i-th largest category, and
  with fewer clients the loads are balanced. More clients than categories is an error unless
  ``allow_empty`` (the extra clients stay empty). Independent of the seed.
- ``shards`` (McMahan et al. 2017): order prompts by category (sorted), shuffled within each
  category, cut into K * shards_per_client nearly equal shards, and deal shards_per_client
  seeded-random shards to each client; a client sees about shards_per_client categories (one more
  per shard that straddles a category boundary).

Categories: the prompt's ``category``, or the extra field ``partition.field`` when that differs
from ``data.category_field`` (pass it as ``category_field_name``). The non-iid schemes need one
for every prompt.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from firm_ray.config import PartitionConfig
from firm_ray.data.prompts import Prompt
from firm_ray.data.sources import DataError, seeded_rng

__all__ = [
    "DIRICHLET_TRIES",
    "NO_CATEGORY",
    "Partition",
    "PartitionStats",
    "client_prompts",
    "partition_prompts",
]

DIRICHLET_TRIES = 10
"""Dirichlet draws tried before an empty client is an error (as Flower's partitioner does)."""

NO_CATEGORY = "(none)"
"""Histogram key for prompts without a category (iid partitions of uncategorized data)."""


@dataclass(frozen=True)
class PartitionStats:
    """Who holds what: sizes and category histograms per client, for logs and run summaries."""

    scheme: str
    num_prompts: int
    sizes: list[int]
    categories: list[str]
    """Distinct categories, sorted (NO_CATEGORY for prompts without one)."""
    client_counts: list[dict[str, int]]
    """Per client: category -> number of prompts (categories it lacks are omitted)."""
    global_counts: dict[str, int]

    @property
    def num_clients(self) -> int:
        return len(self.sizes)

    def tv_distances(self) -> list[float | None]:
        """Total-variation distance of each client's category mix from the global mix (None for
        an empty client): 0 = iid-like, near 1 = a client of categories rare overall."""
        total = self.num_prompts
        out: list[float | None] = []
        for size, counts in zip(self.sizes, self.client_counts, strict=True):
            if size == 0:
                out.append(None)
                continue
            tv = sum(
                abs(counts.get(c, 0) / size - self.global_counts[c] / total)
                for c in self.categories
            )
            out.append(0.5 * tv)
        return out

    @property
    def mean_tv(self) -> float:
        """Mean `tv_distances` over non-empty clients: one number for how non-iid the split is."""
        values = [d for d in self.tv_distances() if d is not None]
        return float(np.mean(values)) if values else 0.0

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict (for summary.json and trackers)."""
        return {
            "scheme": self.scheme,
            "num_clients": self.num_clients,
            "num_prompts": self.num_prompts,
            "sizes": list(self.sizes),
            "categories": list(self.categories),
            "client_counts": [dict(c) for c in self.client_counts],
            "global_counts": dict(self.global_counts),
            "tv_distances": self.tv_distances(),
            "mean_tv": self.mean_tv,
        }

    def format_table(self) -> str:
        """A plain-text table: one row per client (size, count per category, TV distance)."""
        header = ["client", "prompts", *self.categories, "tv"]
        rows = []
        for i, (size, counts, tv) in enumerate(
            zip(self.sizes, self.client_counts, self.tv_distances(), strict=True)
        ):
            cells = [str(counts.get(c, 0)) for c in self.categories]
            rows.append([str(i), str(size), *cells, "-" if tv is None else f"{tv:.2f}"])
        totals = [str(self.global_counts[c]) for c in self.categories]
        rows.append(["all", str(self.num_prompts), *totals, f"{self.mean_tv:.2f}"])
        widths = [max(len(r[j]) for r in [header, *rows]) for j in range(len(header))]

        def line(cells: list[str]) -> str:
            return "  ".join(c.rjust(w) for c, w in zip(cells, widths, strict=True)).rstrip()

        title = f"partition {self.scheme}: {self.num_prompts} prompts over {self.num_clients} "
        title += "clients (tv: total-variation distance of the client's category mix from the "
        title += "global mix; all: mean over non-empty clients)"
        return "\n".join([title, line(header), *(line(r) for r in rows)])


@dataclass(frozen=True)
class Partition:
    """Each client's prompt indices (ascending) and the resulting statistics."""

    clients: list[list[int]]
    stats: PartitionStats

    @property
    def num_clients(self) -> int:
        return len(self.clients)


def client_prompts(prompts: Sequence[Prompt], partition: Partition, i: int) -> list[Prompt]:
    """Client ``i``'s prompts; checks that ``prompts`` is the sequence that was partitioned."""
    if len(prompts) != partition.stats.num_prompts:
        raise ValueError(
            f"partition was made for {partition.stats.num_prompts} prompts, got {len(prompts)}"
        )
    if not 0 <= i < partition.num_clients:
        raise IndexError(f"client {i} out of range (num_clients = {partition.num_clients})")
    return [prompts[j] for j in partition.clients[i]]


# --------------------------------------------------------------------------- schemes


def _iid(n: int, k: int, rng: np.random.Generator) -> list[np.ndarray]:
    return np.array_split(rng.permutation(n), k)


def _groups(keys: Sequence[str]) -> dict[str, np.ndarray]:
    """Category -> indices (ascending), categories in sorted order."""
    out: dict[str, list[int]] = {}
    for i, key in enumerate(keys):
        out.setdefault(key, []).append(i)
    return {c: np.asarray(out[c]) for c in sorted(out)}


def _dirichlet(
    keys: Sequence[str], k: int, alpha: float, allow_empty: bool, rng: np.random.Generator
) -> list[np.ndarray]:
    groups = _groups(keys)
    clients: list[list[np.ndarray]] = []
    for _ in range(DIRICHLET_TRIES):
        clients = [[] for _ in range(k)]
        for members in groups.values():
            shuffled = rng.permutation(members)
            q = rng.dirichlet(np.full(k, alpha))
            cuts = (np.cumsum(q)[:-1] * len(shuffled)).astype(int)
            for j, part in enumerate(np.split(shuffled, cuts)):
                clients[j].append(part)
        if allow_empty or all(sum(len(p) for p in parts) for parts in clients):
            break
    return [np.concatenate(parts) for parts in clients]


def _natural(keys: Sequence[str], k: int, allow_empty: bool) -> list[np.ndarray]:
    groups = _groups(keys)
    if len(groups) < k and not allow_empty:
        shown = ", ".join(list(groups)[:8]) + (", ..." if len(groups) > 8 else "")
        raise DataError(
            f"scheme 'natural' gives each client whole categories: {k} clients but "
            f"{len(groups)} categories ({shown}); use num_clients <= {len(groups)} or "
            "partition.allow_empty: true"
        )
    order = sorted(groups, key=lambda c: (-len(groups[c]), c))
    clients: list[list[np.ndarray]] = [[] for _ in range(k)]
    loads = [0] * k
    for c in order:
        j = loads.index(min(loads))
        clients[j].append(groups[c])
        loads[j] += len(groups[c])
    return [np.concatenate(parts) if parts else np.empty(0, dtype=int) for parts in clients]


def _shards(
    keys: Sequence[str], k: int, per_client: int, allow_empty: bool, rng: np.random.Generator
) -> list[np.ndarray]:
    n, num_shards = len(keys), k * per_client
    if n < num_shards and not allow_empty:
        raise DataError(
            f"scheme 'shards' needs at least num_clients * shards_per_client = {k} * "
            f"{per_client} = {num_shards} prompts, got {n}; use fewer clients or shards, or "
            "partition.allow_empty: true"
        )
    order = np.concatenate([rng.permutation(m) for m in _groups(keys).values()])
    shards = np.array_split(order, num_shards)
    dealt = rng.permutation(num_shards)
    return [
        np.concatenate([shards[s] for s in dealt[j * per_client : (j + 1) * per_client]])
        for j in range(k)
    ]


# --------------------------------------------------------------------------- entry point


def _category_keys(
    prompts: Sequence[Prompt], cfg: PartitionConfig, category_field_name: str | None
) -> tuple[list[str | None], str]:
    """Each prompt's category for partitioning, and a phrase naming where it comes from."""
    if cfg.field is not None and cfg.field != category_field_name:
        return [p.extra_value(cfg.field) for p in prompts], f"field {cfg.field!r}"
    return [p.category for p in prompts], "category"


def partition_prompts(
    prompts: Sequence[Prompt],
    num_clients: int,
    cfg: PartitionConfig,
    seed: int,
    category_field_name: str | None = None,
) -> Partition:
    """Split ``prompts`` over ``num_clients`` clients by ``cfg.scheme`` (module docstring).

    ``category_field_name`` is ``data.category_field``, the field ``Prompt.category`` was read
    from; a ``cfg.field`` naming another field groups by that extra field instead. Same inputs and
    seed, same partition. Raises DataError when a scheme needs categories some prompt lacks, when
    there are fewer prompts than clients, or when a client would be empty (unless allow_empty).
    """
    n, k, scheme = len(prompts), num_clients, cfg.scheme
    if k < 1:
        raise DataError(f"num_clients must be >= 1, got {k}")
    if n == 0:
        raise DataError(f"scheme {scheme!r}: no prompts to partition")
    if n < k and not cfg.allow_empty:
        raise DataError(
            f"scheme {scheme!r}: {n} prompts cannot fill {k} clients; use at most {n} clients or "
            "partition.allow_empty: true"
        )
    keys, what = _category_keys(prompts, cfg, category_field_name)
    if scheme != "iid":
        missing = next((i for i, key in enumerate(keys) if key is None), None)
        if missing is not None:
            where = f" ({prompts[missing].source})" if prompts[missing].source else ""
            raise DataError(
                f"scheme {scheme!r} needs a {what} for every prompt, but prompt {missing}{where} "
                "has none; set data.category_field (or partition.field), or use scheme 'iid'"
            )
    labels = [NO_CATEGORY if key is None else key for key in keys]

    rng = seeded_rng(seed, f"partition.{scheme}")
    if scheme == "iid":
        parts = _iid(n, k, rng)
    elif scheme == "dirichlet":
        parts = _dirichlet(labels, k, cfg.alpha, cfg.allow_empty, rng)
    elif scheme == "natural":
        parts = _natural(labels, k, cfg.allow_empty)
    elif scheme == "shards":
        parts = _shards(labels, k, cfg.shards_per_client, cfg.allow_empty, rng)
    else:  # pragma: no cover - PartitionConfig only admits the schemes above
        raise DataError(f"unknown partition scheme {scheme!r}")
    clients = [sorted(int(i) for i in part) for part in parts]

    if not cfg.allow_empty:
        empty = next((j for j, c in enumerate(clients) if not c), None)
        if empty is not None:
            hint = (
                f"use a larger partition.alpha (now {cfg.alpha:g})"
                if scheme == "dirichlet"
                else "use fewer clients"
            )
            raise DataError(
                f"scheme {scheme!r}: client {empty} received no prompts ({n} prompts over {k} "
                f"clients); {hint} or partition.allow_empty: true"
            )
    return Partition(clients=clients, stats=_stats(scheme, labels, clients))


def _stats(scheme: str, labels: Sequence[str], clients: list[list[int]]) -> PartitionStats:
    categories = sorted(set(labels))
    global_counts = Counter(labels)
    client_counts = []
    for members in clients:
        counts = Counter(labels[i] for i in members)
        client_counts.append({c: counts[c] for c in categories if counts[c]})
    return PartitionStats(
        scheme=scheme,
        num_prompts=len(labels),
        sizes=[len(c) for c in clients],
        categories=categories,
        client_counts=client_counts,
        global_counts={c: global_counts[c] for c in categories},
    )
