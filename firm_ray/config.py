"""One typed, validated configuration tree for a firm_ray experiment.

Why: an experiment touches the model, LoRA, data partitioning, rewards, the FIRM solver, the
trainer, the federation schedule, Ray and tracking. Scattering those settings over argparse flags
and dicts means a typo or a bad value surfaces minutes into a run, on a remote worker. Here every
setting lives in one pydantic tree that rejects unknown keys, wrong types and out-of-range or
mutually inconsistent values *at load time*, with one line per problem naming the dotted path, the
bad value and what is allowed::

    algorithm.beta = -1.0: must be >= 0
    rewards[1].type = 'foo': must be one of relevance, harmlessness, sentiment, ...

Usage::

    from firm_ray.config import ConfigError, dump_config, load_config

    cfg = load_config("tune_configs/quickstart.yaml", ["algorithm.preference=[0.3,0.7]"])
    cfg.algorithm.preference_vector(cfg.num_objectives)  # [0.3, 0.7]
    print(dump_config(cfg))  # resolved YAML; load_config() of it gives back an equal tree

Override values are parsed as YAML (``x=[1,2]`` is a list, ``x=foo`` a string, ``x=`` null).
The YAML loader also reads ``5e-4`` as a float (plain YAML 1.1 would read a string). This module is
the bottom layer of the package: it imports nothing from the rest of firm_ray, nor ray or torch.
"""

import copy
import difflib
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, Literal, NamedTuple, Union, get_args, get_origin

import yaml
from pydantic import (
    AfterValidator,
    AllowInfNan,
    BaseModel,
    ConfigDict,
    Field,
    Strict,
    StrictBool,
    StrictInt,
    StrictStr,
    ValidationError,
    model_validator,
)
from pydantic_core import PydanticCustomError, to_jsonable_python

__all__ = [
    "ALGORITHMS",
    "PROMPT_FORMATS",
    "REWARD_TYPES",
    "AlgorithmConfig",
    "ConfigError",
    "DataConfig",
    "ExperimentConfig",
    "FederationConfig",
    "FirmConfig",
    "LoraConfig",
    "ModelConfig",
    "PartitionConfig",
    "RewardSpec",
    "RuntimeConfig",
    "TrackingConfig",
    "TrainerConfig",
    "WandbConfig",
    "config_from_dict",
    "dump_config",
    "load_config",
    "save_config",
]


class ConfigError(ValueError):
    """An invalid config; ``str(err)`` has one line per problem, ``err.problems`` the lines."""

    def __init__(self, problems: str | Sequence[str]) -> None:
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("\n".join(self.problems))


# --------------------------------------------------------------------------- field types

_SAFE_NAME = re.compile(r"[A-Za-z0-9._-]+")


def _safe_name(value: str) -> str:
    if not _SAFE_NAME.fullmatch(value) or value in {".", ".."}:
        raise ValueError("must be a safe directory name: letters, digits, '.', '_', '-'")
    return value


def _interval(text: str) -> AfterValidator:
    """Range check such as ``"[0, 1)"``; the interval itself is the error message."""
    lo, hi = (float(x) for x in text[1:-1].split(","))
    lo_ok = (lambda v: v >= lo) if text[0] == "[" else (lambda v: v > lo)
    hi_ok = (lambda v: v <= hi) if text[-1] == "]" else (lambda v: v < hi)

    def check(value: float) -> float:
        if not (lo_ok(value) and hi_ok(value)):
            raise ValueError(f"must be in {text}")
        return value

    return AfterValidator(check)


# Floats accept ints (1 -> 1.0) but not strings or bools, and must be finite.
Float = Annotated[float, Strict(), AllowInfNan(False)]
PosFloat = Annotated[Float, Field(gt=0)]
NonNegFloat = Annotated[Float, Field(ge=0)]
PosInt = Annotated[StrictInt, Field(ge=1)]
NonNegInt = Annotated[StrictInt, Field(ge=0)]
SafeName = Annotated[StrictStr, AfterValidator(_safe_name)]

AlgorithmName = Literal["firm", "fedavg_ls", "fmgda", "centralized"]
RewardType = Literal[
    "relevance", "harmlessness", "sentiment", "length", "conciseness", "hf_reward_model", "python"
]
ALGORITHMS: tuple[str, ...] = get_args(AlgorithmName)
REWARD_TYPES: tuple[str, ...] = get_args(RewardType)
MULTI_OBJECTIVE_ALGORITHMS = ("firm", "fmgda")


