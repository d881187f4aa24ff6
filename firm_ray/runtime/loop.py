"""The federated round loop: ``firm_ray.run(config)``.

    firm-ray run tune_configs/quickstart.yaml                 # local Ray on this machine
    RAY_ADDRESS=auto firm-ray run CONFIG                       # an existing cluster
    ray job submit --working-dir . -- python -m firm_ray run CONFIG

Reads top to bottom: set up (run dir, Ray, a placement group of W worker bundles, W
ClientWorker actors, the Aggregator actor, theta^0, the initial evaluation), then per round
(sample clients -> dispatch to free workers -> collect with a timeout -> aggregate -> evaluate
-> log -> checkpoint), then save the final adapter, summary and plots.

A failed or late client is left out and counted; a round with fewer than
``federation.min_clients`` usable updates is retried once, then the run fails with the reason.
Skipped local steps (a reward that raised or returned NaN, a non-finite loss) are counted per
round and over the run; once more than ``trainer.max_skip_fraction`` of all local steps so far
were skipped the run fails naming the first reason, so a broken reward cannot "complete" a run
that learned nothing.
``resume`` continues from the last checkpoint; since every client task is seeded by
(experiment seed, client, round), a resumed run reaches the same final adapter.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray
from ray.util.placement_group import placement_group, remove_placement_group
from ray.util.scheduling_strategies import (
    NodeAffinitySchedulingStrategy,
    PlacementGroupSchedulingStrategy,
)
from rich.console import Console

from firm_ray.config import FirmConfig, load_config, save_config
from firm_ray.federation import RoundFailed, sample_clients
from firm_ray.federation.strategies import round_step_metrics
from firm_ray.runtime.aggregator import Aggregator, latest_checkpoint, process_rss_mb
from firm_ray.runtime.worker import ClientWorker
from firm_ray.tracking.jsonl import read_metrics
from firm_ray.tracking.report import StepTotals, build_summary, make_plots, print_report
from firm_ray.tracking.wandb_tracker import make_tracker
from firm_ray.types import ClientUpdate

PLACEMENT_TIMEOUT_S = 60.0
ROUND_RETRIES = 1
TASKS_IN_FLIGHT = 2  # per worker: one running, one queued in the actor
MAX_FAILURES_SHOWN = 5  # left-out clients printed per round (all of them are in the row)


class RunError(RuntimeError):
    """The run cannot continue; the message says why and what to change."""


@dataclass
class Cluster:
    """The actors of one run and how to tear them down."""

    workers: list[Any]
    aggregator: Any
    group: Any
    started_ray: bool
    worker_cls: Any
    config_dict: dict[str, Any]
    owns_group: bool = True
    """False inside a Ray Tune trial: the group is the trial's and Tune removes it."""
    first_bundle: int = 0
    """Worker i runs in bundle first_bundle + i (a Tune trial's group may hold more bundles)."""

    def worker_options(self, index: int) -> dict[str, Any]:
        runtime = self.config_dict["runtime"]
        return {
            "num_cpus": runtime["num_cpus_per_worker"],
            "num_gpus": runtime["num_gpus_per_worker"],
            "scheduling_strategy": PlacementGroupSchedulingStrategy(
                placement_group=self.group,
                placement_group_bundle_index=self.first_bundle + index,
            ),
        }

    def restart_worker(self, index: int) -> None:
        """Replace a dead or stuck worker by a fresh one in the same bundle."""
        ray.kill(self.workers[index], no_restart=True)
        self.workers[index] = self.worker_cls.options(**self.worker_options(index)).remote(
            self.config_dict, index
        )

    def shutdown(self) -> None:
        for actor in [*self.workers, self.aggregator]:
            ray.kill(actor, no_restart=True)
        if self.owns_group:
            remove_placement_group(self.group)
        if self.started_ray:
            ray.shutdown()


