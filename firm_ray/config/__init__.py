"""One typed, validated configuration tree for a firm_ray experiment.

Why: an experiment touches the model, LoRA, data partitioning, rewards, the FIRM solver, the
trainer, the federation schedule, Ray and tracking. Scattering those settings over argparse flags
and dicts means a typo or a bad value surfaces minutes into a run, on a remote worker. Here every
setting lives in one pydantic tree that rejects unknown keys, wrong types and out-of-range or
mutually inconsistent values *at load time*, with one line per problem naming the dotted path, the
bad value and what is allowed::

    algorithm.beta = -1.0: must be >= 0
    rewards[1].type = 'foo': must be one of relevance, harmlessness, sentiment, ...

Usage::

    from firm_ray.config import ConfigError, dump_config, load_config

    cfg = load_config("tune_configs/quickstart.yaml", ["algorithm.preference=[0.3,0.7]"])
    cfg.algorithm.preference_vector(cfg.num_objectives)  # [0.3, 0.7]
    print(dump_config(cfg))  # resolved YAML; load_config() of it gives back an equal tree

Override values are parsed as YAML (``x=[1,2]`` is a list, ``x=foo`` a string, ``x=`` null).
The YAML loader also reads ``5e-4`` as a float (plain YAML 1.1 would read a string).

Layout: schema.py (the sections and FirmConfig), algorithm.py (the ``algorithm:`` block and its
per-algorithm options), fields.py (field types, the Section base), loading.py (YAML, overrides,
dump), errors.py (one-line messages). This package is the bottom layer: it imports nothing from
the rest of firm_ray, nor ray or torch.
"""

from firm_ray.config.algorithm import ALGORITHMS, MULTI_OBJECTIVE_ALGORITHMS, AlgorithmConfig
from firm_ray.config.errors import ConfigError
from firm_ray.config.loading import config_from_dict, dump_config, load_config, save_config
from firm_ray.config.schema import (
    PROMPT_FORMATS,
    REWARD_TYPES,
    DataConfig,
    ExperimentConfig,
    FederationConfig,
    FirmConfig,
    LoraConfig,
    ModelConfig,
    PartitionConfig,
    RewardSpec,
    RuntimeConfig,
    TrackingConfig,
    TrainerConfig,
    WandbConfig,
)

__all__ = [
    "ALGORITHMS",
    "MULTI_OBJECTIVE_ALGORITHMS",
    "PROMPT_FORMATS",
    "REWARD_TYPES",
    "AlgorithmConfig",
    "ConfigError",
    "DataConfig",
    "ExperimentConfig",
    "FederationConfig",
    "FirmConfig",
    "LoraConfig",
    "ModelConfig",
    "PartitionConfig",
    "RewardSpec",
    "RuntimeConfig",
    "TrackingConfig",
    "TrainerConfig",
    "WandbConfig",
    "config_from_dict",
    "dump_config",
    "load_config",
    "save_config",
]