class _Problem(NamedTuple):
    """One cross-field problem, ``path`` relative to the model whose validator found it."""

    path: tuple[str | int, ...]
    reason: str
    value: Any = ...  # Ellipsis: no value to show


def _raise(problems: list[_Problem]) -> None:
    """Raise the problems found by a model validator (see `_format_errors`), if any."""
    if problems:
        summary = "; ".join(p.reason for p in problems)
        raise PydanticCustomError(
            "firm_config", "{summary}", {"summary": summary, "problems": problems}
        )


class _Section(BaseModel):
    """Base of every config model: unknown keys are rejected; bad assignments raise ConfigError.

    (No ``__init__`` override: pydantic would route nested validation through it. Build trees with
    `config_from_dict` / `load_config` to get ConfigError; direct construction raises pydantic's
    ValidationError, which is also a ValueError.)
    """

    model_config = ConfigDict(
        extra="forbid", validate_assignment=True, use_attribute_docstrings=True
    )

    def __setattr__(self, name: str, value: Any) -> None:
        missing = object()
        old = self.__dict__.get(name, missing)
        try:
            super().__setattr__(name, value)
        except ValidationError as exc:
            # pydantic has already stored the value when a model validator rejects it: undo that.
            if old is not missing:
                self.__dict__[name] = old
            raise ConfigError(_format_errors(exc, type(self))) from None


# --------------------------------------------------------------------------- sections


class ExperimentConfig(_Section):
    name: SafeName = "quickstart"
    """Run name; also the run's directory under output_dir, so only [A-Za-z0-9._-]."""
    seed: NonNegInt = 0
    """Global random seed (data partition, sampling, client selection, init)."""
    output_dir: StrictStr = "runs"
    """Directory that holds one subdirectory per run."""
    keep_checkpoints: PosInt | None = None
    """Round checkpoints kept in checkpoints/ (the newest ones; null = every round). A long
    run with a large adapter keeps its disk use bounded; --resume needs only the newest."""
    description: StrictStr = ""
    """Free text recorded with the run."""


class ModelConfig(_Section):
    name_or_path: StrictStr = "builtin:tiny-world"
    """'builtin:tiny-world' = the project's own warm-start model; else a HF hub id or local path."""
    tokenizer: StrictStr | None = None
    """Tokenizer id or path; None = same as name_or_path."""
    revision: StrictStr | None = None
    """Hub revision (branch, tag or commit) to pin; None = default branch."""
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "float32"
    """Weight dtype; 'auto' = the checkpoint's own dtype."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """Where each worker runs its model; 'auto' = cuda when a GPU is assigned, else cpu."""
    trust_remote_code: StrictBool = False
    """Allow custom modelling code from the hub (runs that code locally)."""
    max_prompt_tokens: PosInt = 64
    """Longer prompts are truncated to this many tokens."""


class LoraConfig(_Section):
    r: PosInt = 8
    """LoRA rank."""
    alpha: PosFloat = 16.0
    """LoRA scaling numerator (the update is scaled by alpha / r)."""
    dropout: Annotated[Float, _interval("[0, 1)")] = 0.0
    """Dropout on the LoRA input."""
    target_modules: list[StrictStr] | None = None
    """Module names to adapt; None = a per-architecture default."""
    bias: Literal["none", "all", "lora_only"] = "none"
    """Which biases are trained alongside the adapter."""


class PartitionConfig(_Section):
    scheme: Literal["iid", "dirichlet", "natural", "shards"] = "dirichlet"
    """How prompts are split over clients: iid, Dirichlet(alpha) over categories, one category
    group per client ('natural'), or sorted shards."""
    alpha: PosFloat = 0.3
    """Dirichlet concentration; smaller = more heterogeneous clients."""
    field: StrictStr | None = None
    """Record field that defines categories; None = data.category_field."""
    shards_per_client: PosInt = 2
    """Shards per client for scheme 'shards'."""
    allow_empty: StrictBool = False
    """Allow a client to receive no prompts (otherwise partitioning fails)."""


PromptFormat = Literal["plain", "hh_first_human_turn"]
PROMPT_FORMATS: tuple[str, ...] = get_args(PromptFormat)


class DataConfig(_Section):
    source: Literal["builtin", "jsonl", "csv", "parquet", "hf"] = "builtin"
    """Prompt source; 'builtin' = the project's own prompt set (no path needed)."""
    path: StrictStr | None = None
    """File path (jsonl, csv, parquet); for 'hf' a hub id, a dataset directory, a save_to_disk
    directory or a single .json/.jsonl/.csv/.parquet/.txt/.arrow data file. Required unless
    source is 'builtin'."""
    split: StrictStr = "train"
    """Split to train on (HF sources with named splits)."""
    eval_split: StrictStr | None = None
    """Evaluation prompts: a split name for HF sources with named splits, else the path of a
    second file of the same kind; None = hold out eval_fraction of the training prompts."""
    eval_fraction: Annotated[Float, _interval("(0, 1)")] = 0.1
    """Fraction of prompts held out for evaluation when eval_split is None (stratified by
    category)."""
    prompt_field: StrictStr = "prompt"
    """Record field holding the prompt text (for HH-style data: 'chosen')."""
    category_field: StrictStr | None = "category"
    """Record field holding a category label (used by non-iid partitions); None = none."""
    prompt_format: PromptFormat = "plain"
    """How the prompt field becomes a prompt: 'plain' = the text as is; 'hh_first_human_turn' =
    the first 'Human:' turn of an Anthropic HH transcript (e.g. its 'chosen' field)."""
    max_prompts: PosInt | None = None
    """Cap on the number of training prompts (seeded, stratified by category); None = all."""
    max_eval_prompts: PosInt | None = None
    """Cap on the number of evaluation prompts (seeded, stratified by category); None = all."""
    partition: PartitionConfig = PartitionConfig()
    """How the prompts are split over the federation's clients."""

    @model_validator(mode="after")
    def _check(self) -> "DataConfig":
        problems = []
        if self.source != "builtin" and self.path is None:
            problems.append(
                _Problem(("path",), f"required when data.source is {self.source!r}", None)
            )
        if self.source == "builtin" and self.eval_split is not None:
            problems.append(
                _Problem(
                    ("eval_split",),
                    "must be null when data.source is 'builtin' (the built-in world has its "
                    "own eval prompts)",
                    self.eval_split,
                )
            )
        if self.partition.scheme == "natural" and not (self.partition.field or self.category_field):
            problems.append(
                _Problem(
                    ("partition", "field"),
                    "scheme 'natural' needs a category field (this or data.category_field)",
                    None,
                )
            )
        _raise(problems)
        return self


