"""``firm-ray sweep``: Ray Tune runs one whole federated experiment per trial.

    firm-ray sweep tune_configs/sweep_preferences.yaml     # local Ray on this machine
    firm-ray sweep --resume sweeps/sweep_preferences       # continue an interrupted sweep
    RAY_ADDRESS=auto firm-ray sweep SWEEP.yaml              # an existing cluster

Each trial is ``firm_ray.runtime.loop.run`` on the trial's config. Its ClientWorker actors live
in the trial's own placement group: ``tune.with_resources`` + a ``PlacementGroupFactory`` of
an empty head bundle (the trial function only waits on Ray) and one bundle per worker, so
Tune runs as many trials at once as the cluster's resources hold. ``run`` finds that group
with ``get_current_placement_group`` and places worker i in the trial's bundle i.

After every round the trial reports its metrics to Tune together with a small Tune checkpoint
that points at its run directory, whose own checkpoint was written first; ``--resume``
restores the Tune experiment and every unfinished trial continues its run from there
(``run(resume=RUN_DIR)``), so a resumed trial reaches the same adapter as an uninterrupted
one. At the end the sweep writes its Pareto report (``firm_ray.tracking.sweep_report``).

Sweep directory: ``<sweep.output_dir>/<sweep.name>/`` with ``sweep.yaml`` (the spec, its base
resolved into ``base_config.yaml`` next to it), ``trials/<trial_id>/`` (one run directory per
trial, schema docs/ARTIFACTS.md), ``tune/`` (Tune's experiment state) and the report files.
Multi-node: trials write their run directories on the node they run on and the report reads
them on the driver's node, so the sweep directory must be on storage every node shares
(``--output-dir`` on NFS or similar): on a Ray of several nodes the sweep checks that first
(runtime/shared_storage.py: a probe file written on each node, read back here) and fails in
one line, before any trial, when a node does not share it.

``--resume`` runs code from the sweep directory: ``tune.Tuner.restore`` unpickles
``tune/tuner.pkl`` (and the cloudpickled trial state beside it), and the configs name modules to
import. :func:`check_resume_dir` therefore refuses a directory in which anything is not owned
by the current user or is writable by group or others (docs/SECURITY.md).
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import ray
import yaml
from ray import tune
from rich.console import Console

from firm_ray.config import FirmConfig, save_config
from firm_ray.runtime.aggregator import latest_checkpoint
from firm_ray.runtime.local_ray import init_ray
from firm_ray.runtime.loop import FederatedRun, worker_bundle
from firm_ray.runtime.ownership import untrusted_reason
from firm_ray.runtime.shared_storage import unshared_nodes
from firm_ray.sweep_spec import Sweep, load_sweep
from firm_ray.tracking.jsonl import SUMMARY_FILE, read_metrics, write_json_atomic
from firm_ray.tracking.report import build_summary
from firm_ray.tracking.storage import fresh_dir

__all__ = ["SweepError", "check_resume_dir", "resume_sweep", "run_sweep", "trial_resources"]

SPEC_FILE = "sweep.yaml"
BASE_FILE = "base_config.yaml"
TUNE_DIR = "tune"
TRIALS_DIR = "trials"
STATUS_FILE = "tune_trials.json"
RUN_POINTER = "run.json"


class SweepError(RuntimeError):
    """The sweep cannot start or continue; the message says why and what to change."""


def trial_resources(config: FirmConfig) -> tune.PlacementGroupFactory:
    """One trial's placement group: an empty head bundle, then one bundle per ClientWorker."""
    return tune.PlacementGroupFactory(
        [{}] + [worker_bundle(config)] * config.runtime.num_workers, strategy="PACK"
    )


# ------------------------------------------------------------------------------- the trial
def _tune_metrics(row: dict[str, Any], state: dict[str, Any], preference: list[float]) -> dict:
    """Flat, always-present scalars for Tune (and ASHA) from one metrics.jsonl row.

    ``scalarized_reward`` = p . eval rewards of the latest evaluated round (training rewards
    until the first evaluation), so a scheduler always has a value to compare.
    """
    if row["rewards"] is not None:
        state["rewards"] = row["rewards"]
    rewards = state.get("rewards") or row["train_rewards"] or [0.0] * len(preference)
    out: dict[str, Any] = {"round": row["round"]}
    for name, value in zip(row["reward_names"], rewards, strict=True):
        out[f"reward/{name}"] = value
    out["scalarized_reward"] = float(sum(p * r for p, r in zip(preference, rewards, strict=True)))
    for key in ("kl", "disagreement", "param_drift"):
        if row[key] is not None:
            out[key] = row[key]
    ups = list(row["bytes_up"].values())
    out["bytes_up_per_client"] = sum(ups) / len(ups) if ups else 0.0
    out["failed_clients"] = len(row["failed"])
    out["round_wall_s"] = row["timing"]["round_wall"]
    return out