class FederatedRun:
    """One federated experiment, a round at a time.

    ``run()`` loops over it; the Ray Tune trainable (runtime/sweep.py) calls ``step()`` once
    per Tune iteration and ``finish("stopped")`` when a scheduler ends the trial early, so a
    stopped trial still closes its trackers and writes its summary.

    With ``resume`` (a run directory) the run's own config.yaml is used and ``config`` ignored.
    ``worker_cls`` is the actor body serving client tasks (ClientWorker; bench/runtime.py
    passes a calibrated synthetic workload with the same methods to time the orchestration).
    Every artifact is written on the driver's node (the aggregator is pinned there; the final
    adapter's files come back from a worker), so a multi-node run needs no shared storage.
    """

    def __init__(
        self,
        config: FirmConfig | None,
        resume: str | Path | None = None,
        console: Console | None = None,
        worker_cls: type = ClientWorker,
    ) -> None:
        self.console = console or Console()
        self.start_time = time.perf_counter()
        if resume is not None:
            run_dir = Path(resume)
            checkpoint = latest_checkpoint(run_dir)
            if checkpoint is None:
                raise RunError(
                    f"--resume {run_dir}: no checkpoint found under {run_dir}/checkpoints"
                )
            config = load_config(run_dir / "config.yaml")
        else:
            if config is None:
                raise RunError("run() needs a config (or resume=RUN_DIR)")
            run_dir = _fresh_run_dir(Path(config.experiment.output_dir) / config.experiment.name)
            checkpoint = None
            save_config(config, run_dir / "config.yaml")
        self.config, self.run_dir = config, run_dir
        self.summary: dict[str, Any] | None = None
        self.console.print(f"[bold]firm-ray[/] {config.algorithm.name} -> {run_dir}")
        self.cluster = _start_cluster(config, run_dir, self.console, worker_cls)
        try:
            self._restore_or_start(checkpoint)
        except BaseException:
            self.cluster.shutdown()
            raise

    def _restore_or_start(self, checkpoint: Path | None) -> None:
        agg, workers = self.cluster.aggregator, self.cluster.workers
        if checkpoint is None:
            ray.get(agg.set_global.remote(workers[0].initial_adapter.remote()))
            self.next_round = 0
            self.payload = Broadcast.of(agg.global_payload.remote())
            initial = ray.get(workers[0].evaluate.remote(self.payload.ref))
            self.initial_rewards = initial["rewards"]
            self.elapsed_before = 0.0
        else:
            info = ray.get(agg.load_checkpoint.remote(str(checkpoint)))
            self.next_round = info["round"] + 1
            self.payload = Broadcast.of(agg.global_payload.remote())
            self.initial_rewards = info["initial_rewards"]
            self.elapsed_before = info.get("elapsed_s", 0.0)
            self.console.print(f"resuming after round {info['round']} from {checkpoint}")
        names = [r.name for r in self.config.rewards]
        self.console.print(
            "initial eval rewards: "
            + ", ".join(f"{n} {v:.3f}" for n, v in zip(names, self.initial_rewards, strict=True))
        )
        config_dict = self.config.model_dump(mode="json")
        self.tracker = make_tracker(
            config_dict, self.run_dir, self.next_round if checkpoint else None
        )
        if checkpoint is None:
            self.tracker.log_config(config_dict)
        # the rows kept (a resumed run's tracker has dropped those it will re-run)
        self.step_totals = StepTotals.of_rows(read_metrics(self.run_dir) if checkpoint else [])

    @property
    def done(self) -> bool:
        """All rounds ran (the run may still need ``finish``)."""
        return self.next_round >= self.config.federation.rounds

    def elapsed(self) -> float:
        return self.elapsed_before + time.perf_counter() - self.start_time

    def step(self) -> dict[str, Any]:
        """Run the next round: train, aggregate, evaluate, log, checkpoint; returns its row."""
        fed, cluster = self.config.federation, self.cluster
        round_index = self.next_round
        with self.console.status(
            f"round {round_index + 1}/{fed.rounds}: training "
            f"{fed.clients_sampled_per_round} client(s) on {len(cluster.workers)} worker(s)"
        ):
            row, self.payload = _one_round(
                self.config, round_index, cluster, self.payload, self.console, self._failed_round
            )
        self.tracker.log_round(round_index, row)
        _print_round(self.console, self.config, row)
        extra = {"initial_rewards": self.initial_rewards, "elapsed_s": self.elapsed()}
        ray.get(cluster.aggregator.save_checkpoint.remote(round_index, extra))
        self.next_round += 1
        self.step_totals = self.step_totals.plus(row)
        check_skip_fraction(self.step_totals, self.config.trainer.max_skip_fraction)
        return row

    def _failed_round(self, steps: dict[str, Any]) -> None:
        """A round attempt failed to aggregate: if its skipped steps put the run over the skip
        bound, fail now with that reason (retrying the same seeds would skip them again)."""
        with_round = self.step_totals.plus(steps)
        bound = self.config.trainer.max_skip_fraction
        if skip_fraction_error(with_round, bound):
            self.step_totals = with_round  # the summary counts the steps that failed the run
            check_skip_fraction(with_round, bound)

    def finish(self, status: str = "completed") -> dict[str, Any]:
        """Write the final adapter (completed runs), summary and plots, close the trackers and
        release the actors; returns the summary. Safe to call twice (the first call wins)."""
        if self.summary is not None:
            return self.summary
        config, run_dir = self.config, self.run_dir
        try:
            if status == "completed":
                files = ray.get(self.cluster.workers[0].adapter_files.remote(self.payload.ref))
                (run_dir / "adapter").mkdir(exist_ok=True)
                for name, content in files.items():
                    (run_dir / "adapter" / name).write_bytes(content)
        finally:
            self.summary = build_summary(
                run_dir,
                read_metrics(run_dir),
                algorithm=config.algorithm.name,
                seed=config.experiment.seed,
                initial_rewards=self.initial_rewards,
                wall_time_s=self.elapsed(),
                status=status,
                reward_names=[r.name for r in config.rewards],
                step_totals=self.step_totals,
            )
            try:
                if status != "failed":
                    make_plots(run_dir)  # before log_summary: W&B uploads them with it
                self.tracker.log_summary(self.summary)
                self.tracker.close()
            finally:
                self.cluster.shutdown()
        if status == "completed":
            print_report(run_dir, self.console)
        return self.summary