class RewardSpec(_Section):
    name: SafeName
    """Objective name, unique across rewards; used in metric keys."""
    type: RewardType
    """Reward implementation."""
    normalize: StrictBool = False
    """Normalize this reward's scale before it enters the objective."""
    kwargs: dict[StrictStr, Any] = {}
    """Extra arguments for the reward implementation (e.g. model id for hf_reward_model)."""


def _default_rewards() -> list[RewardSpec]:
    return [
        RewardSpec(name="relevance", type="relevance"),
        RewardSpec(name="harmlessness", type="harmlessness"),
    ]


class AlgorithmConfig(_Section):
    name: AlgorithmName = "firm"
    """firm (in-client regularized min-norm), fedavg_ls (fixed linear scalarization), fmgda
    (one local trajectory per objective, server-side min-norm over the M averaged deltas) or
    centralized (one client holding all data, no federation)."""
    beta: NonNegFloat = 1.0
    """FIRM regularization strength of the min-norm problem (0 = plain MGDA weights)."""
    beta_scale: Literal["relative", "absolute"] = "relative"
    """'relative': effective beta = beta * mean squared per-objective gradient norm, so beta is
    scale-free; 'absolute': beta is used as is."""
    preference: list[Float] | None = None
    """Preference over rewards (one entry each, >= 0, sum 1); None = uniform."""
    mu: NonNegFloat = 0.0
    """FedProx proximal strength pulling local weights to the round's global adapter (0 = off)."""
    grad_norm: Literal["none", "l2"] = "none"
    """Per-objective gradient normalization before the min-norm solve: 'l2' scales each g_m to
    unit norm. (LibMTL's 'loss' modes divide by |L_m|, which for a policy-gradient surrogate with
    zero-mean advantages is ~1e-8: noise, so they are not offered.)"""
    server_lr: PosFloat = 1.0
    """Server step size on the averaged adapter update (1.0 = plain averaging)."""

    def preference_vector(self, num_objectives: int) -> list[float]:
        """The explicit preference: a copy of `preference`, or uniform when it is None."""
        if self.preference is None:
            return [1.0 / num_objectives] * num_objectives
        if len(self.preference) != num_objectives:
            raise ConfigError(
                f"algorithm.preference = {_show(self.preference)}: has {len(self.preference)} "
                f"entries, expected {num_objectives}"
            )
        return list(self.preference)


