"""Privacy and robustness end to end through real Ray: the payload audit (every object a client
worker hands back is the declared set, with and without DP), DP-FedAvg's epsilon in the rows
and the summary, the refusal beyond target_epsilon, and Krum against a sign-flipping client."""

from __future__ import annotations

import json
from pathlib import Path

import payload_audit
import pytest
import ray
from payload_audit import AuditedWorker, read_log, strings
from tiny_world import TINY

from firm_ray.config import ConfigError, load_config
from firm_ray.data.sources import load_prompts
from firm_ray.federation.attacks import attackers
from firm_ray.privacy import ClientAccountant
from firm_ray.runtime.loop import run
from firm_ray.trainer.client_upload import DP_KEPT_METRICS

pytestmark = pytest.mark.e2e

WORKER_KEYS = {"task_seconds", "worker"}  # added by the worker, observable by the server anyway
HEADER_FIELDS = {
    "client_id", "round", "num_samples", "adapter", "objective_deltas", "metrics", "valid",
    "reason", "client_state", "payload",
}  # fmt: skip


def config(tmp_path: Path, name: str, *extra: str):
    return load_config(
        "tune_configs/quickstart.yaml",
        [f"experiment.output_dir={tmp_path}", f"experiment.name={name}", *TINY, *extra],
    )


def audited_run(tmp_path: Path, name: str, *extra: str) -> tuple[dict, list[dict], object]:
    log_dir = tmp_path / f"audit-{name}"
    log_dir.mkdir()
    AuditedWorker.LOG_DIR = str(log_dir)
    ray.cloudpickle.register_pickle_by_value(payload_audit)  # ship the class by value
    cfg = config(tmp_path, name, "federation.rounds=2", *extra)
    summary = run(cfg, worker_cls=AuditedWorker)
    return summary, read_log(log_dir), cfg


def _items(described: dict) -> dict:
    assert described["__type__"] == "dict"
    return {k: v for k, v in described["items"]}


def check_train_results(records: list[dict], cfg, prompts: list[str], dp: bool) -> int:
    """Every train() result: a tensor-free header with the declared fields and a list of
    safetensors payloads holding exactly the adapter's tensors; metrics numeric; no string
    from a prompt anywhere."""
    adapter_names = None
    checked = 0
    for record in records:
        if record["method"] != "train":
            continue
        assert record["outcome"] == "returned", record
        header, payloads = record["value"]["items"]
        assert header["__type__"] == "UpdateHeader"
        assert set(header) - {"__type__"} == HEADER_FIELDS
        assert header["adapter"] is None and header["objective_deltas"] is None
        metrics = _items(header["metrics"])
        for key, value in metrics.items():
            if key == "skip_reasons":
                assert not dp
                continue
            flat = value["items"] if isinstance(value, dict) else [value]
            flat = [x for v in flat for x in (v["items"] if isinstance(v, dict) else [v])]
            assert all(isinstance(x, (int, float)) for x in flat), (key, value)
        if dp:
            assert set(metrics) <= set(DP_KEPT_METRICS) | WORKER_KEYS, sorted(metrics)
            assert _items(header["client_state"]) == {}
        else:
            assert "lambda" in metrics
        for payload in payloads["items"]:
            assert payload["__type__"] == "safetensors"
            names = {k: v for k, v in payload["header"].items() if k != "__metadata__"}
            meta = payload["header"].get("__metadata__") or {}
            assert set(meta) <= {"order"}  # models/adapter.py: the tensors' order, nothing else
            assert sorted(json.loads(meta.get("order", "[]"))) in ([], sorted(names))
            assert all(v["dtype"] == "F32" for v in names.values())
            layout = {k: tuple(v["shape"]) for k, v in names.items()}
            adapter_names = adapter_names or layout
            assert layout == adapter_names  # the same tensors every time
        texts = strings(record["value"])
        for text in texts:
            assert not any(p in text for p in prompts if len(p) > 12), text
        checked += 1
    return checked


def test_payload_audit_without_and_with_dp(tmp_path) -> None:
    prompts = None
    dp_set = (
        "privacy.clip=0.05",
        "privacy.noise_multiplier=0.5",
        "privacy.adaptive_clip=true",
        "privacy.count_noise_std=0.5",
    )
    for name, extra, dp in (("plain", (), False), ("dp", dp_set, True)):
        summary, records, cfg = audited_run(tmp_path, name, *extra)
        assert summary["status"] == "completed"
        if prompts is None:
            splits = load_prompts(cfg.data, cfg.experiment.seed)
            prompts = [p.text for p in [*splits.train, *splits.eval]]
        methods = {r["method"] for r in records}
        assert {"ready", "train", "evaluate", "adapter_files"} <= methods
        assert methods <= set(payload_audit.AUDITED)
        trained = check_train_results(records, cfg, prompts, dp)
        assert trained == 2 * cfg.federation.clients_sampled_per_round
        for record in records:  # evaluation and set-up: aggregate numbers, no prompt text
            for text in strings(record["value"]):
                assert not any(p in text for p in prompts if len(p) > 12), text
        rows = [json.loads(x) for x in (Path(summary["run_dir"]) / "metrics.jsonl").open()]
        if dp:
            fed = cfg.federation
            accountant = ClientAccountant(fed.num_clients, fed.clients_sampled_per_round, 0.5, 1e-5)
            for row in rows:
                block = row["privacy"]
                assert block["epsilon"] == pytest.approx(accountant.epsilon(row["round"] + 1))
                assert block["clip"] > 0 and block["next_clip"] > 0
                assert row["client_lambdas"] == {} and row["disagreement"] is None
                assert row["param_drift"] is None and row["update_cosine"] is None
                assert row["timing"]["generate"] is None and row["timing"]["round_wall"] > 0
            assert rows[1]["privacy"]["clip"] == pytest.approx(rows[0]["privacy"]["next_clip"])
            assert summary["privacy"]["epsilon"] == pytest.approx(accountant.epsilon(2))
        else:
            assert all(row["privacy"] is None for row in rows) and summary["privacy"] is None
            assert all(row["timing"]["generate"] > 0 for row in rows)


def test_target_epsilon_refuses_to_start(tmp_path) -> None:
    cfg = config(
        tmp_path,
        "budget",
        "federation.rounds=50",
        "privacy.clip=0.1",
        "privacy.noise_multiplier=0.8",
        "privacy.target_epsilon=2",
    )
    with pytest.raises(ConfigError, match=r"target_epsilon = 2: federation.rounds = 50 would"):
        run(cfg)
    assert not (tmp_path / "budget").exists()  # refused before anything was written


def test_krum_never_selects_the_sign_flipping_client(tmp_path) -> None:
    cfg = config(
        tmp_path,
        "krum",
        "federation.rounds=2",
        "federation.num_clients=5",
        "federation.clients_per_round=1.0",
        "robustness.aggregator=krum",
        "robustness.attack.kind=sign_flip",
        "robustness.attack.scale=5",
        "robustness.attack.fraction=0.2",
    )
    summary = run(cfg)
    assert summary["status"] == "completed"
    (bad,) = attackers(5, 0.2, cfg.experiment.seed)
    rows = [json.loads(x) for x in (Path(summary["run_dir"]) / "metrics.jsonl").open()]
    for row in rows:
        block = row["robustness"]
        assert block["aggregator"] == "krum" and block["attackers"] == [bad]
        assert len(block["selected"]) == 1 and block["selected"] != [bad]
    assert summary["robustness"]["attacker_client_rounds"] == 2
    assert summary["robustness"]["attacker_updates_selected"] == 0
