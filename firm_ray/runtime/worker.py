"""ClientWorker: the body of a Ray actor that trains any client.

A worker loads the base model, tokenizer, rewards and the prompt partition ONCE, then serves
tasks (client id, round, global adapter) for whichever client the round loop hands it: clients
are data plus seeds, not actors, so 1,000 simulated clients run on 2 workers. Nothing a task
computes depends on the worker that runs it (seeds derive from experiment seed, client, round),
so results are the same for any number of workers and any scheduling order.

Prompts never leave the worker: only adapters (safetensors bytes) and small metric dicts do.

With ``FIRM_RAY_TASK_TRACE=/path/file`` in the workers' environment, every task appends one
JSON line when it starts: {"pid", "worker", "task", "client", "round", "time"} (no data). Fault
tests and bench/faults.py use it to kill (SIGKILL) or freeze (SIGSTOP) the process that runs a
given client or the evaluation, mid-task.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from firm_ray.config import FirmConfig, config_from_dict
from firm_ray.data.partition import client_prompts, partition_prompts
from firm_ray.data.prompts import Prompt
from firm_ray.data.sources import load_prompts
from firm_ray.models.adapter import (
    Payload,
    adapter_from_bytes,
    adapter_to_buffer,
    get_adapter_state,
    save_adapter,
    set_adapter_state,
)
from firm_ray.models.policy import load_policy
from firm_ray.rewards import build_rewards
from firm_ray.runtime.secagg_client import SecureClients
from firm_ray.runtime.wire import WireUpdate, encode_update
from firm_ray.trainer import LocalTrainer
from firm_ray.trainer.client_upload import ClientUploads
from firm_ray.trainer.evaluate import evaluate_policy


def client_datasets(config: FirmConfig) -> tuple[list[list[Prompt]], list[Prompt], dict]:
    """(prompts of every client, eval prompts, partition statistics) for a config.

    Deterministic from the config and seed, so every worker derives the same partition.
    ``centralized`` is one client holding every training prompt.
    """
    splits = load_prompts(config.data, config.experiment.seed)
    partition = partition_prompts(
        splits.train,
        config.federation.num_clients,
        config.data.partition,
        config.experiment.seed,
        category_field_name=config.data.category_field,
    )
    clients = [
        client_prompts(splits.train, partition, i) for i in range(config.federation.num_clients)
    ]
    return clients, splits.eval, partition.stats.to_dict()


def _quiet_libraries() -> None:
    """No per-worker download bars or deprecation chatter in the driver's log stream."""
    import warnings

    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    warnings.filterwarnings("ignore", category=FutureWarning, module="transformers")


TRACE_ENV = "FIRM_RAY_TASK_TRACE"


def trace_task(
    worker: int, task: str, client: int | None = None, round_index: int | None = None
) -> None:
    """Append the start of a task to $FIRM_RAY_TASK_TRACE (nothing when it is unset)."""
    path = os.environ.get(TRACE_ENV)
    if not path:
        return
    line = json.dumps(
        {
            "pid": os.getpid(),
            "worker": worker,
            "task": task,
            "client": client,
            "round": round_index,
            "time": time.time(),
        }
    )
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:  # one write of a short line with O_APPEND: lines of concurrent workers never mix
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)