class TrainerConfig(_Section):
    backend: Literal["torch", "deepspeed"] = "torch"
    """Local optimization backend."""
    deepspeed_config: StrictStr | None = None
    """Path to a DeepSpeed JSON/YAML config; required when backend is 'deepspeed'."""
    learning_rate: PosFloat = 5e-4
    """Client optimizer learning rate for the LoRA parameters."""
    weight_decay: NonNegFloat = 0.0
    """AdamW weight decay."""
    batch_prompts: PosInt = 8
    """Prompts per local step."""
    generations_per_prompt: PosInt = 4
    """Sampled completions per prompt (>= 2 for group-relative advantages)."""
    max_new_tokens: PosInt = 16
    """Generation length cap."""
    temperature: PosFloat = 1.0
    """Sampling temperature."""
    top_p: Annotated[Float, _interval("(0, 1]")] = 1.0
    """Nucleus sampling mass (1.0 = off)."""
    top_k: NonNegInt = 0
    """Sample only among the k most likely tokens (0 = off)."""
    repetition_penalty: PosFloat = 1.0
    """CTRL repetition penalty (1.0 = off). Sampling uses only these settings: whatever the
    model's own generation_config sets (Qwen2.5-Instruct ships 1.05) is overridden and logged once.
    With top_p < 1, top_k > 0 or a penalty the sampling distribution is not the policy; the
    truncated importance weight (importance_cap) corrects for it."""
    importance_cap: PosFloat = 2.0
    """Truncated importance sampling: each token's gradient is weighted by
    min(pi_theta(y) / pi_sample(y), importance_cap), where pi_sample is the distribution the token
    was actually drawn from (recorded during generation). 1.0 at exact on-policy sampling."""
    mask_truncated: StrictBool = False
    """Leave completions that hit max_new_tokens without an EOS out of the loss (they still
    count in the truncated-completion metric)."""
    micro_batch_size: PosInt = 32
    """Sequences per training forward/backward; per-objective gradients are accumulated exactly
    over micro-batches, so peak memory follows this setting, not batch_prompts x generations."""
    logprob_chunk_tokens: PosInt = 512
    """Completion tokens per chunk of the LM-head log-softmax: never more than this many rows of
    full-vocabulary logits exist at once (recomputed in the backward)."""
    gradient_checkpointing: StrictBool = False
    """Recompute the decoder layers' activations in the backward (Hugging Face non-reentrant
    checkpointing): less memory, about one more forward of compute."""
    mixed_precision: Literal["none", "bf16"] = "none"
    """'bf16': forward and backward under bf16 autocast; per-objective gradients, the Gram
    matrix and lambda stay float32/float64."""
    max_skip_fraction: Annotated[Float, _interval("[0, 1]")] = 0.5
    """The run fails, naming the first reason, once more than this fraction of all local steps so
    far were skipped (a reward that raises, non-finite losses); 1.0 = never fail."""
    eval_batch_prompts: PosInt = 16
    """Evaluation prompts generated and scored at once (x eval_samples_per_prompt sequences)."""
    eval_samples_per_prompt: PosInt = 2
    """Completions sampled per held-out prompt at evaluation."""
    kl_coef: NonNegFloat = 0.05
    """KL penalty to the reference (adapter-free) model."""
    kl_mode: Literal["reward", "loss"] = "reward"
    """'reward': the sequence log-ratio to the reference is a penalty in every objective's
    return (the score-function gradient of the sequence KL; per-objective gradients then cost one
    backward); 'loss': GRPO's per-token k3 KL term in the loss (one extra backward)."""
    clip_eps: Annotated[Float, _interval("(0, 1)")] = 0.2
    """PPO ratio clipping epsilon."""
    ppo_epochs: PosInt = 1
    """Optimization passes over each batch of generations."""
    advantage: Literal["group", "batch"] = "group"
    """Baseline: per-prompt group mean (GRPO-style) or batch mean."""
    max_grad_norm: PosFloat | None = 1.0
    """Clip the combined gradient to this L2 norm; None = no clipping."""

    @model_validator(mode="after")
    def _check(self) -> "TrainerConfig":
        problems = []
        if self.backend == "deepspeed" and self.deepspeed_config is None:
            problems.append(
                _Problem(
                    ("deepspeed_config",),
                    "required when trainer.backend is 'deepspeed' (path to a DeepSpeed config)",
                    None,
                )
            )
        sequences = self.batch_prompts * self.generations_per_prompt
        if self.backend == "deepspeed" and self.micro_batch_size < sequences:
            problems.append(
                _Problem(
                    ("micro_batch_size",),
                    f"must be >= batch_prompts x generations_per_prompt ({sequences}) with "
                    "trainer.backend 'deepspeed' (its engine backpropagates one combined loss; "
                    "micro-batching is implemented for the torch backend)",
                    self.micro_batch_size,
                )
            )
        if self.advantage == "group" and self.generations_per_prompt < 2:
            problems.append(
                _Problem(
                    ("generations_per_prompt",),
                    "must be >= 2 when trainer.advantage is 'group'",
                    self.generations_per_prompt,
                )
            )
        _raise(problems)
        return self


