"""Shared fixtures. Nothing here reaches the network: the hub is switched off for every test."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")


@pytest.fixture(scope="session")
def world_model_dir():
    """The real warm-start model of the embedded default (built once, then cached)."""
    from firm_ray.models.warmstart import ensure_world_model

    return ensure_world_model()
