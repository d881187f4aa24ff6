"""The config schema: one pydantic model per section of an experiment, validated at load time.

Why one tree: an experiment touches the model, LoRA, data, rewards, the algorithm, the trainer,
the federation schedule, Ray and tracking; a typo or bad value must surface at load time, not
minutes into a run on a remote worker. Loading, YAML and --set overrides live in loading.py;
the field types and the Section base in fields.py; the ``algorithm:`` block in algorithm.py.

(The sections are data with their docstrings, which are the user-facing reference.)
"""

from typing import Annotated, Any, Literal, get_args

from pydantic import Field, StrictBool, StrictStr, model_validator

from firm_ray.config.algorithm import AlgorithmConfig
from firm_ray.config.errors import Problem, raise_problems
from firm_ray.config.fields import (
    Float,
    NonNegFloat,
    NonNegInt,
    PosFloat,
    PosInt,
    SafeName,
    Section,
    interval,
)
from firm_ray.config.privacy import PrivacyConfig, RobustnessConfig, privacy_problems

RewardType = Literal[
    "relevance", "harmlessness", "sentiment", "length", "conciseness", "hf_reward_model", "python"
]
REWARD_TYPES: tuple[str, ...] = get_args(RewardType)

# --------------------------------------------------------------------------- sections


class ExperimentConfig(Section):
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


class ModelConfig(Section):
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


class LoraConfig(Section):
    r: PosInt = 8
    """LoRA rank."""
    alpha: PosFloat = 16.0
    """LoRA scaling numerator (the update is scaled by alpha / r)."""
    dropout: Annotated[Float, interval("[0, 1)")] = 0.0
    """Dropout on the LoRA input."""
    target_modules: list[StrictStr] | None = None
    """Module names to adapt; None = a per-architecture default."""
    bias: Literal["none", "all", "lora_only"] = "none"
    """Which biases are trained alongside the adapter."""
    freeze_a: StrictBool = False
    """FFA-LoRA (Sun et al. 2024): keep every LoRA A matrix at its seeded initialisation and
    train only B. A is then the same on every client, so averaging the B matrices is exactly
    averaging the updates B A (with trainable A, mean(B) mean(A) != mean(B A)). Half the trained
    parameters; the upload still carries A (unchanged) so a payload is a whole PEFT adapter."""


class PartitionConfig(Section):
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


Optimizer = Literal["adamw", "sgd"]
OPTIMIZERS: tuple[str, ...] = get_args(Optimizer)
PromptFormat = Literal["plain", "hh_first_human_turn"]
PROMPT_FORMATS: tuple[str, ...] = get_args(PromptFormat)


class DataConfig(Section):
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
    eval_fraction: Annotated[Float, interval("(0, 1)")] = 0.1
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
                Problem(("path",), f"required when data.source is {self.source!r}", None)
            )
        if self.source == "builtin" and self.eval_split is not None:
            problems.append(
                Problem(
                    ("eval_split",),
                    "must be null when data.source is 'builtin' (the built-in world has its "
                    "own eval prompts)",
                    self.eval_split,
                )
            )
        if self.partition.scheme == "natural" and not (self.partition.field or self.category_field):
            problems.append(
                Problem(
                    ("partition", "field"),
                    "scheme 'natural' needs a category field (this or data.category_field)",
                    None,
                )
            )
        raise_problems(problems)
        return self


class RewardSpec(Section):
    name: SafeName
    """Objective name, unique across rewards; used in metric keys."""
    type: RewardType
    """Reward implementation."""
    normalize: StrictBool = False
    """Normalize this reward's scale before it enters the objective."""
    kwargs: dict[StrictStr, Any] = Field(default_factory=dict)
    """Extra arguments for the reward implementation (e.g. model id for hf_reward_model)."""


def _default_rewards() -> list[RewardSpec]:
    return [
        RewardSpec(name="relevance", type="relevance"),
        RewardSpec(name="harmlessness", type="harmlessness"),
    ]