class FederationConfig(_Section):
    num_clients: PosInt = 8
    """Number of simulated clients, each with its own data shard."""
    clients_per_round: Annotated[Float, _interval("(0, 1]")] = 0.5
    """Fraction of clients sampled each round."""
    rounds: PosInt = 5
    """Communication rounds."""
    local_steps: PosInt = 2
    """Local optimization steps per client per round."""
    min_clients: PosInt = 1
    """A round fails unless at least this many sampled clients report back in time."""
    round_timeout_s: PosFloat = 600.0
    """Seconds the server waits for client updates in one round; clients still running (or
    queued) then are left out as late and their workers replaced."""
    client_timeout_s: PosFloat | None = None
    """Seconds one client task may run before its worker counts as stuck: the worker is
    killed and replaced and its clients re-run in the same round. None = round_timeout_s
    (a hung worker's clients are then left out as late). Set it below round_timeout_s, above
    the slowest healthy client, to re-run a hung worker's clients."""
    eval_every: PosInt = 1
    """Evaluate the global model every this many rounds."""

    @property
    def clients_sampled_per_round(self) -> int:
        """max(1, round(num_clients * clients_per_round))."""
        return max(1, round(self.num_clients * self.clients_per_round))

    @model_validator(mode="after")
    def _check(self) -> "FederationConfig":
        sampled = self.clients_sampled_per_round
        if self.client_timeout_s is not None and self.client_timeout_s > self.round_timeout_s:
            reason = f"must be <= round_timeout_s ({self.round_timeout_s:g})"
            _raise([_Problem(("client_timeout_s",), reason, self.client_timeout_s)])
        if self.min_clients > sampled:
            reason = (
                f"must be <= clients sampled per round ({sampled} = max(1, round("
                f"{self.num_clients} * {self.clients_per_round:g})))"
            )
            _raise([_Problem(("min_clients",), reason, self.min_clients)])
        return self


class RuntimeConfig(_Section):
    num_workers: PosInt = 2
    """Ray actors that run client updates (clients are multiplexed over them)."""
    num_cpus_per_worker: PosFloat = 1.0
    """CPUs reserved per worker actor."""
    num_gpus_per_worker: NonNegFloat = 0.0
    """GPUs per worker actor; fractions share a GPU."""
    address: StrictStr | None = None
    """Ray cluster address to join (e.g. 'auto'); None = start a local Ray instance."""
    dashboard: StrictBool = False
    """Start the Ray dashboard; it is bound to 127.0.0.1 only, never a public interface."""
    worker_start_timeout_s: PosFloat = 1800.0
    """Seconds to wait for the workers to load the model (on a cluster: download it) before
    the run fails naming what it waited for."""
    placement_timeout_s: PosFloat = 300.0
    """Seconds to wait for Ray to place the workers' bundles, at start and after a node is
    lost (an autoscaling cluster adds a node meanwhile) before the run fails naming what
    could not be placed; a local Ray this run started fails at once if they cannot fit."""
    max_node_losses: NonNegInt = 3
    """Nodes lost per run (their workers re-placed, their clients re-run; not counted in
    max_worker_restarts) before the run fails."""
    max_worker_restarts: NonNegInt = 10
    """Dead or stuck workers replaced per run (their clients re-run) before the run fails: a
    crash on every try (out of memory) ends the run instead of looping."""
    max_aggregator_restarts: NonNegInt = 3
    """Aggregator deaths recovered per run (recreated from the last checkpoint, the round's
    aggregation replayed) before the run fails."""


class WandbConfig(_Section):
    enabled: StrictBool = False
    """Log to Weights & Biases."""
    project: StrictStr = "firm-ray"
    """W&B project."""
    entity: StrictStr | None = None
    """W&B entity (user or team); None = the default entity."""
    group: StrictStr | None = None
    """W&B run group; None = no group."""
    tags: list[StrictStr] = []
    """W&B run tags."""
    mode: Literal["offline", "online", "disabled"] = "offline"
    """W&B mode; 'offline' writes locally for a later `wandb sync`."""
    log_adapter: StrictBool = False
    """Upload the final global LoRA adapter as a W&B artifact."""


