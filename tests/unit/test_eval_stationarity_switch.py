"""trainer.eval_pareto_stationarity: the worker's evaluate task computes FIRM's convergence
criterion only when it is on. A real ClientWorker (the body of the Ray actor, built here without
Ray) on the built-in world, with the e2e tests' tiny settings."""

from __future__ import annotations

import sys
from pathlib import Path

from firm_ray.config import config_from_dict, dump_config
from firm_ray.runtime.worker import ClientWorker

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "e2e"))
from tiny_world import TINY


def test_switch_off_evaluates_without_pareto_stationarity(world_model_dir) -> None:
    cfg = config_from_dict({}, [*TINY, f"model.name_or_path={world_model_dir}"])
    assert cfg.trainer.eval_pareto_stationarity is True  # on by default
    worker = ClientWorker(cfg.model_dump(mode="json"))
    worker.ready()  # raises the set-up error, if any
    theta0 = worker.initial_adapter()

    on = worker.evaluate(theta0)
    assert on["pareto_stationarity"] > 0 and on["stationarity_seconds"] > 0
    assert len(on["objective_grad_norms"]) == cfg.num_objectives

    worker.config.trainer.eval_pareto_stationarity = False
    off = worker.evaluate(theta0)
    for key in ("pareto_stationarity", "objective_grad_norms", "stationarity_seconds"):
        assert key not in off, key
    for key in ("rewards", "rewards_by_category", "kl"):
        assert off[key] == on[key], key  # the switch drops only the stationarity
    assert off["seconds"] > 0


def test_switch_round_trips_through_yaml() -> None:
    cfg = config_from_dict({}, ["trainer.eval_pareto_stationarity=false"])
    assert "eval_pareto_stationarity: false" in dump_config(cfg)
    assert config_from_dict({"trainer": {"eval_pareto_stationarity": False}}) == cfg