def _read_run_pointer(checkpoint_dir: str | Path) -> Path:
    """The run directory a FirmTrial's Tune checkpoint names (see save_checkpoint)."""
    return Path(json.loads((Path(checkpoint_dir) / RUN_POINTER).read_text())["run_dir"])


class FirmTrial(tune.Trainable):
    """The Tune trainable: one federated run, one round per Tune iteration.

    The class API (not a function) because Tune then calls ``cleanup`` when a scheduler stops
    the trial: the run closes its trackers (W&B flushes) and writes summary.json with status
    "stopped" instead of being killed mid-write. The run starts in the first ``step`` rather
    than ``setup``, because Tune restores a checkpoint (``load_checkpoint``) after ``setup``.
    """

    def setup(self, params: dict[str, Any], sweep_dir: str = "") -> None:
        logging.getLogger("ray.train").setLevel(logging.WARNING)  # "checkpoint created" a round
        self.root = Path(sweep_dir)
        self.params = params
        self.run_dir = self.root / TRIALS_DIR / self.trial_id
        self.experiment: FederatedRun | None = None
        self.state: dict[str, Any] = {}

    def _start(self) -> FederatedRun:
        quiet = Console(quiet=True)
        if latest_checkpoint(self.run_dir) is not None:  # a restored (or restarted) trial
            return FederatedRun(None, resume=self.run_dir, console=quiet)
        sweep = load_sweep(self.root / SPEC_FILE)
        group = sweep.base["tracking"]["wandb"]["group"] or sweep.spec.name
        config = sweep.trial_config(
            self.params,
            extra=[
                f"experiment.output_dir={json.dumps(str(self.root / TRIALS_DIR))}",
                f"experiment.name={json.dumps(self.trial_id)}",  # 12345_00000 is a YAML int
                f"tracking.wandb.group={json.dumps(group)}",
            ],
        )
        return FederatedRun(config, console=quiet)

    def step(self) -> dict[str, Any]:
        if self.experiment is None:
            self.experiment = self._start()
            self.run_dir = self.experiment.run_dir
        experiment = self.experiment
        try:
            # (a trial resumed after its last round reports that round again)
            row = read_metrics(self.run_dir)[-1] if experiment.done else experiment.step()
            config = experiment.config
            preference = config.algorithm.preference_vector(config.num_objectives)
            metrics = _tune_metrics(row, self.state, preference)
            metrics["done_rounds"] = experiment.next_round
            metrics["total_rounds"] = config.federation.rounds
            if experiment.done:  # everything is written before Tune may stop the trial
                summary = experiment.finish("completed")
                for key in ("hypervolume", "mean_disagreement", "status"):
                    metrics[f"final/{key}"] = summary.get(key)
                metrics[tune.result.DONE] = True
        except BaseException:
            experiment.finish("failed")
            raise
        return metrics

    def save_checkpoint(self, checkpoint_dir: str) -> None:
        """The run's own checkpoint is already on disk; Tune's only says where the run is."""
        (Path(checkpoint_dir) / RUN_POINTER).write_text(json.dumps({"run_dir": str(self.run_dir)}))

    def load_checkpoint(self, checkpoint_dir: str) -> None:
        self.run_dir = _read_run_pointer(checkpoint_dir)

    def reset_config(self, new_config: dict[str, Any]) -> bool:
        """Serve the next trial in this process (reuse_actors: no new Python, no re-imports)."""
        self.cleanup()
        self.params = new_config
        self.run_dir = self.root / TRIALS_DIR / self.trial_id
        self.experiment = None
        self.state = {}
        return True

    def cleanup(self) -> None:
        if self.experiment is not None and self.experiment.summary is None:
            self.experiment.finish("stopped")