class ClientWorker:
    """One model replica serving client training and evaluation tasks."""

    def __init__(self, config: dict[str, Any], worker_index: int = 0) -> None:
        # An error here (data, model, reward set-up) is kept and raised by ready(): Ray then
        # hands the driver the exception itself (RayTaskError.cause, one line for the CLI)
        # instead of an ActorDiedError holding a formatted traceback, and prints nothing more.
        self.worker_index = worker_index
        self._init_error: Exception | None = None
        try:
            self._set_up(config)
        except Exception as err:
            self._init_error = err

    def _set_up(self, config: dict[str, Any]) -> None:
        self.config = config_from_dict(config)
        _quiet_libraries()
        threads = max(1, int(self.config.runtime.num_cpus_per_worker))
        torch.set_num_threads(threads)  # oversubscribed CPU threads slow torch down 10x
        cfg = self.config
        self.policy = load_policy(cfg.model, cfg.lora, seed=cfg.experiment.seed)
        # theta^0 kept as built: later tasks load other adapters into the model, and a recreated
        # aggregator (no checkpoint yet) must restart from the seeded initialization itself
        self._theta0 = adapter_to_buffer(get_adapter_state(self.policy.model))
        self.rewards = build_rewards(cfg.rewards, device=str(self.policy.device))
        self._initial_reward_states = [r.state_dict() for r in self.rewards]
        self.clients, self.eval_prompts, self.partition_stats = client_datasets(cfg)
        self.trainer = LocalTrainer(
            self.policy,
            self.rewards,
            cfg.trainer,
            cfg.algorithm,
            cfg.federation.local_steps,
            max_prompt_tokens=cfg.model.max_prompt_tokens,
            seed=cfg.experiment.seed,
        )
        self.uploads = ClientUploads(cfg)  # attacks (experiments) and DP, client side
        self.secure = SecureClients()  # secure aggregation's client state (this process only)

    def ready(self) -> dict[str, Any]:
        """Set-up facts the driver prints and saves (partition statistics, adapter size); raises
        the error that stopped the set-up, if one did."""
        trace_task(self.worker_index, "ready")
        if self._init_error is not None:
            raise self._init_error
        state = get_adapter_state(self.policy.model)
        return {
            "worker": self.worker_index,
            "adapter_parameters": sum(v.numel() for v in state.values()),
            "partition": self.partition_stats,
            "eval_prompts": len(self.eval_prompts),
        }

    def initial_adapter(self) -> Payload:
        """theta^0: the seeded LoRA initialization, serialized."""
        trace_task(self.worker_index, "initial_adapter")
        return self._theta0

    def train(
        self,
        client_id: int,
        round_index: int,
        global_payload: Payload,
        client_state: dict[str, Any] | None = None,
        instructions: dict[str, Any] | None = None,
    ) -> WireUpdate:
        """Train ``client_id`` for one round from the global adapter; the update, serialized.

        ``client_state`` (kept by the aggregator) restores per-client reward normalization
        statistics, so the result does not depend on which worker served the client before.
        ``instructions``: the round's server instructions beside theta^t (DP: the clip norm
        and the local noise std; trainer/client_upload.py applies them).
        """
        trace_task(self.worker_index, "train", client_id, round_index)
        start = time.perf_counter()
        state = client_state or {}
        for reward, initial in zip(self.rewards, self._initial_reward_states, strict=True):
            reward.load_state_dict(state.get(reward.name, initial))
        # views of the object store's read-only buffer: the trainer only reads them
        # (set_adapter_state copies into the model, deltas are new tensors)
        theta = adapter_from_bytes(global_payload, copy=False)
        update = self.trainer.run_round(
            theta,
            self.clients[client_id],
            client_id=client_id,
            round_index=round_index,
            preference=self.uploads.preference_of(client_id),
        )
        update.client_state = {r.name: r.state_dict() for r in self.rewards if r.state_dict()}
        update = self.uploads.prepare(update, theta, instructions or {})
        update.metrics["task_seconds"] = time.perf_counter() - start
        update.metrics["worker"] = float(self.worker_index)
        secagg = (instructions or {}).get("secagg")
        if secagg:  # the update stays here; only the header and two public keys leave
            return self.secure.start(update, theta, secagg)  # type: ignore[return-value]
        return encode_update(update)

    # Secure aggregation (runtime/secagg_driver.py runs the rounds; secagg_client.py the state)
    def secagg_share(self, round_index: int, client_id: int, roster: dict) -> dict[int, bytes]:
        trace_task(self.worker_index, "secagg_share", client_id, round_index)
        return self.secure.share(round_index, client_id, roster)

    def secagg_mask(
        self, round_index: int, client_id: int, ciphertexts: dict[int, bytes]
    ) -> tuple[Any, dict[str, float]]:
        trace_task(self.worker_index, "secagg_mask", client_id, round_index)
        return self.secure.mask(round_index, client_id, ciphertexts)

    def secagg_unmask(
        self, round_index: int, client_id: int, survivors: list[int], dropped: list[int]
    ) -> dict[int, bytes]:
        trace_task(self.worker_index, "secagg_unmask", client_id, round_index)
        return self.secure.unmask(round_index, client_id, survivors, dropped)

    def evaluate(self, global_payload: Payload) -> dict[str, Any]:
        """Rewards, KL and (with trainer.eval_pareto_stationarity) Pareto stationarity of the
        global policy on the held-out prompts (trainer/evaluate.py); ``seconds`` includes
        ``stationarity_seconds``."""
        trace_task(self.worker_index, "evaluate")
        cfg = self.config
        set_adapter_state(self.policy.model, adapter_from_bytes(global_payload, copy=False))
        start = time.perf_counter()
        result = evaluate_policy(
            self.policy,
            self.rewards,
            self.eval_prompts,
            samples_per_prompt=cfg.trainer.eval_samples_per_prompt,
            max_new_tokens=cfg.trainer.max_new_tokens,
            temperature=cfg.trainer.temperature,
            top_p=cfg.trainer.top_p,
            seed=cfg.experiment.seed,
            batch_prompts=cfg.trainer.eval_batch_prompts,
            top_k=cfg.trainer.top_k,
            repetition_penalty=cfg.trainer.repetition_penalty,
            max_prompt_tokens=cfg.model.max_prompt_tokens,
            chunk_tokens=cfg.trainer.logprob_chunk_tokens,
            trainer=cfg.trainer if cfg.trainer.eval_pareto_stationarity else None,
        )
        result["seconds"] = time.perf_counter() - start
        return result

    def adapter_files(self, global_payload: Payload) -> dict[str, bytes]:
        """The PEFT directory of an adapter as {file name: bytes}, so the driver writes it on
        its own node (``PeftModel.from_pretrained`` loads the directory)."""
        trace_task(self.worker_index, "adapter_files")
        set_adapter_state(self.policy.model, adapter_from_bytes(global_payload, copy=False))
        with tempfile.TemporaryDirectory() as tmp:
            save_adapter(self.policy.model, Path(tmp))
            return {p.name: p.read_bytes() for p in Path(tmp).iterdir() if p.is_file()}
