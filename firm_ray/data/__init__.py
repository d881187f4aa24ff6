"""Prompt data: sources (built-in world, JSONL/CSV/Parquet files, HF datasets), held-out eval
split, and seeded partitioning into federated clients. Prompts never leave their client."""

from firm_ray.data.partition import (
    NO_CATEGORY,
    Partition,
    PartitionStats,
    client_prompts,
    partition_prompts,
)
from firm_ray.data.prompts import Prompt
from firm_ray.data.sources import (
    PROMPT_FORMATTERS,
    DataError,
    PromptSplits,
    hh_first_human_turn,
    load_prompts,
)

__all__ = [
    "NO_CATEGORY",
    "PROMPT_FORMATTERS",
    "DataError",
    "Partition",
    "PartitionStats",
    "Prompt",
    "PromptSplits",
    "client_prompts",
    "hh_first_human_turn",
    "load_prompts",
    "partition_prompts",
]