def run(
    config: FirmConfig | None,
    resume: str | Path | None = None,
    console: Console | None = None,
    worker_cls: type = ClientWorker,
) -> dict[str, Any]:
    """Run one federated experiment end to end; returns summary.json's content.

    See :class:`FederatedRun` for ``resume`` and ``worker_cls``. A run that raises still
    writes its summary (status "failed") before the error propagates.
    """
    experiment = FederatedRun(config, resume=resume, console=console, worker_cls=worker_cls)
    try:
        while not experiment.done:
            experiment.step()
    except BaseException:
        experiment.finish("failed")
        raise
    return experiment.finish("completed")


def skip_fraction_error(totals: StepTotals, bound: float) -> str:
    """The run's one-line error once more than ``bound`` of its local steps were skipped, else
    an empty string."""
    fraction = totals.fraction
    if fraction is None or fraction <= bound:
        return ""
    return (
        f"{fraction:.0%} of local steps skipped ({totals.skipped} of {totals.local}; > "
        f"trainer.max_skip_fraction = {bound:g}); first reason: {totals.first_reason}"
    )


def check_skip_fraction(totals: StepTotals, bound: float) -> None:
    """Raise RunError (see `skip_fraction_error`) once the skip bound is exceeded."""
    message = skip_fraction_error(totals, bound)
    if message:
        raise RunError(message)


# ---------------------------------------------------------------------------------- set-up
def _fresh_run_dir(path: Path) -> Path:
    """``runs/<name>``, or ``runs/<name>-2``, ``-3``, ... if it exists: never overwrite a run."""
    candidate, n = path, 1
    while candidate.exists():
        n += 1
        candidate = path.with_name(f"{path.name}-{n}")
    candidate.mkdir(parents=True)
    return candidate


def _init_ray(config: FirmConfig) -> bool:
    """Connect to RAY_ADDRESS / runtime.address, or start a local Ray bound to 127.0.0.1."""
    if ray.is_initialized():
        return False
    address = config.runtime.address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=True)
        return True
    ray.init(
        address="local",  # never attach to some other `ray start` cluster on this machine
        _node_ip_address="127.0.0.1",
        include_dashboard=config.runtime.dashboard,
        dashboard_host="127.0.0.1",
        log_to_driver=True,
        configure_logging=False,
    )
    return True


