"""Secure aggregation end to end through real Ray (TINY world, 2 rounds).

- The unmasked sum equals plain DP-FedAvg within the fixed-point resolution: with the same
  seeds and the same theta^t the clipped (distributed: and noised) deltas are identical and the
  central noise is seeded, so the global adapter after each round must equal the one plain
  DP-FedAvg gives from the same theta^t (firm with central noise, 2 workers; fmgda, whose M
  deltas travel as one masked vector, with distributed noise). Round 0 is compared with a plain
  run; round 1 with a plain round resumed from the secure run's round-0 checkpoint: two whole
  runs drift apart from round 1 on, since a float32 ulp of difference in theta^1 changes the
  sampled completions (measured: 2e-9 after round 0, 5e-4 after round 1 for two whole runs).
- A worker SIGKILLed mid-protocol costs at most its client's contribution: the decoded sum
  stays exact and the client is listed as failed.
- The audit: under secure aggregation no worker result carries an adapter or delta in the
  clear, only the tensor-free header, public keys, share ciphertexts, the packed masked vector
  and unmasking shares (1 worker: the clients of a round run in sequence on it).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import payload_audit
import pytest
import ray
import torch
from payload_audit import AuditedWorker, read_log, strings
from safetensors.torch import load_file
from test_faults import TaskTrace, kill
from tiny_world import TINY

from firm_ray.config import load_config
from firm_ray.data.sources import load_prompts
from firm_ray.privacy.secagg import fixed_point_scale
from firm_ray.privacy.secagg_vector import round_params
from firm_ray.runtime.loop import run
from firm_ray.runtime.worker import TRACE_ENV

pytestmark = pytest.mark.e2e

DP = ("privacy.clip=0.05", "privacy.noise_multiplier=0.5")
SECURE = "privacy.secure_aggregation=true"
ULPS = 4  # float32 roundings of the adapter (theta + mean, the sum's order) beside fixed point


def config(tmp_path: Path, name: str, *extra: str):
    return load_config(
        "tune_configs/quickstart.yaml",
        [
            f"experiment.output_dir={tmp_path}",
            f"experiment.name={name}",
            *TINY,
            "federation.rounds=2",
            *extra,
        ],
    )


def rows_of(summary: dict) -> list[dict]:
    return [json.loads(x) for x in (Path(summary["run_dir"]) / "metrics.jsonl").open()]


def adapters_of(summary: dict) -> list[dict[str, torch.Tensor]]:
    checkpoints = sorted((Path(summary["run_dir"]) / "checkpoints").glob("round_*"))
    return [load_file(str(c / "adapter.safetensors")) for c in checkpoints]


def replay_plain(secure_dir: Path, replay_dir: Path, round_index: int) -> Path:
    """Round ``round_index`` without secure aggregation, from the secure run's checkpoint of
    the round before (its own config otherwise): the same theta^t, client state and seeds."""
    shutil.copytree(secure_dir, replay_dir)
    for late in sorted((replay_dir / "checkpoints").glob("round_*"))[round_index:]:
        shutil.rmtree(late)
    config_file = replay_dir / "config.yaml"
    text = config_file.read_text()
    assert text.count("secure_aggregation: true") == 1
    config_file.write_text(text.replace("secure_aggregation: true", "secure_aggregation: false"))
    assert run(None, resume=replay_dir)["status"] == "completed"
    return replay_dir


# distributed noise: each client adds its share N(0, (sigma C)^2 / k) after clipping, in both
# paths (the plain server no longer re-clips noisy deltas, 68b375c), so the sums agree too
@pytest.mark.parametrize(("algorithm", "noise"), [("firm", "central"), ("fmgda", "distributed")])
def test_secure_sum_gives_the_plain_dp_fedavg_adapters(tmp_path, algorithm, noise) -> None:
    extra = (f"algorithm.name={algorithm}", *DP, f"privacy.noise={noise}")
    plain = run(config(tmp_path, "plain", *extra, "federation.rounds=1"))
    cfg = config(tmp_path, "secure", *extra, SECURE)
    secure = run(cfg)
    assert plain["status"] == secure["status"] == "completed"
    replay = replay_plain(Path(secure["run_dir"]), tmp_path / "replay", 1)
    k = cfg.federation.clients_sampled_per_round
    local = 0.5 * 0.05 / k**0.5 if noise == "distributed" else 0.0
    params = round_params(0.05, local, k, 32)
    resolution = k / fixed_point_scale(params, k)  # the decoded sum's error bound
    assert resolution < 1e-8
    ours = adapters_of(secure)
    theirs = [adapters_of(plain)[0], adapters_of({"run_dir": replay})[1]]
    assert len(ours) == 2
    eps = torch.finfo(torch.float32).eps
    for got, want in zip(ours, theirs, strict=True):
        assert list(got) == list(want)
        for name in want:
            diff = (got[name].double() - want[name].double()).abs().max().item()
            tolerance = resolution + ULPS * eps * want[name].abs().max().item()
            assert diff <= tolerance, (name, diff, tolerance)
    for row, base in zip(rows_of(secure), rows_of(plain), strict=False):
        assert row["privacy"]["epsilon"] == pytest.approx(base["privacy"]["epsilon"])
        assert base["privacy"].get("secure_aggregation") is None
    for row in rows_of(secure):
        block = row["privacy"]
        assert block["secure_aggregation"] is True and block["secagg_threshold"] == k // 2 + 1
        assert block["secagg_dropped"] == [] and block["secagg_clipped"] == 0
        assert sorted(block["secagg_bytes_up"]) == sorted(row["bytes_up"])
        for client, parts in block["secagg_bytes_up"].items():
            assert row["bytes_up"][client] == sum(parts.values())
            assert parts["keys"] == 64 and parts["shares"] > 0 and parts["unmask"] > 0
            assert parts["masked"] == 4 * sum(t.numel() for t in ours[0].values()) * (
                cfg.num_objectives if algorithm == "fmgda" else 1
            )  # 32 bits per coordinate, M deltas in one vector
        assert row["param_drift"] is None and row["update_cosine"] is None
        assert block["secagg_seconds"]["clients"] > 0 and block["secagg_seconds"]["server"] > 0


def test_audit_no_update_leaves_a_worker_in_the_clear(tmp_path) -> None:
    log_dir = tmp_path / "audit"
    log_dir.mkdir()
    AuditedWorker.LOG_DIR = str(log_dir)
    ray.cloudpickle.register_pickle_by_value(payload_audit)
    cfg = config(
        tmp_path, "audit", *DP, "privacy.noise=distributed", SECURE, "runtime.num_workers=1"
    )
    summary = run(cfg, worker_cls=AuditedWorker)
    assert summary["status"] == "completed"
    records = read_log(log_dir)
    k = cfg.federation.clients_sampled_per_round
    counts = {m: sum(r["method"] == m for r in records) for m in payload_audit.AUDITED}
    for method in ("train", "secagg_share", "secagg_mask", "secagg_unmask"):
        assert counts[method] == 2 * k, counts
    splits = load_prompts(cfg.data, cfg.experiment.seed)
    prompts = [p.text for p in [*splits.train, *splits.eval] if len(p.text) > 12]
    for record in records:
        value = record["value"]
        assert record["outcome"] == "returned", record
        for text in strings(value):
            assert not any(p in text for p in prompts), text
        if record["method"] == "train":
            header, sent = value["items"]
            assert header["__type__"] == "UpdateHeader"
            assert header["adapter"] is None and header["objective_deltas"] is None
            (keys,) = sent["items"]  # only the two public keys
            assert keys["__type__"] == "ClientKeys"
            assert keys["c_pk"] == keys["s_pk"] == {"__type__": "bytes", "nbytes": 32}
        elif record["method"] in ("secagg_share", "secagg_unmask"):
            assert value["__type__"] == "dict"
            for peer, blob in value["items"]:
                assert isinstance(peer, int) and blob["__type__"] == "bytes"
                # a sealed share pair (102 bytes) or one Shamir share (33 bytes)
                assert blob["nbytes"] == (102 if record["method"] == "secagg_share" else 33)
        elif record["method"] == "secagg_mask":
            packed, info = value["items"]
            assert packed["__type__"] == "uint8_array"  # not parseable as an adapter
            assert {k for k, _ in info["items"]} == {"seconds", "clipped"}
        if record["method"].startswith("secagg") or record["method"] == "train":
            assert "safetensors" not in json.dumps(value)  # no adapter, no delta


def secagg_share_of(round_index: int):
    """The trace line of the first client to start its round-``round_index`` share task."""

    def find(lines: list[dict]) -> dict | None:
        return next(
            (x for x in lines if x["task"] == "secagg_share" and x["round"] == round_index), None
        )

    return find


def test_worker_killed_mid_protocol_costs_at_most_its_client(tmp_path, monkeypatch) -> None:
    """SIGKILL the worker of one client as it starts the share step of round 0 (after the key
    exchange). It dies during or just after that step, so its client either drops before its
    masked vector reaches the server (the sum is the other clients', whose pairwise masks with
    it the server rebuilds from their shares) or, if the kill lands after masking, during
    unmasking (the sum is whole: t answers suffice). Either way the round completes, the
    worker is replaced, round 1 runs with every client, and the decoded sum is exact: k = 3
    clients on 3 workers, clipping without noise, so the secure adapter minus plain
    DP-FedAvg's from the same theta^0 is exactly the dropped client's clipped delta / k
    (norm <= C / k; a mask left in would be of the order of the fixed-point range), or 0."""
    clip, k = 0.05, 3
    extra = (
        f"privacy.clip={clip}",
        "federation.clients_per_round=0.75",  # 3 of 4: t = 2, one client may drop
        "runtime.num_workers=3",  # one client's secrets per worker
        "runtime.num_cpus_per_worker=0.5",
    )
    plain = run(config(tmp_path, "plain", *extra, "federation.rounds=1"))
    assert plain["status"] == "completed"
    trace_file = tmp_path / "tasks.jsonl"
    monkeypatch.setenv(TRACE_ENV, str(trace_file))
    trace = TaskTrace(trace_file)
    thread = trace.on([(secagg_share_of(0), kill())])
    cfg = config(tmp_path, "secure", *extra, SECURE)
    assert cfg.federation.clients_sampled_per_round == k
    secure = run(cfg)
    thread.join(timeout=5)
    assert not trace.errors and len(trace.done) == 1, (trace.errors, trace.done)
    assert secure["status"] == "completed"
    killed = secagg_share_of(0)(trace.lines())["client"]
    rows = rows_of(secure)
    first, second = rows[0]["privacy"], rows[1]["privacy"]
    assert rows[0]["faults"]["worker_restarts"] == 1, rows[0]["faults"]
    assert first["secure_aggregation"] is True and first["secagg_threshold"] == 2
    assert second["secagg_dropped"] == [] and len(second["secagg_bytes_up"]) == k
    assert rows[1]["failed"] == [] and rows[1]["faults"]["worker_restarts"] == 0
    got, want = adapters_of(secure)[0], adapters_of(plain)[0]
    diff = torch.cat([(got[n].double() - want[n].double()).flatten() for n in want]).norm()
    eps = torch.finfo(torch.float32).eps
    slack = 1e-6 + ULPS * eps * max(t.abs().max().item() for t in want.values())
    if first["secagg_dropped"]:  # dropped before its masked vector reached the server
        assert first["secagg_dropped"] == [killed]
        assert [f["client"] for f in rows[0]["failed"]] == [killed], rows[0]["failed"]
        assert "secagg" in rows[0]["failed"][0]["reason"]
        assert str(killed) not in first["secagg_bytes_up"]
        assert 0 < diff <= clip / k + slack, (diff, clip / k)
    else:  # dropped while unmasking: its masked update is in the sum, which is whole
        assert rows[0]["failed"] == [] and len(first["secagg_bytes_up"]) == k
        assert diff <= slack, diff
    when = "before" if first["secagg_dropped"] else "after"
    print(
        f"client {killed} dropped {when} masking; |secure - plain| {diff:.3g}, C/k {clip / k:.3g}"
    )