class TrainerConfig(Section):
    backend: Literal["torch", "deepspeed"] = "torch"
    """Local optimization backend."""
    deepspeed_config: StrictStr | None = None
    """Path to a DeepSpeed JSON/YAML config; required when backend is 'deepspeed'."""
    optimizer: Optimizer | None = None
    """Client optimizer of the LoRA parameters, fresh every local trajectory (no moments or
    momentum carried between rounds or clients): 'adamw' or 'sgd' (with
    `momentum`); None = the algorithm's default (AdamW; fmgda: SGD, as in Yang et al. 2023,
    whose local update is plain SGD). AdamW's sign-like first steps do not keep a min-norm
    direction's common-descent property; SGD does."""
    learning_rate: PosFloat | None = None
    """Client learning rate; None = the optimizer's default (adamw 5e-4, sgd: see
    firm_ray.trainer.backends.DEFAULT_LEARNING_RATES)."""
    momentum: Annotated[Float, interval("[0, 1)")] = 0.0
    """SGD momentum (0 = plain SGD); only with optimizer 'sgd', set here or, with optimizer
    null, the algorithm's default (fmgda's); checked when the config loads."""
    weight_decay: NonNegFloat = 0.0
    """Weight decay (AdamW: decoupled; SGD: L2)."""
    batch_prompts: PosInt = 8
    """Prompts per local step."""
    generations_per_prompt: PosInt = 4
    """Sampled completions per prompt (>= 2 for group-relative advantages)."""
    max_new_tokens: PosInt = 16
    """Generation length cap."""
    temperature: PosFloat = 1.0
    """Sampling temperature."""
    top_p: Annotated[Float, interval("(0, 1]")] = 1.0
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
    max_skip_fraction: Annotated[Float, interval("[0, 1]")] = 0.5
    """The run fails, naming the first reason, once more than this fraction of all local steps so
    far were skipped (a reward that raises, non-finite losses); 1.0 = never fail."""
    eval_batch_prompts: PosInt = 16
    """Evaluation prompts generated and scored at once (x eval_samples_per_prompt sequences)."""
    eval_samples_per_prompt: PosInt = 2
    """Completions sampled per held-out prompt at evaluation."""
    eval_pareto_stationarity: StrictBool = True
    """At every evaluation, also compute the Pareto stationarity of the global model: the norm
    of the min-norm combination of the per-objective surrogate gradients on the eval prompts
    (FIRM's convergence criterion; metrics.jsonl 'pareto_stationarity'): one backward per
    objective, about 15% of an evaluation's time on the built-in world on a CPU (0.54 s of
    4.3 s measured); false = skip it (logged as null)."""
    kl_coef: NonNegFloat = 0.05
    """KL penalty to the reference (adapter-free) model."""
    kl_mode: Literal["reward", "advantage", "loss"] = "reward"
    """Where the KL penalty to the reference enters. 'reward' (DESIGN.md: J_m = E[r_m] -
    kl_coef * KL): kl_coef times the sequence log-ratio to the reference is subtracted from every
    raw reward before the advantage, so kl_coef is in reward units; 'advantage': the log-ratio,
    centred with the advantage's baseline, is subtracted after the advantage (kl_coef in
    advantage units: reward standard deviations with 'group' / 'batch'; the form before issue
    15); 'loss': GRPO's per-token k3 KL term in the loss (one extra backward)."""
    clip_eps: Annotated[Float, interval("(0, 1)")] = 0.2
    """PPO ratio clipping epsilon."""
    ppo_epochs: PosInt = 1
    """Optimization passes over each batch of generations."""
    advantage: Literal["group", "batch", "group_mean", "batch_mean"] = "group"
    """Per-objective advantage of each completion. 'group': (r - group mean) / (group std +
    1e-6), GRPO, population std (TRL's scale_rewards 'group' divides by the Bessel-corrected
    std + 1e-4: advantages sqrt(G/(G-1)) times smaller); 'batch': (r - batch mean) / (batch std
    + 1e-6) (TRL's 'batch' centres on the group mean); 'group_mean' / 'batch_mean': r minus the
    group / batch mean, not divided by a std (Dr. GRPO; 'group_mean' is TRL's scale_rewards
    'none'), so each reward's scale reaches its gradient."""
    max_grad_norm: PosFloat | None = 1.0
    """Clip the combined gradient to this L2 norm; None = no clipping."""

    @model_validator(mode="after")
    def _check(self) -> "TrainerConfig":
        problems = []
        if self.backend == "deepspeed" and self.deepspeed_config is None:
            problems.append(
                Problem(
                    ("deepspeed_config",),
                    "required when trainer.backend is 'deepspeed' (path to a DeepSpeed config)",
                    None,
                )
            )
        sequences = self.batch_prompts * self.generations_per_prompt
        if self.backend == "deepspeed" and self.micro_batch_size < sequences:
            problems.append(
                Problem(
                    ("micro_batch_size",),
                    f"must be >= batch_prompts x generations_per_prompt ({sequences}) with "
                    "trainer.backend 'deepspeed' (its engine backpropagates one combined loss; "
                    "micro-batching is implemented for the torch backend)",
                    self.micro_batch_size,
                )
            )
        if self.advantage.startswith("group") and self.generations_per_prompt < 2:
            problems.append(
                Problem(
                    ("generations_per_prompt",),
                    f"must be >= 2 when trainer.advantage is {self.advantage!r}",
                    self.generations_per_prompt,
                )
            )
        if self.optimizer == "adamw" and self.momentum > 0:
            problems.append(
                Problem(("momentum",), "only used with trainer.optimizer 'sgd'", self.momentum)
            )
        raise_problems(problems)
        return self


