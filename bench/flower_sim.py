"""Flower's simulation engine on bench/runtime.py's synthetic workload (runs in Flower's venv).

Flower pins its own Ray, so this script runs with a separate virtualenv's python, outside the
project (bench/runtime.py creates it when missing and runs this file as a subprocess):

    python -m venv /tmp/firm_ray_flower_venv
    /tmp/firm_ray_flower_venv/bin/pip install torch==2.13.0           # first: the CPU wheel
    echo torch==2.13.0 > /tmp/firm_ray_flower_venv/torch-constraint.txt
    PIP_CONSTRAINT=/tmp/firm_ray_flower_venv/torch-constraint.txt \\
        /tmp/firm_ray_flower_venv/bin/pip install "flwr[simulation]"
    /tmp/firm_ray_flower_venv/bin/python bench/flower_sim.py --n 10 100 --rounds 5 \\
        --iters 150 --out /tmp/flower_sim.json

It imports nothing from firm_ray. The workload is the same as bench/runtime.py's
SyntheticWorker: every virtual client receives the global 1M-float32 vector (4 MB), runs
``--iters`` single-threaded 256x256 matmuls (~50 ms; without ``--iters`` the count is calibrated
here), and returns vector + 1e-3 (4 MB) with its measured compute time. Strategy: Flower's FedAvg
with fraction_train = 1 (all N clients every round), no client evaluation; run_simulation with
``client_resources = {num_cpus: 1}`` on ``init_args.num_cpus = 2``, i.e. 2 client actors running
at once. Round time = the interval between consecutive calls of the strategy's server-side
``evaluate_fn`` (called before round 1 and after each round), so it covers the whole round:
broadcast, training, replies, aggregation. Round 1 also covers Ray's start and the actor pool's
start-up (the ServerApp starts before the backend is up); bench/runtime.py reports rounds 2..R.

Each N runs in a fresh child process (run_simulation starts and stops its own Ray). The result
(one JSON object) is written to ``--out`` and printed as the last stdout line.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import subprocess
import sys
import time
import traceback

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")
os.environ.setdefault("RAY_DEDUP_LOGS", "1")

DIM = 256


def matmul_task(iters: int) -> float:
    """``iters`` single-threaded 256x256 matmuls (+ renormalization); the elapsed seconds."""
    import torch

    torch.set_num_threads(1)
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(DIM, DIM, generator=gen) / DIM**0.5
    b = torch.randn(DIM, DIM, generator=gen) / DIM**0.5
    start = time.perf_counter()
    x = a
    for _ in range(iters):
        x = torch.mm(x, b)
        x = x / (x.norm() + 1e-6)
    return time.perf_counter() - start


def calibrate(target_s: float) -> int:
    """Iterations of matmul_task that take ~target_s on this machine (single thread)."""
    matmul_task(30)
    per_iter = min(matmul_task(200) for _ in range(3)) / 200
    return max(1, round(target_s / per_iter))


def measure(iters: int, reps: int = 5) -> float:
    """Median seconds of matmul_task(iters) over ``reps`` runs."""
    return statistics.median(matmul_task(iters) for _ in range(reps))


def run_one(n: int, rounds: int, iters: int, param_len: int, out_path: str) -> None:
    """One run_simulation with N virtual clients; writes its stamps and client times."""
    import numpy as np
    from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
    from flwr.clientapp import ClientApp
    from flwr.serverapp import Grid, ServerApp
    from flwr.serverapp.strategy import FedAvg
    from flwr.simulation import run_simulation

    client_app = ClientApp()

    @client_app.train()
    def train(msg: Message, context: Context) -> Message:
        entered = time.perf_counter()
        arrays = msg.content["arrays"].to_numpy_ndarrays()
        compute = matmul_task(int(msg.content["config"]["iters"]))
        reply = ArrayRecord([a + np.float32(1e-3) for a in arrays])
        metrics = MetricRecord(
            {
                "num-examples": 1,
                "compute_s": compute,
                "handler_s": time.perf_counter() - entered,
                "pid": os.getpid(),
            }
        )
        return Message(content=RecordDict({"arrays": reply, "metrics": metrics}), reply_to=msg)

    stamps: list[float] = []
    compute: list[list[float]] = []
    handler: list[list[float]] = []
    pids: set[int] = set()

    def collect(contents: list, key: str) -> MetricRecord:
        compute.append([c["metrics"]["compute_s"] for c in contents])
        handler.append([c["metrics"]["handler_s"] for c in contents])
        pids.update(int(c["metrics"]["pid"]) for c in contents)
        return MetricRecord({"replies": len(contents)})

    server_app = ServerApp()

    @server_app.main()
    def main(grid: Grid, context: Context) -> None:
        strategy = FedAvg(
            fraction_train=1.0,
            fraction_evaluate=0.0,
            min_train_nodes=n,
            min_available_nodes=n,
            train_metrics_aggr_fn=collect,
        )

        def evaluate_fn(server_round: int, arrays: ArrayRecord) -> None:
            stamps.append(time.perf_counter())

        strategy.start(
            grid=grid,
            initial_arrays=ArrayRecord([np.zeros(param_len, dtype=np.float32)]),
            num_rounds=rounds,
            train_config=ConfigRecord({"iters": iters}),
            evaluate_fn=evaluate_fn,
        )

    backend_config = {
        "client_resources": {"num_cpus": 1, "num_gpus": 0.0},
        "init_args": {"num_cpus": 2, "include_dashboard": False, "log_to_driver": False},
    }
    start = time.perf_counter()
    run_simulation(
        server_app=server_app,
        client_app=client_app,
        num_supernodes=n,
        backend_config=backend_config,
        verbose_logging=False,
    )
    end = time.perf_counter()
    result = {
        "n": n,
        "rounds": rounds,
        "round_s": [b - a for a, b in itertools.pairwise(stamps)],
        "compute_sum_s": [sum(c) for c in compute],
        "compute_mean_s": [statistics.fmean(c) if c else None for c in compute],
        "handler_mean_s": [statistics.fmean(h) if h else None for h in handler],
        "replies": [len(c) for c in compute],
        "client_processes": len(pids),
        "start_to_first_stamp_s": stamps[0] - start if stamps else None,
        "teardown_s": end - stamps[-1] if stamps else None,
        "total_s": end - start,
    }
    with open(out_path, "w") as fh:
        json.dump(result, fh)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, nargs="+", default=[10, 100])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--iters", type=int, default=0, help="0 = calibrate to --target-s")
    parser.add_argument("--target-s", type=float, default=0.05)
    parser.add_argument("--param-len", type=int, default=1_000_000)
    parser.add_argument("--out", default="/tmp/firm_ray_flower_sim.json")
    parser.add_argument("--single", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.single:
        run_one(args.n[0], args.rounds, args.iters, args.param_len, args.out)
        return

    import flwr
    import numpy
    import ray
    import torch

    iters = args.iters or calibrate(args.target_s)
    task_s = measure(iters)
    result: dict = {
        "versions": {
            "flwr": flwr.__version__,
            "ray": ray.__version__,
            "torch": torch.__version__,
            "numpy": numpy.__version__,
            "python": sys.version.split()[0],
        },
        "iters": iters,
        "task_s": task_s,
        "param_len": args.param_len,
        "workers": 2,
        "runs": [],
        "errors": [],
    }
    for n in args.n:
        child_out = f"{args.out}.n{n}.json"
        log_path = f"{args.out}.n{n}.log"
        if os.path.exists(child_out):
            os.remove(child_out)
        cmd = [
            sys.executable,
            os.path.abspath(__file__),
            "--single",
            "--n",
            str(n),
            "--rounds",
            str(args.rounds),
            "--iters",
            str(iters),
            "--param-len",
            str(args.param_len),
            "--out",
            child_out,
        ]
        with open(log_path, "w") as log:
            rc = subprocess.call(cmd, stdout=log, stderr=subprocess.STDOUT)
        if rc != 0 or not os.path.exists(child_out):
            with open(log_path) as log:
                tail = log.read()[-2000:]
            result["errors"].append({"n": n, "rc": rc, "log": log_path, "tail": tail})
            continue
        with open(child_out) as fh:
            result["runs"].append(json.load(fh))
    with open(args.out, "w") as fh:
        json.dump(result, fh)
    print(json.dumps(result))


if __name__ == "__main__":
    try:
        main()
    except Exception:  # report, do not hide: bench/runtime.py records the reason
        traceback.print_exc()
        sys.exit(1)