def worker_bundle(config: FirmConfig) -> dict[str, float]:
    """The resources of one ClientWorker (one placement-group bundle)."""
    bundle = {"CPU": float(config.runtime.num_cpus_per_worker)}
    if config.runtime.num_gpus_per_worker > 0:
        bundle["GPU"] = float(config.runtime.num_gpus_per_worker)
    return bundle


def _start_cluster(
    config: FirmConfig, run_dir: Path, console: Console, worker_body: type = ClientWorker
) -> Cluster:
    started = _init_ray(config)
    runtime = config.runtime
    bundle = worker_bundle(config)
    group = ray.util.get_current_placement_group()
    owns_group = group is None
    if group is not None:  # inside a Tune trial: our workers use the trial's last W bundles
        first_bundle = _check_trial_group(group, bundle, runtime.num_workers)
    else:  # reserve our own bundles
        first_bundle = 0
        group = placement_group([bundle] * runtime.num_workers, strategy="PACK")
        ready, _ = ray.wait([group.ready()], timeout=PLACEMENT_TIMEOUT_S)
        if not ready:
            remove_placement_group(group)
            raise RunError(
                f"could not place {runtime.num_workers} worker(s) of {bundle} within "
                f"{PLACEMENT_TIMEOUT_S:.0f} s; cluster resources: {ray.cluster_resources()}. "
                "Lower runtime.num_workers / num_cpus_per_worker / num_gpus_per_worker."
            )
    config_dict = config.model_dump(mode="json")
    worker_cls = ray.remote(worker_body)
    cluster = Cluster(
        workers=[],
        # the aggregator writes checkpoints into the run directory: keep it on the driver's node
        aggregator=ray.remote(Aggregator)
        .options(
            num_cpus=0,
            scheduling_strategy=NodeAffinitySchedulingStrategy(
                ray.get_runtime_context().get_node_id(), soft=False
            ),
        )
        .remote(config_dict, str(run_dir)),
        group=group,
        started_ray=started,
        worker_cls=worker_cls,
        config_dict=config_dict,
        owns_group=owns_group,
        first_bundle=first_bundle,
    )
    cluster.workers = [
        worker_cls.options(**cluster.worker_options(i)).remote(config_dict, i)
        for i in range(runtime.num_workers)
    ]
    with console.status(f"loading the model on {runtime.num_workers} worker(s)"):
        facts = ray.get([w.ready.remote() for w in cluster.workers])
    stats = facts[0]["partition"]
    (run_dir / "partition.json").write_text(json.dumps(stats, indent=2))
    console.print(
        f"{config.federation.num_clients} clients (sizes {stats.get('sizes')}), "
        f"{facts[0]['eval_prompts']} eval prompts, adapter of "
        f"{facts[0]['adapter_parameters']:,} parameters, {runtime.num_workers} worker(s)"
    )
    return cluster


def _check_trial_group(group: Any, bundle: dict[str, float], num_workers: int) -> int:
    """Index of the first worker bundle in the current (Tune trial's) placement group.

    Fails at once, naming both layouts, when the group cannot hold our W workers: an actor
    asking for more than its bundle would wait forever instead.
    """
    specs = group.bundle_specs
    ours = specs[len(specs) - num_workers :] if len(specs) >= num_workers else []
    fits = len(ours) == num_workers and all(
        spec.get(k, 0.0) + 1e-9 >= v for spec in ours for k, v in bundle.items()
    )
    if not fits:
        raise RunError(
            f"this run needs {num_workers} bundle(s) of {bundle} for its workers, but the "
            f"placement group it runs in has {specs}; build the trial's resources with "
            "firm_ray.runtime.sweep.trial_resources(config)"
        )
    return len(specs) - num_workers


# ---------------------------------------------------------------------------------- rounds
@dataclass(frozen=True)
class Broadcast:
    """The global adapter as the workers receive it: its object ref (serialized once by the
    aggregator, read in place by every task) and its exact size in bytes."""

    ref: Any
    nbytes: int

    @classmethod
    def of(cls, ref: Any) -> Broadcast:
        return cls(ref, int(ray.get(ref).nbytes))