class FederationConfig(Section):
    num_clients: PosInt = 8
    """Number of simulated clients, each with its own data shard."""
    clients_per_round: Annotated[Float, interval("(0, 1]")] = 0.5
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
            raise_problems([Problem(("client_timeout_s",), reason, self.client_timeout_s)])
        if self.min_clients > sampled:
            reason = (
                f"must be <= clients sampled per round ({sampled} = max(1, round("
                f"{self.num_clients} * {self.clients_per_round:g})))"
            )
            raise_problems([Problem(("min_clients",), reason, self.min_clients)])
        return self


class RuntimeConfig(Section):
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


class WandbConfig(Section):
    enabled: StrictBool = False
    """Log to Weights & Biases."""
    project: StrictStr = "firm-ray"
    """W&B project."""
    entity: StrictStr | None = None
    """W&B entity (user or team); None = the default entity."""
    group: StrictStr | None = None
    """W&B run group; None = no group."""
    tags: list[StrictStr] = Field(default_factory=list)
    """W&B run tags."""
    mode: Literal["offline", "online", "disabled"] = "offline"
    """W&B mode; 'offline' writes locally for a later `wandb sync`."""
    log_adapter: StrictBool = False
    """Upload the final global LoRA adapter as a W&B artifact."""


class TrackingConfig(Section):
    jsonl: StrictBool = True
    """Write metrics to metrics.jsonl in the run directory."""
    wandb: WandbConfig = WandbConfig()
    """Weights & Biases settings."""


class FirmConfig(Section):
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
    algorithm: AlgorithmConfig = Field(default_factory=AlgorithmConfig)
    """Federated multi-objective algorithm."""
    trainer: TrainerConfig = TrainerConfig()
    """Local RLHF (policy-gradient) training."""
    federation: FederationConfig = FederationConfig()
    """Rounds and client sampling."""
    privacy: PrivacyConfig = PrivacyConfig()
    """Client-level differential privacy (off by default; docs/PRIVACY.md)."""
    robustness: RobustnessConfig = RobustnessConfig()
    """The server's aggregation rule and attack injection (docs/PRIVACY.md)."""
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
                problems.append(Problem(("rewards", i, "name"), reason, reward.name))
            seen.setdefault(reward.name, i)
        algo = self.algorithm.name
        m = self.num_objectives
        need = self.algorithm.algorithm_class().min_objectives
        if m < need:
            reason = f"algorithm {algo!r} needs at least {need} rewards, got {m}"
            problems.append(Problem(("rewards",), reason, [r.name for r in self.rewards]))
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
                problems.append(Problem(("algorithm", "preference"), reason, pref))
        problems += self._optimizer_problems()
        p = pref if pref is not None and len(pref) == m else [1.0 / m] * m
        problems += privacy_problems(
            self.privacy,
            self.robustness,
            list(p) == list(p)[::-1],
            self.federation.clients_sampled_per_round,
        )
        if algo == "centralized" and self.federation.num_clients != 1:
            reason = "algorithm 'centralized' requires exactly 1 client (FIRM's update, all data)"
            problems.append(
                Problem(("federation", "num_clients"), reason, self.federation.num_clients)
            )
        raise_problems(problems)
        return self

    def _optimizer_problems(self) -> list[Problem]:
        """``trainer.optimizer: null`` resolves to the algorithm's default optimizer when a
        worker builds its trainer: check that default here, at load time, not on the worker."""
        trainer = self.trainer
        if trainer.optimizer is not None:
            return []  # an explicit optimizer is checked by TrainerConfig
        algo = self.algorithm.name
        default = self.algorithm.algorithm_class().default_optimizer
        if default not in OPTIMIZERS:
            reason = (
                f"algorithm {algo!r} defaults to {default!r}, which is not one of "
                f"{', '.join(OPTIMIZERS)}; set trainer.optimizer"
            )
            return [Problem(("trainer", "optimizer"), reason, None)]
        if default != "sgd" and trainer.momentum > 0:
            reason = (
                f"only used with optimizer 'sgd'; trainer.optimizer is null and algorithm "
                f"{algo!r} defaults to {default!r}"
            )
            return [Problem(("trainer", "momentum"), reason, trainer.momentum)]
        return []
