"""The federated round loop: ``firm_ray.run(config)``.

    firm-ray run tune_configs/quickstart.yaml                 # local Ray on this machine
    RAY_ADDRESS=auto firm-ray run CONFIG                       # an existing cluster
    ray job submit --working-dir . -- python -m firm_ray run CONFIG

Reads top to bottom: set up (run dir, Ray, then runtime/cluster.py: a placement group of W
worker bundles, W ClientWorker actors, the Aggregator actor; theta^0, the initial evaluation),
then per round (runtime/rounds.py: sample clients -> dispatch to free workers -> collect with a
timeout -> aggregate -> evaluate; runtime/round_row.py: its metrics row; then log, print
(runtime/console.py), checkpoint), then save the final adapter, summary and plots.

A client whose own code raised, or that is late (``federation.round_timeout_s``), is left out
and counted; a round with fewer than ``federation.min_clients`` usable updates is retried once,
then the run fails with the reason.

Faults cost nothing (runtime/faults.py): a dead or stuck worker is replaced and its clients
re-run in the same round; a dead aggregator is recreated, restored from the last checkpoint (or
theta^0) and the aggregation replayed on the round's kept client updates (a death while saving
the checkpoint replays the whole round: its result died with the aggregator). Both give the
adapter of an uninterrupted run, are counted in the round's row (``faults``; those of start-up
and of a checkpoint save in the next row) and bounded per run (``runtime.max_*_restarts``).
SIGINT / SIGTERM (runtime/signals.py) abandon the round in progress, write summary.json with
status ``interrupted``, shut down the Ray this run started, print the resume command and raise
RunInterrupted; a second signal exits at once.
Skipped local steps (a reward that raised or returned NaN, a non-finite loss) are counted per
round and over the run; once more than ``trainer.max_skip_fraction`` of all local steps so far
were skipped the run fails naming the first reason, so a broken reward cannot "complete" a run
that learned nothing.
``resume`` continues from the last checkpoint; since every client task is seeded by
(experiment seed, client, round), a resumed run reaches the same final adapter.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from rich.console import Console

from firm_ray.config import FirmConfig, dump_config, load_config
from firm_ray.runtime import signals
from firm_ray.runtime.aggregator import latest_checkpoint
from firm_ray.runtime.checkpoint import find_resume_checkpoint
from firm_ray.runtime.cluster import start_cluster, worker_bundle
from firm_ray.runtime.console import print_interrupted, print_round
from firm_ray.runtime.errors import RunError, RunInterrupted, attach_run_dir
from firm_ray.runtime.faults import AggregatorDied
from firm_ray.runtime.privacy_budget import check_budget, protection_lines
from firm_ray.runtime.rounds import Broadcast, one_round
from firm_ray.runtime.worker import ClientWorker
from firm_ray.tracking.jsonl import read_metrics
from firm_ray.tracking.report import StepTotals, build_summary, make_plots, print_report
from firm_ray.tracking.storage import atomic_write_text, fresh_dir, write_dir_atomically
from firm_ray.tracking.wandb_tracker import make_tracker


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
            checkpoint, skipped = find_resume_checkpoint(run_dir)
            for line in skipped:  # damaged newer checkpoints, named; resume goes on without them
                self.console.print(line, markup=False)
            if checkpoint is None:
                raise RunError(
                    f"--resume {run_dir}: no intact checkpoint under {run_dir}/checkpoints"
                    + (f" ({'; '.join(skipped)})" if skipped else "")
                )
            config = load_config(run_dir / "config.yaml")
            check_budget(config)
        else:
            if config is None:
                raise RunError("run() needs a config (or resume=RUN_DIR)")
            check_budget(config)  # refuse before anything is written or started
            # runs/<name>, else <name>-2, -3, ...: never overwrite a run, never race another process
            run_dir = fresh_dir(Path(config.experiment.output_dir) / config.experiment.name)
            checkpoint = None
            try:
                atomic_write_text(run_dir / "config.yaml", dump_config(config), what="config.yaml")
            except BaseException as err:
                attach_run_dir(err, run_dir)
                raise
        self.config, self.run_dir = config, run_dir
        self.summary: dict[str, Any] | None = None
        self.console.print(f"[bold]firm-ray[/] {config.algorithm.name} -> {run_dir}")
        for line in protection_lines(config):
            self.console.print(line, markup=False)
        try:
            started = _init_ray(config)
            signals.reassert()  # ray.init installed its own SIGTERM handler
            self.cluster = start_cluster(config, run_dir, self.console, worker_cls, started)
            try:
                self._restore_or_start(checkpoint)
            except BaseException:
                self.cluster.shutdown()
                raise
        except BaseException as err:
            attach_run_dir(err, run_dir)
            raise

    def _restore_or_start(self, checkpoint: Path | None) -> None:
        self.next_round = 0
        while True:
            try:
                info = self._server_state(checkpoint)
                break
            except AggregatorDied as err:
                self.cluster.restart_aggregator(f"aggregator died while starting: {err}")
        if info is None:
            initial = self.cluster.on_worker0("evaluate", self.payload.ref)
            self.initial_rewards = initial["rewards"]
            self.elapsed_before = 0.0
        else:
            self.next_round = info["round"] + 1
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

    def _server_state(self, checkpoint: Path | None) -> dict[str, Any] | None:
        """Give the aggregator theta^0 (no checkpoint) or the checkpoint's state and take its
        broadcast; returns the checkpoint's state.json (None for theta^0). AggregatorDied if
        the aggregator dies meanwhile."""
        cluster = self.cluster
        if checkpoint is None:
            initial = cluster.on_worker0("initial_adapter")  # seeded: the same every time
            cluster.from_aggregator(cluster.aggregator.set_global.remote(initial))
            info = None
        else:
            load = cluster.aggregator.load_checkpoint.remote(str(checkpoint))
            info = cluster.from_aggregator(load)
        self.payload = Broadcast.of(cluster.aggregator.global_payload.remote(), cluster)
        return info

    def _recover_aggregator(self, reason: str) -> None:
        """Recreate a dead aggregator with the state the round in progress started from: the
        newest checkpoint (theta^0 and no client state before the first one)."""
        while True:
            self.cluster.restart_aggregator(f"aggregator died {reason}")
            checkpoint = latest_checkpoint(self.run_dir)
            try:
                info = self._server_state(checkpoint)
                break
            except AggregatorDied as err:
                reason = f"while being restored from {checkpoint or 'theta^0'}: {err}"
        found = -1 if info is None else info["round"]
        if found != self.next_round - 1:
            raise RunError(
                f"the aggregator died in round {self.next_round + 1} and the newest intact "
                f"checkpoint is of round {found + 1}, not {self.next_round}: continue with "
                f"firm-ray run --resume {self.run_dir}"
            )
        self.console.print(
            f"[yellow]aggregator died {reason}; recreated from "
            f"{checkpoint.name if checkpoint else 'theta^0'}, replaying the aggregation[/]"
        )

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
            row, self.payload = self._round(round_index)
        with signals.critical():  # a signal here waits for the row to be complete
            self.tracker.log_round(round_index, row)
            print_round(self.console, self.config, row)
        extra = {"initial_rewards": self.initial_rewards, "elapsed_s": self.elapsed()}
        while True:
            try:
                save = cluster.aggregator.save_checkpoint.remote(round_index, extra)
                cluster.from_aggregator(save)
                break
            except AggregatorDied as err:  # the round's result died with it: run it again
                self._recover_aggregator(f"saving round {round_index + 1}: {err}")
                replay, self.payload = self._round(round_index)  # the same result, logged
                cluster.faults.carry(replay["faults"])  # shown in the next round's row
        self.next_round += 1
        self.step_totals = self.step_totals.plus(row)
        check_skip_fraction(self.step_totals, self.config.trainer.max_skip_fraction)
        return row

    def _round(self, round_index: int) -> tuple[dict[str, Any], Broadcast]:
        return one_round(
            self.config,
            round_index,
            self.cluster,
            self.payload,
            self.console,
            self._failed_round,
            self._recover_aggregator,
        )

    def _failed_round(self, steps: dict[str, Any]) -> None:
        """A round attempt failed to aggregate: if its skipped steps put the run over the skip
        bound, fail now with that reason (retrying the same seeds would skip them again)."""
        with_round = self.step_totals.plus(steps)
        bound = self.config.trainer.max_skip_fraction
        if skip_fraction_error(with_round, bound):
            self.step_totals = with_round  # the summary counts the steps that failed the run
            check_skip_fraction(with_round, bound)

    def _pending_faults(self) -> dict[str, Any]:
        """Faults logged after the last row (a replayed last round), printed; else empty."""
        pending = self.cluster.faults.take_round()
        for event in pending["events"]:
            self.console.print(f"  fault (after the last row): {event}", markup=False)
        return pending

    def finish(self, status: str = "completed") -> dict[str, Any]:
        """Write the final adapter (completed runs), summary and plots, close the trackers and
        release the actors; returns the summary. Safe to call twice (the first call wins).

        A run whose final adapter cannot be written (a full disk) is ``failed``, and that error
        is the one raised: a summary that cannot be written after it is reported in one line."""
        if self.summary is not None:
            return self.summary
        config, run_dir = self.config, self.run_dir
        first_error: BaseException | None = None
        try:
            if status == "completed":
                files = self.cluster.on_worker0("adapter_files", self.payload.ref)
                write_dir_atomically(
                    run_dir / "adapter", files, what="the final adapter", resume=run_dir
                )
        except BaseException as err:
            status, first_error = "failed", err
            raise
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
                # faults of a last round replayed while checkpointing: no later row holds them
                pending_faults=self._pending_faults(),
            )
            try:
                if status != "failed":
                    make_plots(run_dir)  # before log_summary: W&B uploads them with it
                self.tracker.log_summary(self.summary)
                self.tracker.close()
            except Exception as err:
                if first_error is None:
                    raise
                self.console.print(
                    f"summary.json not written: {type(err).__name__}: {str(err).splitlines()[0]}",
                    markup=False,
                )
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
    writes its summary (status "failed") before the error propagates, with the run directory
    as ``err.run_dir``. Called in the main thread, SIGINT / SIGTERM stop it cleanly
    (runtime/signals.py): summary status "interrupted", the resume command printed, and
    RunInterrupted (a KeyboardInterrupt) raised.
    """
    console = console or Console()
    with signals.stop_on_signals() as stop:
        experiment: FederatedRun | None = None
        try:
            experiment = FederatedRun(config, resume=resume, console=console, worker_cls=worker_cls)
            while not experiment.done:
                experiment.step()
        except BaseException as err:
            if experiment is not None:
                attach_run_dir(err, experiment.run_dir)
            if stop.signum is None:
                if experiment is not None:
                    _finish_failed(experiment, console)
                raise
            run_dir = experiment.run_dir if experiment else getattr(err, "run_dir", None)
            summary = experiment.finish("interrupted") if experiment else None
            print_interrupted(console, stop.signum, run_dir, summary)
            raise RunInterrupted(stop.signum, run_dir, summary) from None
        with stop.critical(deliver=False):  # the final adapter is written whole
            summary = experiment.finish("completed")
        if stop.signum is not None:  # it came while finishing: the run is complete
            print_interrupted(console, stop.signum, experiment.run_dir, summary)
            raise RunInterrupted(stop.signum, experiment.run_dir, summary)
        return summary


def _finish_failed(experiment: FederatedRun, console: Console) -> None:
    """Write the failed run's summary; if that fails too (the disk that failed the run is still
    full), say so in one line and let the first error be the one raised."""
    try:
        experiment.finish("failed")
    except Exception as err:
        console.print(
            f"summary.json not written: {type(err).__name__}: {str(err).splitlines()[0]}",
            markup=False,
        )


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
def _init_ray(config: FirmConfig) -> bool:
    """Connect to RAY_ADDRESS / runtime.address, or start a local Ray on loopback only."""
    from firm_ray.runtime.local_ray import init_ray

    return init_ray(config)


__all__ = [
    "FederatedRun",
    "RunError",
    "check_skip_fraction",
    "run",
    "skip_fraction_error",
    "worker_bundle",
]
