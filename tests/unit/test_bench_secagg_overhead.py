"""bench/secagg_overhead.py's analysis on synthetic metrics.jsonl rows: the per-client-round
figures (bytes, protocol seconds / k, train-task seconds recovered from the round's timing),
round 0 apart from the later rounds' mean, the overheads, the round-0 adapter check against the
fixed-point resolution, and the report re-made from run files with --reuse. No Ray.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

BENCH = Path(__file__).resolve().parents[2] / "bench"
sys.path.insert(0, str(BENCH))

import secagg_overhead as so  # noqa: E402

PARTS = {"keys": 64, "shares": 318, "masked": 57_344, "unmask": 148}  # = 57,874


def row(
    round_index: int,
    k: int,
    *,
    wall: float,
    agg: float,
    ev: float,
    orch: float,
    secure: bool = False,
    clients_s: float = 0.0,
    server_s: float = 0.0,
    up: int = 60_480,
) -> dict:
    block = {"epsilon": 1.0, "clip": 0.7}
    if secure:
        block |= {
            "secure_aggregation": True,
            "secagg_bytes_up": {str(c): dict(PARTS) for c in range(k)},
            "secagg_seconds": {"clients": clients_s, "server": server_s},
            "secagg_clipped": 0,
            "secagg_dropped": [],
        }
        up = sum(PARTS.values())
    return {
        "round": round_index,
        "bytes_up": {str(c): up for c in range(k)},
        "timing": {
            "generate": 0.0,  # withheld under DP: the bench must not read these
            "aggregation": agg,
            "evaluation": ev,
            "round_wall": wall,
            "orchestration_overhead": orch,
        },
        "failed": [],
        "privacy": block,
    }


def plain_rows() -> list[dict]:
    return [
        row(0, 4, wall=10.0, agg=0.5, ev=1.5, orch=0.0),
        row(1, 4, wall=6.0, agg=0.2, ev=1.0, orch=0.8),
        row(2, 4, wall=8.0, agg=0.4, ev=1.4, orch=0.2),
    ]


def secure_rows() -> list[dict]:
    return [
        row(0, 4, wall=12.0, agg=1.0, ev=1.0, orch=2.0, secure=True, clients_s=0.8, server_s=0.3),
        row(1, 4, wall=9.0, agg=0.3, ev=1.2, orch=0.5, secure=True, clients_s=0.2, server_s=0.1),
        row(2, 4, wall=7.0, agg=0.5, ev=1.0, orch=1.5, secure=True, clients_s=0.4, server_s=0.3),
    ]


def test_per_round_figures_are_per_client_and_recover_the_train_task_seconds() -> None:
    plain = so.per_round(plain_rows())
    assert [r["clients"] for r in plain] == [4, 4, 4]
    assert plain[0]["bytes_up"] == 60_480
    # one worker: (round_wall - aggregation - evaluation - overhead) / k, not the zero phases
    assert plain[0]["task_s_per_client"] == pytest.approx((10.0 - 0.5 - 1.5 - 0.0) / 4)
    assert plain[1]["task_s_per_client"] == pytest.approx((6.0 - 0.2 - 1.0 - 0.8) / 4)
    assert "protocol_s_per_client" not in plain[0]
    secure = so.per_round(secure_rows())
    assert secure[0]["bytes_up"] == 57_874
    assert {p: secure[0][p] for p in so.PARTS} == PARTS
    assert secure[0]["protocol_s_per_client"] == pytest.approx(0.8 / 4)
    assert secure[0]["server_s"] == 0.3
    assert secure[2]["task_s_per_client"] == pytest.approx((7.0 - 0.5 - 1.0 - 1.5) / 4)


def test_bytes_are_client_weighted_and_round_zero_is_apart_from_the_later_mean() -> None:
    rows = [
        row(0, 2, wall=4.0, agg=0.0, ev=0.0, orch=0.0, up=100),
        row(1, 6, wall=4.0, agg=0.0, ev=0.0, orch=0.0, up=200),  # a bigger round
        row(2, 2, wall=2.0, agg=0.0, ev=0.0, orch=0.0, up=100),
    ]
    s = so.summarize(so.per_round(rows))
    assert s["client_rounds"] == 10
    assert s["bytes_up"] == pytest.approx((2 * 100 + 6 * 200 + 2 * 100) / 10)  # not 133.3
    assert s["round_wall_r0"] == 4.0
    assert s["round_wall_later"] == pytest.approx(3.0)
    assert s["task_s_per_client_r0"] == pytest.approx(2.0)
    assert s["task_s_per_client_later"] == pytest.approx((4.0 / 6 + 2.0 / 2) / 2)
    one = so.summarize(so.per_round(rows[:1]))
    assert one["round_wall_later"] is None  # no steady state to report


def test_compare_gives_the_overheads_by_hand() -> None:
    p = so.summarize(so.per_round(plain_rows()))
    s = so.summarize(so.per_round(secure_rows()))
    table = {r["label"]: r for r in so.compare(p, s)}
    bytes_row = table["bytes up per client-round"]
    assert bytes_row["overhead"] == pytest.approx(57_874 / 60_480 - 1)
    assert table["  secure: shares"]["secure"] == 318
    later = "rounds 1+, mean"
    wall = table[f"{so.TIMES['round_wall']}, {later}"]
    assert (wall["plain"], wall["secure"]) == (pytest.approx(7.0), pytest.approx(8.0))
    assert wall["overhead"] == pytest.approx(8.0 / 7.0 - 1)
    # the protocol row: its seconds as a share of the plain run's train task per client-round
    proto = table[f"{so.TIMES['protocol_s_per_client']}, {later}"]
    plain_task = ((6.0 - 0.2 - 1.0 - 0.8) / 4 + (8.0 - 0.4 - 1.4 - 0.2) / 4) / 2
    assert proto["plain"] is None
    assert proto["secure"] == pytest.approx((0.2 / 4 + 0.4 / 4) / 2)
    assert proto["overhead"] == pytest.approx(proto["secure"] / plain_task)
    r0 = table[f"{so.TIMES['orchestration_overhead']}, round 0"]
    assert r0["overhead"] is None  # plain's 0.0: no ratio rather than a division by zero
    assert table["clients dropped from the protocol"]["secure"] == 0
    assert table["coordinates clipped by the encoding"]["secure"] == 0


def write_run(run_dir: Path, rows: list[dict], adapter: dict[str, torch.Tensor]) -> None:
    (run_dir / "checkpoints" / "round_0000").mkdir(parents=True)
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    save_file(adapter, str(run_dir / "checkpoints" / "round_0000" / "adapter.safetensors"))


def adapter(shift: float = 0.0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    a = torch.randn(8, 16, generator=g) * 0.05
    b = torch.randn(16, 8, generator=g) * 0.05
    return {"a": a + shift, "b": b}


def test_round_zero_adapters_agree_within_the_fixed_point_resolution(tmp_path) -> None:
    k, clip = 4, 0.7
    # s ~= (2^31 - 1 - k) / (k C) (secagg_encoding.fixed_point_scale): the sum's error k / s
    resolution = k * k * clip / (2**31 - 1 - k)
    write_run(tmp_path / "plain", [], adapter())
    write_run(tmp_path / "near", [], adapter(resolution / 2))
    write_run(tmp_path / "far", [], adapter(1e-5))
    near = so.adapter_agreement(tmp_path / "plain", tmp_path / "near", k, clip)
    assert near["resolution"] == pytest.approx(resolution, rel=1e-6)
    assert near["agree"] and near["max_abs_diff"] <= near["tolerance"]
    far = so.adapter_agreement(tmp_path / "plain", tmp_path / "far", k, clip)
    assert not far["agree"] and far["max_abs_diff"] == pytest.approx(1e-5, rel=1e-2)


def test_reuse_remakes_the_report_from_the_run_files(tmp_path) -> None:
    out = tmp_path / "out"
    runs = {"plain": plain_rows(), "secure": secure_rows()}
    record = {}
    for mode, rows in runs.items():
        run_dir = out / "runs" / f"k4_{mode}"
        write_run(run_dir, rows, adapter())
        record[mode] = {
            "name": f"k4_{mode}",
            "status": "completed",
            "run_dir": str(run_dir),
            "wall_s": 1.0,
            "k": 4,
            "overrides": [],
        }
    previous = {"wall_s": 12.0, "load_start": 4.0, "load_end": 5.0, "pairs": [{"k": 4, **record}]}
    (out / "secagg_overhead.json").write_text(json.dumps(previous))
    assert so.main(["--reuse", "--out", str(out)]) == 0
    result = json.loads((out / "secagg_overhead.json").read_text())
    (pair,) = result["pairs"]
    assert pair["secure"]["summary"]["bytes_up"] == 57_874
    assert pair["adapters_round0"]["agree"] and pair["adapters_round0"]["max_abs_diff"] == 0.0
    md = (out / "secagg_overhead.md").read_text()
    assert "`python bench/secagg_overhead.py`" in md and "load average 4.0" in md
    header = next(line for line in md.splitlines() if line.startswith("| per client-round"))
    assert header.count("|") == 5  # label + plain, secure, overhead for the one k
    assert "| bytes up per client-round | 60,480 | 57,874 | -4.3% |" in md