def _one_round(
    config: FirmConfig,
    round_index: int,
    cluster: Cluster,
    payload: Broadcast,
    console: Console,
    on_failed: Callable[[dict[str, Any]], None] | None = None,
) -> tuple[dict[str, Any], Broadcast]:
    """One round from the global adapter ``payload``; (its metrics row, the new adapter).

    ``on_failed`` sees the step metrics of an attempt that could not aggregate (too few usable
    updates) before it is retried or fails the run; it may raise instead.
    """
    fed = config.federation
    clients = sample_clients(
        config.experiment.seed, round_index, fed.num_clients, fed.clients_sampled_per_round
    )
    for attempt in range(ROUND_RETRIES + 1):
        round_start = time.perf_counter()
        states = ray.get(cluster.aggregator.states_for.remote(clients))
        results, failures = _dispatch(config, round_index, clients, payload.ref, states, cluster)
        steps = round_step_metrics([header for header, _ in results.values()], config)
        done = sorted(results)
        server_ref, new_payload = cluster.aggregator.aggregate.options(num_returns=2).remote(
            round_index, [results[c][0] for c in done], [[results[c][1]] for c in done], failures
        )
        try:
            server = ray.get(server_ref)
            break
        except ray.exceptions.RayTaskError as err:
            if not isinstance(err.cause, RoundFailed):
                raise
            if on_failed is not None:
                on_failed(steps)
            if attempt == ROUND_RETRIES:
                raise RunError(f"round {round_index} failed: {err.cause}") from None
            console.print(f"[yellow]round {round_index}: {err.cause}; retrying[/]")
    evaluation = None
    eval_seconds = 0.0
    if (round_index + 1) % fed.eval_every == 0 or round_index == fed.rounds - 1:
        evaluation = ray.get(cluster.workers[0].evaluate.remote(new_payload))
        eval_seconds = evaluation["seconds"]
    client_metrics = server["client_metrics"]
    accepted = [str(c) for c in server["accepted"]]
    timing = {
        key: sum(client_metrics[c].get(f"time_{key}", 0.0) for c in accepted)
        for key in ("generate", "score", "forward", "backward", "solve", "step")
    }
    round_wall = time.perf_counter() - round_start
    busiest = _busiest_worker_seconds(client_metrics)
    timing.update(
        aggregation=server["aggregation_seconds"],
        evaluation=eval_seconds,
        round_wall=round_wall,
        orchestration_overhead=max(
            0.0, round_wall - busiest - server["aggregation_seconds"] - eval_seconds
        ),
    )
    train_rewards = [
        client_metrics[c]["rewards"] for c in accepted if "rewards" in client_metrics[c]
    ]
    return {
        "round": round_index,
        "rewards": evaluation["rewards"] if evaluation else None,
        "reward_names": [r.name for r in config.rewards],
        "rewards_by_category": evaluation["rewards_by_category"] if evaluation else None,
        "kl": evaluation["kl"] if evaluation else None,
        "client_lambdas": server["client_lambdas"],
        "disagreement": server["disagreement"],
        "param_drift": server["param_drift"],
        "bytes_up": server["bytes_up"],
        "bytes_down": {str(c): payload.nbytes for c in clients if c in results},
        "clients": clients,
        "failed": failures + server["rejected"],
        "train_rewards": [sum(col) / len(col) for col in zip(*train_rewards, strict=True)]
        if train_rewards
        else None,
        "server": server["server"],
        "timing": timing,
        **steps,
        "memory": {
            "driverprocess_rss_mb": process_rss_mb(),
            "aggregatorprocess_rss_mb": server["rss_mb"],
        },
    }, Broadcast(new_payload, server["bytes_down_next"])