# ------------------------------------------------------------------------------- the driver
def _check_resources(resources: tune.PlacementGroupFactory) -> None:
    """Fail before Tune starts when one trial can never be placed (Tune would wait forever)."""
    bundles = [b for b in resources.bundles if b]
    total = ray.cluster_resources()
    nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    need: dict[str, float] = {}
    for bundle in bundles:
        for key, value in bundle.items():
            need[key] = need.get(key, 0.0) + value
        if not any(all(node.get(k, 0.0) >= v for k, v in bundle.items()) for node in nodes):
            raise SweepError(
                f"no node can hold a worker bundle {bundle}; nodes have "
                f"{[{k: n.get(k, 0.0) for k in bundle} for n in nodes]}. Lower "
                "runtime.num_cpus_per_worker / num_gpus_per_worker in the base config."
            )
    short = {k: (v, total.get(k, 0.0)) for k, v in need.items() if v > total.get(k, 0.0) + 1e-9}
    if short:
        detail = ", ".join(f"{k}: needs {v:g}, cluster has {h:g}" for k, (v, h) in short.items())
        raise SweepError(
            f"one trial needs {len(bundles)} worker bundle(s) of {bundles[0]} ({detail}), so "
            "no trial could ever start. Lower runtime.num_workers or the per-worker resources "
            "in sweep.set (e.g. runtime.num_workers=1), or run on a bigger cluster."
        )


def _check_shared_storage(sweep_dir: Path) -> None:
    """Fail before Tune starts when a node of the cluster does not share the sweep directory:
    trials running there would write their runs where the report cannot read them."""
    problems = unshared_nodes(sweep_dir)
    if problems:
        nodes = len(problems) + 1
        detail = "; ".join(f"node {node[:12]}: {why}" for node, why in sorted(problems.items()))
        raise SweepError(
            f"this Ray has {nodes} nodes and a trial writes its run directory on the node it "
            f"runs on, but {sweep_dir} is not shared with {len(problems)} of them ({detail}); "
            "pass --output-dir on storage every node mounts (NFS or a shared volume)"
        )


def _param_space(sweep: Sweep) -> dict[str, Any]:
    space: dict[str, Any] = {}
    if sweep.spec.variants:
        space["variant"] = tune.grid_search(list(sweep.spec.variants))
    for axis in sweep.axes:
        if axis.form in ("grid", "log_grid", "simplex", "dirichlet"):
            space[axis.key] = tune.grid_search(axis.values)
        elif axis.form == "choice":
            space[axis.key] = tune.choice(axis.values)
        elif axis.form == "uniform":
            space[axis.key] = tune.uniform(axis.low, axis.high)
        else:
            space[axis.key] = tune.loguniform(axis.low, axis.high)
    return space


class _Progress(tune.Callback):
    """One console line per trial round and per finished trial (Tune's own table is off)."""

    def __init__(self, console: Console, sweep: Sweep) -> None:
        self.console = console
        self.sweep = sweep
        self.started = time.perf_counter()

    def __getstate__(self) -> dict[str, Any]:  # Tune pickles its callbacks; a Console holds locks
        return {k: v for k, v in self.__dict__.items() if k != "console"}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state, console=Console())

    def _label(self, trial: Any) -> str:
        params = trial.config
        parts = [str(params["variant"])] if "variant" in params else []
        for axis in self.sweep.axes:
            value = params.get(axis.key)
            short = axis.key.rsplit(".", 1)[-1]
            text = (
                "[" + ",".join(f"{v:g}" for v in value) + "]"
                if isinstance(value, list)
                else (f"{value:g}" if isinstance(value, float) else str(value))
            )
            parts.append(f"{short}={text}")
        return f"{trial.trial_id} " + " ".join(parts)

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info):
        rewards = ", ".join(
            f"{k.split('/', 1)[1]} {v:.3f}" for k, v in result.items() if k.startswith("reward/")
        )
        dis = result.get("disagreement")
        dis_text = "" if dis is None else f" | disagreement {dis:.3f}"
        self.console.print(
            f"[dim]{time.perf_counter() - self.started:6.0f}s[/] {self._label(trial)} "
            f"round {result.get('done_rounds')}/{result.get('total_rounds')}: {rewards}{dis_text}",
            soft_wrap=True,
        )

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info):
        self.console.print(f"[green]done[/] {self._label(trial)}", soft_wrap=True)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info):
        self.console.print(f"[red]failed[/] {self._label(trial)} (see {trial.local_path})")