class TrackingConfig(_Section):
    jsonl: StrictBool = True
    """Write metrics to metrics.jsonl in the run directory."""
    wandb: WandbConfig = WandbConfig()
    """Weights & Biases settings."""


class FirmConfig(_Section):
    """The whole experiment. Every section has defaults, so ``{}`` is a valid config."""

    experiment: ExperimentConfig = ExperimentConfig()
    """Run identity and output location."""
    model: ModelConfig = ModelConfig()
    """Base policy model."""
    lora: LoraConfig = LoraConfig()
    """LoRA adapter: the only trained and communicated parameters."""
    data: DataConfig = DataConfig()
    """Prompt data and its split over clients."""
    rewards: Annotated[list[RewardSpec], Field(min_length=1)] = Field(
        default_factory=_default_rewards
    )
    """The objectives, one reward each."""
    algorithm: AlgorithmConfig = AlgorithmConfig()
    """Federated multi-objective algorithm."""
    trainer: TrainerConfig = TrainerConfig()
    """Local RLHF (policy-gradient) training."""
    federation: FederationConfig = FederationConfig()
    """Rounds and client sampling."""
    runtime: RuntimeConfig = RuntimeConfig()
    """Ray resources."""
    tracking: TrackingConfig = TrackingConfig()
    """Metrics logging."""

    @property
    def num_objectives(self) -> int:
        """Number of rewards (M)."""
        return len(self.rewards)

    @model_validator(mode="after")
    def _check(self) -> "FirmConfig":
        problems = []
        seen: dict[str, int] = {}
        for i, reward in enumerate(self.rewards):
            if reward.name in seen:
                reason = f"duplicate reward name (also rewards[{seen[reward.name]}].name)"
                problems.append(_Problem(("rewards", i, "name"), reason, reward.name))
            seen.setdefault(reward.name, i)
        algo = self.algorithm.name
        m = self.num_objectives
        if algo in MULTI_OBJECTIVE_ALGORITHMS and m < 2:
            reason = f"algorithm {algo!r} needs at least 2 rewards, got {m}"
            problems.append(_Problem(("rewards",), reason, [r.name for r in self.rewards]))
        pref = self.algorithm.preference
        if pref is not None:
            got = None
            if len(pref) != m:
                got = f"got {len(pref)} entries"
            elif any(p < 0 for p in pref):
                got = "has a negative entry"
            elif abs(sum(pref) - 1.0) > 1e-6:
                got = f"entries sum to {sum(pref):g}"
            if got:
                reason = (
                    "must be a probability vector (entries >= 0 summing to 1) of length "
                    f"{m} (one per reward); {got}"
                )
                problems.append(_Problem(("algorithm", "preference"), reason, pref))
        if algo == "centralized" and self.federation.num_clients != 1:
            reason = "algorithm 'centralized' requires exactly 1 client"
            problems.append(
                _Problem(("federation", "num_clients"), reason, self.federation.num_clients)
            )
        _raise(problems)
        return self


# --------------------------------------------------------------------------- error messages