def _dispatch(
    config: FirmConfig,
    round_index: int,
    clients: list[int],
    payload: Any,
    states: dict[int, dict],
    cluster: Cluster,
) -> tuple[dict[int, tuple[ClientUpdate, Any]], list[dict[str, Any]]]:
    """Run the clients on whichever worker is free.

    Returns ({client: (header, payloads ref)}, failures). Each worker holds up to
    ``TASKS_IN_FLIGHT`` tasks (the next one waits in the actor's queue, so there is no gap
    between tasks), and the driver only fetches the small header of a finished task: the
    adapter payload goes from the worker to the aggregator without passing through here.
    """
    queue = list(clients)
    running: dict[Any, tuple[int, int, Any]] = {}  # header ref -> (client, worker, payloads ref)
    slots = [w for _ in range(TASKS_IN_FLIGHT) for w in range(len(cluster.workers))]
    results: dict[int, tuple[ClientUpdate, Any]] = {}
    failures: list[dict[str, Any]] = []
    deadline = time.perf_counter() + config.federation.round_timeout_s
    while queue or running:
        while queue and slots:
            client, worker = queue.pop(0), slots.pop(0)
            header, payloads = (
                cluster.workers[worker]
                .train.options(num_returns=2)
                .remote(client, round_index, payload, states.get(client) or None)
            )
            running[header] = (client, worker, payloads)
        remaining = deadline - time.perf_counter()
        done, _ = ray.wait(list(running), num_returns=1, timeout=max(0.0, remaining))
        if not done:  # round timeout: everyone still running or queued is late
            for client, _, _ in running.values():
                failures.append({"client": client, "reason": "late (round_timeout_s)"})
            for worker in sorted({w for _, w, _ in running.values()}):
                cluster.restart_worker(worker)
            failures += [{"client": c, "reason": "late (not started)"} for c in queue]
            break
        client, worker, payloads = running.pop(done[0])
        try:
            results[client] = (ray.get(done[0]), payloads)
            slots.append(worker)
        except ray.exceptions.RayActorError as err:
            failures.append({"client": client, "reason": f"worker died: {err}"[:300]})
            if worker not in slots:
                cluster.restart_worker(worker)
            slots.append(worker)
        except ray.exceptions.RayTaskError as err:
            failures.append(
                {"client": client, "reason": f"{type(err.cause).__name__}: {err.cause}"[:300]}
            )
            slots.append(worker)
    return results, failures


def _busiest_worker_seconds(client_metrics: dict[str, dict[str, Any]]) -> float:
    per_worker: dict[float, float] = {}
    for m in client_metrics.values():
        per_worker[m.get("worker", 0.0)] = per_worker.get(m.get("worker", 0.0), 0.0) + m.get(
            "task_seconds", 0.0
        )
    return max(per_worker.values(), default=0.0)


def _print_round(console: Console, config: FirmConfig, row: dict[str, Any]) -> None:
    names = row["reward_names"]
    rewards = row["rewards"]
    reward_text = (
        ", ".join(f"{n} {v:.3f}" for n, v in zip(names, rewards, strict=True))
        if rewards
        else "(not evaluated)"
    )
    lambdas = [v for v in row["client_lambdas"].values() if v]
    mean_lam = (
        "[" + ", ".join(f"{sum(c) / len(c):.2f}" for c in zip(*lambdas, strict=True)) + "]"
        if lambdas
        else "-"
    )
    dis = row["disagreement"]
    kl = "-" if row["kl"] is None else f"{row['kl']:.3f}"
    dis_text = "-" if dis is None else f"{dis:.3f}"
    ok = len(row["clients"]) - len(row["failed"])
    skipped = row.get("skipped_steps") or 0
    reasons = row.get("skip_reasons") or ["no reason given"]
    skip_text = f" | skipped {skipped}/{row['local_steps']}: {reasons[0]}" if skipped else ""
    console.print(
        f"round {row['round'] + 1}/{config.federation.rounds}: {reward_text} | kl {kl} | "
        f"mean lambda {mean_lam} | disagreement {dis_text} | drift {row['param_drift']:.4f} | "
        f"{ok}/{len(row['clients'])} clients | {row['timing']['round_wall']:.1f} s{skip_text}",
        markup=False,
    )
    for failure in row["failed"][:MAX_FAILURES_SHOWN]:
        console.print(f"  client {failure['client']} left out: {failure['reason']}", markup=False)
    if len(row["failed"]) > MAX_FAILURES_SHOWN:
        more = len(row["failed"]) - MAX_FAILURES_SHOWN
        console.print(f"  ... and {more} more (metrics.jsonl: failed)", markup=False)


__all__ = [
    "FederatedRun",
    "RunError",
    "check_skip_fraction",
    "run",
    "skip_fraction_error",
    "worker_bundle",
]