def _tuner(sweep: Sweep, sweep_dir: Path, console: Console, restore: bool) -> tune.Tuner:
    resources = trial_resources(sweep.base_config)
    trainable = tune.with_resources(
        tune.with_parameters(FirmTrial, sweep_dir=str(sweep_dir)), resources
    )
    if restore:
        return tune.Tuner.restore(
            str(sweep_dir / TUNE_DIR),
            trainable=trainable,
            resume_unfinished=True,
            resume_errored=True,
        )
    spec = sweep.spec
    scheduler = None
    if spec.scheduler == "asha":
        scheduler = tune.schedulers.ASHAScheduler(
            time_attr="training_iteration",
            max_t=sweep.base_config.federation.rounds,
            grace_period=spec.asha.grace_period,
            reduction_factor=spec.asha.reduction_factor,
        )
    from ray.tune.search.basic_variant import BasicVariantGenerator

    return tune.Tuner(
        trainable,
        param_space=_param_space(sweep),
        tune_config=tune.TuneConfig(
            metric=spec.metric,
            mode="max",
            scheduler=scheduler,
            num_samples=spec.num_samples,
            reuse_actors=True,  # a finished trial's process serves the next (reset_config)
            time_budget_s=spec.time_budget_s,
            # the grid generator limits concurrency itself (TuneConfig's limit ignores it)
            search_alg=BasicVariantGenerator(
                random_state=spec.seed, max_concurrent=spec.max_concurrent_trials or 0
            ),
        ),
        run_config=tune.RunConfig(
            name=TUNE_DIR,
            checkpoint_config=tune.CheckpointConfig(checkpoint_frequency=1),
            failure_config=tune.FailureConfig(max_failures=spec.max_failures),
            storage_path=str(sweep_dir.resolve()),
            verbose=0,
            callbacks=[_Progress(console, sweep)],
        ),
    )


def _write_spec(sweep: Sweep, sweep_dir: Path, source: Path) -> None:
    """Freeze the sweep into its directory: --resume must not depend on the original files."""
    save_config(sweep.base_config, sweep_dir / BASE_FILE)
    frozen = sweep.spec.model_dump(mode="json") | {"base": BASE_FILE, "set": []}
    header = (
        f"# Frozen copy of {source} (its base, with sweep.set applied, is {BASE_FILE}).\n"
        f"# Continue this sweep: firm-ray sweep --resume {sweep_dir}\n"
    )
    text = yaml.safe_dump({"sweep": frozen}, sort_keys=False, default_flow_style=None)
    (sweep_dir / SPEC_FILE).write_text(header + text, encoding="utf-8")


def _trial_run_dir(sweep_dir: Path, trial: Any) -> Path:
    """Where a trial wrote its run: the path its last Tune checkpoint names, else trials/<id>."""
    checkpoint = getattr(trial, "checkpoint", None)
    if checkpoint is not None:
        try:
            with checkpoint.as_directory() as path:
                return _read_run_pointer(path)
        except (OSError, ValueError, KeyError):
            pass
    return sweep_dir / TRIALS_DIR / trial.trial_id


def _close_unfinished(run_dir: Path, status: str) -> None:
    """Write summary.json for a run Tune stopped (ASHA) or killed, from its files."""
    if (run_dir / SUMMARY_FILE).exists() or not (run_dir / "config.yaml").exists():
        return
    from firm_ray.config import load_config

    config = load_config(run_dir / "config.yaml")
    checkpoint = latest_checkpoint(run_dir)
    info = json.loads((checkpoint / "state.json").read_text()) if checkpoint else {}
    summary = build_summary(
        run_dir,
        read_metrics(run_dir),
        algorithm=config.algorithm.name,
        seed=config.experiment.seed,
        initial_rewards=info.get("initial_rewards"),
        wall_time_s=float(info.get("elapsed_s", 0.0)),
        status=status,
        reward_names=[r.name for r in config.rewards],
    )
    write_json_atomic(run_dir / SUMMARY_FILE, summary)


def _record_trials(sweep_dir: Path) -> list[dict[str, Any]]:
    """Each trial's Tune status, in tune_trials.json; runs Tune ended early get a summary."""
    analysis = tune.ExperimentAnalysis(str(sweep_dir / TUNE_DIR))
    rows = []
    for trial in sorted(analysis.trials, key=lambda t: t.trial_id):
        run_dir = _trial_run_dir(sweep_dir, trial)
        rounds = (trial.last_result or {}).get("done_rounds", 0)
        if (run_dir / SUMMARY_FILE).exists():
            status = json.loads((run_dir / SUMMARY_FILE).read_text()).get("status", "unknown")
        elif trial.status == "ERROR":
            status = "failed"
        elif trial.status == "TERMINATED":
            status = "stopped"  # ended by the scheduler (ASHA) before its last round
        else:
            status = trial.status.lower()  # PENDING / RUNNING: the sweep was interrupted
        if status in ("failed", "stopped"):
            _close_unfinished(run_dir, status)
        rows.append(
            {
                "trial_id": trial.trial_id,
                "tune_status": trial.status,
                "status": status,
                "rounds_done": rounds,
                "params": trial.config,
                "run_dir": str(run_dir),
                "error_file": getattr(trial, "error_file", None),
            }
        )
    write_json_atomic(sweep_dir / STATUS_FILE, rows)
    return rows