def _dotted(loc: Sequence[str | int]) -> str:
    out = ""
    for part in loc:
        if part == "[key]":  # pydantic's marker for an invalid mapping key
            out += " (key)"
        elif isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def _show(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _kind(value: Any) -> str:
    kinds = {bool: "a boolean", int: "an integer", float: "a float", str: "a string"}
    kinds |= {list: "a list", dict: "a mapping", type(None): "null"}
    return kinds.get(type(value), type(value).__name__)


_EXPECTED = {
    "int_type": "an integer",
    "float_type": "a number",
    "string_type": "a string",
    "bool_type": "true or false",
    "list_type": "a list",
    "dict_type": "a mapping",
    "model_type": "a mapping (a YAML section)",
    "model_attributes_type": "a mapping (a YAML section)",
}
_BOUNDS = {
    "greater_than_equal": ">=",
    "greater_than": ">",
    "less_than_equal": "<=",
    "less_than": "<",
}
_BOUND_KEYS = {">=": "ge", ">": "gt", "<=": "le", "<": "lt"}


def _unwrap(tp: Any) -> Any:
    """Strip Annotated and Optional from a type annotation."""
    while True:
        origin = get_origin(tp)
        if origin is Annotated:
            tp = get_args(tp)[0]
        elif origin is Union or type(tp).__name__ == "UnionType":
            args = [a for a in get_args(tp) if a is not type(None)]
            if len(args) != 1:
                return tp
            tp = args[0]
        else:
            return tp


def _model_at(root: type[BaseModel], loc: Sequence[str | int]) -> type[BaseModel] | None:
    """The config model class at a location below root, if it is one."""
    tp: Any = root
    for part in loc:
        tp = _unwrap(tp)
        if isinstance(part, int) and get_origin(tp) is list:
            tp = get_args(tp)[0]
        elif isinstance(tp, type) and issubclass(tp, BaseModel) and part in tp.model_fields:
            tp = tp.model_fields[part].annotation
        else:
            return None
    tp = _unwrap(tp)
    return tp if isinstance(tp, type) and issubclass(tp, BaseModel) else None


def _unknown_key(loc: Sequence[str | int], model: type[BaseModel] | None) -> str:
    if model is None:
        return f"{_dotted(loc)}: unknown key"
    allowed = list(model.model_fields)
    close = difflib.get_close_matches(str(loc[-1]), allowed, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"{_dotted(loc)}: unknown key{hint}; allowed keys: {', '.join(allowed)}"


def _phrase(err: dict[str, Any]) -> str:
    kind, ctx, value = err["type"], err.get("ctx") or {}, err.get("input")
    if kind in _EXPECTED:
        quote = kind == "string_type" and isinstance(value, (int, float))
        hint = " (quote it in YAML)" if quote else ""
        return f"must be {_EXPECTED[kind]}, not {_kind(value)}{hint}"
    if kind in _BOUNDS:
        op = _BOUNDS[kind]
        bound = ctx[_BOUND_KEYS[op]]
        return f"must be {op} {bound:g}" if isinstance(bound, float) else f"must be {op} {bound}"
    if kind == "literal_error":
        return "must be one of " + ", ".join(re.findall(r"'([^']*)'", ctx["expected"]))
    if kind == "too_short":
        n = ctx["min_length"]
        return f"must have at least {n} {'entry' if n == 1 else 'entries'}"
    if kind == "finite_number":
        return "must be a finite number"
    if kind == "value_error":
        return str(ctx["error"])
    msg = str(err["msg"])
    return "must be" + msg[len("Input should be") :] if msg.startswith("Input should be") else msg


def _format_errors(exc: ValidationError, root: type[BaseModel]) -> list[str]:
    """One line per problem: ``path = value: what is allowed``; unknown keys first.

    Paths are relative to the model class ``root`` that was validated.
    """
    first: list[str] = []
    rest: list[str] = []
    for err in exc.errors(include_url=False):
        loc = err["loc"]
        if err["type"] == "firm_config":
            for p in err["ctx"]["problems"]:
                path = _dotted((*loc, *p.path))
                shown = "" if p.value is ... else f" = {_show(p.value)}"
                rest.append(f"{path}{shown}: {p.reason}")
        elif err["type"] == "extra_forbidden":
            first.append(_unknown_key(loc, _model_at(root, loc[:-1])))
        elif err["type"] == "missing":
            rest.append(f"{_dotted(loc)}: required field is missing")
        else:
            rest.append(f"{_dotted(loc)} = {_show(err['input'])}: {_phrase(err)}")
    return list(dict.fromkeys(first + rest))


# --------------------------------------------------------------------------- YAML


def _with_float_resolver(base: type) -> type:
    """A YAML loader/dumper class that also reads 1e-3 / 5E+4 (no dot) as floats."""
    cls = type(f"_Firm{base.__name__}", (base,), {})
    cls.yaml_implicit_resolvers = {k: list(v) for k, v in base.yaml_implicit_resolvers.items()}
    cls.add_implicit_resolver(
        "tag:yaml.org,2002:float",
        re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
        list("-+0123456789"),
    )
    return cls


_Loader = _with_float_resolver(yaml.SafeLoader)
_Dumper = _with_float_resolver(yaml.SafeDumper)


def _represent_list(dumper: yaml.SafeDumper, data: list[Any]) -> yaml.Node:
    """Lists of scalars inline (``[0.3, 0.7]``), everything else in block style."""
    flow = all(not isinstance(item, (list, dict)) for item in data)
    return dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=flow)


_Dumper.add_representer(list, _represent_list)


def _yaml_error(where: str, exc: yaml.YAMLError) -> ConfigError:
    mark = getattr(exc, "problem_mark", None)
    at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
    problem = getattr(exc, "problem", None) or str(exc)
    return ConfigError(f"{where}: invalid YAML{at}: {' '.join(str(problem).split())}")


# --------------------------------------------------------------------------- overrides

_OVERRIDE_PATH = re.compile(r"[A-Za-z_][\w-]*(?:\[\d+\])*(?:\.[A-Za-z_][\w-]*(?:\[\d+\])*)*")


def _parse_path(path: str) -> list[str | int]:
    return [
        int(tok[1:-1]) if tok.startswith("[") else tok
        for tok in re.findall(r"\[\d+\]|[^.[]+", path)
    ]


def _apply_override(raw: dict[str, Any], override: str) -> None:
    key, sep, text = override.partition("=")
    key = key.strip()
    if not sep or not _OVERRIDE_PATH.fullmatch(key):
        raise ConfigError(
            f"override {override!r}: must look like a.b.c=VALUE (e.g. algorithm.beta=0.5)"
        )
    try:
        value = yaml.load(text, Loader=_Loader)  # a SafeLoader subclass
    except yaml.YAMLError as exc:
        raise _yaml_error(f"override {override!r}", exc) from None
    parts = _parse_path(key)
    node: Any = raw
    tp: Any = FirmConfig
    for i, part in enumerate(parts):
        here, last = _dotted(parts[: i + 1]), i == len(parts) - 1
        tp = _unwrap(tp)
        model = tp if isinstance(tp, type) and issubclass(tp, BaseModel) else None
        if isinstance(part, int):
            if get_origin(tp) is not list or not isinstance(node, list):
                raise ConfigError(f"{here}: cannot index {_dotted(parts[:i])} = {_show(node)}")
            if part >= len(node):
                raise ConfigError(
                    f"{here}: index out of range ({_dotted(parts[:i])} has {len(node)} entries)"
                )
            tp = get_args(tp)[0]
        else:
            if model is not None:
                if part not in model.model_fields:
                    raise ConfigError(
                        _unknown_key(parts[: i + 1], model) + f" (in --set {override})"
                    )
                field = model.model_fields[part]
                tp = field.annotation
            elif get_origin(tp) is dict or tp is Any:
                tp = get_args(tp)[1] if get_origin(tp) is dict else Any
            else:
                raise ConfigError(f"{here}: unknown key ({_dotted(parts[:i])} has no sub-keys)")
            if not isinstance(node, dict):
                raise ConfigError(
                    f"{here}: cannot set a key in {_dotted(parts[:i])} = {_show(node)}"
                )
            if not last and node.get(part) is None:  # descend into the default
                default = field.get_default(call_default_factory=True) if model else None
                empty: Any = [] if isinstance(parts[i + 1], int) else {}
                node[part] = empty if default is None else to_jsonable_python(default)
        if last:
            node[part] = value
        else:
            node = node[part]


# --------------------------------------------------------------------------- public API


def config_from_dict(data: dict[str, Any] | None, overrides: Sequence[str] = ()) -> FirmConfig:
    """Validate a plain dict (as read from YAML) after applying dotted ``key=value`` overrides.

    A section given as null (e.g. a YAML section whose lines are all commented out) means
    "all defaults". The input is not modified.
    """
    if isinstance(overrides, str):
        raise TypeError("overrides must be a sequence of 'key=value' strings, not one string")
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"config = {_show(data)}: the top level must be a mapping of sections")
    sections = set(FirmConfig.model_fields) - {"rewards"}
    raw = {k: v for k, v in copy.deepcopy(data).items() if not (v is None and k in sections)}
    for override in overrides:
        _apply_override(raw, override)
    try:
        return FirmConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_format_errors(exc, FirmConfig)) from None


def load_config(path: str | Path | None, overrides: Sequence[str] = ()) -> FirmConfig:
    """Read a YAML config (None = all defaults), apply overrides and validate."""
    data = None
    if path is not None:
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise ConfigError(f"{path}: config file not found") from None
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read config file ({exc.strerror or exc})") from None
        try:
            data = yaml.load(text, Loader=_Loader)  # a SafeLoader subclass
        except yaml.YAMLError as exc:
            raise _yaml_error(str(path), exc) from None
        if data is not None and not isinstance(data, dict):
            raise ConfigError(
                f"{path}: the top level must be a mapping of sections, not {_kind(data)}"
            )
    return config_from_dict(data, overrides)


def dump_config(config: FirmConfig) -> str:
    """The full config as YAML, keys in model order; `load_config` of it gives an equal config."""
    return yaml.dump(
        config.model_dump(mode="json"),
        Dumper=_Dumper,
        sort_keys=False,
        default_flow_style=False,
        allow_unicode=True,
    )


def save_config(config: FirmConfig, path: str | Path) -> Path:
    """Write `dump_config(config)` to path (creating parent directories); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(dump_config(config), encoding="utf-8")
    return path