def _execute(
    sweep_dir: Path, console: Console, restore: bool, check_resources: bool
) -> dict[str, Any]:
    from firm_ray.tracking.sweep_report import (
        TRIALS_JSON,
        build_sweep_report,
        print_sweep_report,
    )

    sweep = load_sweep(sweep_dir / SPEC_FILE)
    base = sweep.base_config
    # Tune warns when trials checkpoint every few seconds; ours are a few bytes each round
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    started = init_ray(base)
    try:
        resources = trial_resources(base)
        if check_resources:
            _check_resources(resources)
        _check_shared_storage(sweep_dir)
        per_trial = ray.cluster_resources().get("CPU", 0.0) // max(
            1e-9, base.runtime.num_workers * base.runtime.num_cpus_per_worker
        )
        console.print(
            f"[bold]firm-ray sweep[/] {sweep.spec.name}: {sweep.num_trials()} trial(s) of "
            f"{base.federation.rounds} rounds, each on {base.runtime.num_workers} worker(s) of "
            f"{worker_bundle(base)}; up to {int(per_trial)} at once on this cluster -> {sweep_dir}"
        )
        start = time.perf_counter()
        _tuner(sweep, sweep_dir, console, restore).fit()
        wall = time.perf_counter() - start
        trials = _record_trials(sweep_dir)
    finally:
        if started:
            ray.shutdown()
    report = build_sweep_report(sweep_dir)
    print_sweep_report(sweep_dir, console, build=False)
    settings = base.tracking.wandb
    if settings.enabled and settings.mode != "disabled":
        from firm_ray.tracking.wandb_tracker import log_sweep_summary

        log_sweep_summary(
            settings.model_dump(mode="json"),
            sweep_dir,
            name=f"{sweep.spec.name}-summary",
            group=settings.group or sweep.spec.name,
            trials=json.loads((sweep_dir / TRIALS_JSON).read_text()),  # the report's rows
            reward_names=[r.name for r in base.rewards],
            images=[sweep_dir / "pareto.png", sweep_dir / "drift.png"],
        )
    failed = [t["trial_id"] for t in trials if t["status"] == "failed"]
    console.print(f"sweep wall time {wall:.1f} s; results: {sweep_dir}")
    return {
        "sweep_dir": str(sweep_dir),
        "trials": trials,
        "report": report,
        "wall_s": wall,
        "failed": failed,
    }


def run_sweep(
    path: str | Path,
    console: Console | None = None,
    check_resources: bool = True,
    output_dir: str | Path | None = None,
) -> dict[str, Any]:
    """Run a sweep file end to end; returns the sweep directory, trial statuses and report.

    ``output_dir`` replaces ``sweep.output_dir`` (e.g. shared storage on a cluster).
    """
    console = console or Console()
    sweep = load_sweep(path)
    root = Path(output_dir) if output_dir is not None else Path(sweep.spec.output_dir)
    sweep_dir = fresh_dir(root / sweep.spec.name).resolve()
    _write_spec(sweep, sweep_dir, Path(path))
    return _execute(sweep_dir, console, restore=False, check_resources=check_resources)


def resume_sweep(
    sweep_dir: str | Path, console: Console | None = None, check_resources: bool = True
) -> dict[str, Any]:
    """Continue an interrupted sweep: finished trials are kept, unfinished ones resume from
    their last round checkpoint, errored ones are retried from theirs."""
    sweep_dir = check_resume_dir(sweep_dir)
    return _execute(sweep_dir, console or Console(), restore=True, check_resources=check_resources)


def check_resume_dir(sweep_dir: str | Path) -> Path:
    """The resolved sweep directory, if it is one and only the current user could have written
    it: resuming unpickles Tune's state from it (code execution), so call this before reading
    anything there."""
    sweep_dir = Path(sweep_dir).resolve()
    if not (sweep_dir / SPEC_FILE).exists() or not (sweep_dir / TUNE_DIR).exists():
        raise SweepError(f"--resume {sweep_dir}: not a sweep directory (no {SPEC_FILE} or tune/)")
    reason = untrusted_reason(sweep_dir)
    if reason is not None:
        raise SweepError(
            f"--resume refuses {sweep_dir}: {reason}. Resuming loads Ray Tune's pickled state "
            "(tune/tuner.pkl), which can run any code; resume only a sweep directory that you "
            f"own and nobody else can write (e.g. chmod -R go-w {sweep_dir})"
        )
    return sweep_dir
