"""The claims study's design and its runs: settings, algorithms, sweep files, the cache.

The design (what runs where, and why) is in bench/paper_claims.py's docstring; this module
turns it into sweep files run through ``firm-ray sweep`` (firm_ray.runtime.sweep) and keeps
them as a cache. A sweep's name carries a hash of its spec, so a changed spec is a new sweep
and an unchanged one is found again: finished sweeps are reused, an interrupted one is resumed
(Ray Tune keeps its finished trials and resumes the others from their last round checkpoint),
and ``--reuse`` runs nothing at all.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console

ROOT = Path(__file__).resolve().parents[1]
BASE_CONFIG = ROOT / "tune_configs" / "quickstart.yaml"

ADVANTAGES = ("group", "group_mean")
OPTIMIZERS = ("adamw", "sgd")
OBJECTIVES = (2, 3)
SENTIMENT = {"name": "sentiment", "type": "sentiment", "normalize": False, "kwargs": {}}

FIRM = "firm_b1"  # FIRM as the project ships it (beta 1, relative): fixed before any run
BETA_GRID = (0.0, 0.1, 1.0, 10.0)
JD_AGGREGATOR = "upgrad"  # torchjd's UPGrad through firm_ray's BVLS projector (no GPL quadprog)

# The world and the federation, equal for every trial (see paper_claims.py: what was cut)
STUDY_SET = [
    "federation.num_clients=16",
    "federation.clients_per_round=0.125",  # 2 clients per round
    "federation.rounds=12",
    "data.max_eval_prompts=64",
    "runtime.num_workers=1",
]
QUICK_SET = [
    "federation.num_clients=16",
    "federation.clients_per_round=0.125",
    "federation.rounds=2",
    "federation.local_steps=1",
    "data.max_eval_prompts=16",
    "runtime.num_workers=1",
]
ADAMW_LR = 5e-3  # tune_configs/quickstart.yaml's rate for the tiny world


SGD_RULE = {"group": 0.5, "group_mean": 2.0}
"""SGD's rate per advantage mode, by the trainer's stated rule (SGD's first step has the norm of
AdamW's first step at 5e-4; firm_ray.trainer.backends.DEFAULT_LEARNING_RATES), measured with
``python bench/sgd_lr_rule.py --clients 8 [--set trainer.advantage=group_mean]``: median
lr_sgd 0.49 -> 0.5 (group, the trainer's default) and 2.05 -> 2 (group_mean: without the std
division the clipped first gradient is ~4x smaller, median 0.0135, while AdamW's step is not).
The study's first group_mean/sgd runs used the group rate (5.0 here), i.e. a quarter of the
rule's step; they are kept under their own spec hash and quoted as such, never mixed in."""


def sgd_learning_rate(advantage: str) -> float:
    """SGD's rate in a setting: the stated rule for its advantage mode (:data:`SGD_RULE`), scaled
    like the world's AdamW rate: the quickstart runs AdamW at 10x its default, so SGD runs at
    10x the rule too."""
    from firm_ray.trainer.backends import DEFAULT_LEARNING_RATES as lr

    return SGD_RULE[advantage] * ADAMW_LR / lr["adamw"]


def algo_overrides(algo: str) -> list[str]:
    """The --set lines of one algorithm variant."""
    if algo.startswith("firm_b"):
        beta = float(algo.removeprefix("firm_b"))
        return ["algorithm.name=firm", f"algorithm.beta={beta}", "algorithm.beta_scale=relative"]
    if algo.startswith("jd_"):
        return ["algorithm.name=jd", f"algorithm.aggregator={algo.removeprefix('jd_')}"]
    if algo == "centralized":  # FIRM's in-client update on one client holding all data
        return [
            "algorithm.name=centralized",
            "algorithm.beta=1.0",
            "federation.num_clients=1",
            "federation.clients_per_round=1.0",
        ]
    return [f"algorithm.name={algo}"]


def firm_beta_name(beta: float) -> str:
    return f"firm_b{beta:g}"


@dataclass(frozen=True)
class Setting:
    advantage: str
    optimizer: str
    m: int

    @property
    def key(self) -> str:
        return f"{self.advantage}/{self.optimizer}/M{self.m}"

    @property
    def slug(self) -> str:
        return f"{self.advantage}_{self.optimizer}_m{self.m}"

    def overrides(self) -> list[str]:
        lr = ADAMW_LR if self.optimizer == "adamw" else sgd_learning_rate(self.advantage)
        return [
            f"trainer.advantage={self.advantage}",
            f"trainer.optimizer={self.optimizer}",
            f"trainer.learning_rate={lr:g}",
        ]


SETTINGS = tuple(
    Setting(a, o, m) for m, a, o in itertools.product(OBJECTIVES, ADVANTAGES, OPTIMIZERS)
)
ANCHORS = (Setting("group", "adamw", 2), Setting("group_mean", "sgd", 2))
"""Where the preference sweeps run (M = 2): today's default and the faithful knobs (unscaled
advantages, plain SGD), the two ends of the hypothesis in issue 15."""


def preference_points(m: int) -> list[list[float]]:
    """The non-uniform preferences of a sweep: the simplex's vertices (M = 2: p = (1, 0), (0, 1));
    with the uniform runs they give each objective its lowest, middle and highest weight."""
    return [[1.0 if i == j else 0.0 for j in range(m)] for i in range(m)]


PART_ROLES = ("uniform", "beta", "prefs")


@dataclass
class Part:
    """One sweep: a setting, algorithm variants, preferences and seeds."""

    setting: Setting
    role: str  # one of PART_ROLES
    algos: list[str]
    preferences: list[list[float]] | None  # None: uniform only
    seeds: list[int]
    extra: list[str] = field(default_factory=list)

    def n_trials(self) -> int:
        return len(self.algos) * len(self.seeds) * (len(self.preferences or [None]))


def design(seeds: Sequence[int], quick: bool = False, jd: str = JD_AGGREGATOR) -> list[Part]:
    """Every sweep of the study (see paper_claims.py's docstring for why this shape). --quick:
    one M = 2 anchor with every part and the M = 3 faithful setting's uniform part."""
    seeds = [int(s) for s in seeds]
    parts = []
    for s in SETTINGS:
        if quick and s not in (ANCHORS[0], Setting("group_mean", "sgd", 3)):
            continue
        algos = [firm_beta_name(0.0), FIRM, "fedavg_ls", "fmgda"]
        if s.m == 2:
            algos += [f"jd_{jd}", "centralized"]
        parts.append(Part(s, "uniform", algos, None, seeds))
        if s in ANCHORS:
            grid = [firm_beta_name(b) for b in BETA_GRID if b not in (0.0, 1.0)]
            parts.append(Part(s, "beta", grid, None, seeds))
            parts.append(Part(s, "prefs", [FIRM, "fedavg_ls"], preference_points(s.m), seeds))
    return parts


# ------------------------------------------------------------------------------ cost model
@dataclass(frozen=True)
class Cost:
    """Seconds of one trial: start + rounds * (client-trajectories * steps * step + eval)."""

    start_s: float = 30.0
    step_s: float = 0.65
    eval_s: float = 2.3
    rounds: int = 12
    clients: int = 2
    local_steps: int = 4
    parallel: int = 2

    def trial_s(self, algo: str, m: int) -> float:
        if algo == "centralized":
            trajectories = 1
        elif algo == "fmgda":
            trajectories = self.clients * m
        else:
            trajectories = self.clients
        return self.start_s + self.rounds * (
            trajectories * self.local_steps * self.step_s + self.eval_s
        )

    def part_s(self, part: Part) -> float:
        per = sum(self.trial_s(a, part.setting.m) for a in part.algos)
        return per * len(part.seeds) * len(part.preferences or [None]) / self.parallel


# ------------------------------------------------------------------------------ sweeps
LATER_SECTIONS = ("privacy", "robustness")
"""quickstart.yaml sections added after the study's first runs (issue 16). Left out of the
study's base file while they hold their defaults (no DP, FedAvg's mean, no attack), which the
study uses anyway: so the base file, and with it the cache key of every sweep run before they
existed, stays the same. A non-default value stays in (and makes new sweeps)."""


def _later_defaults() -> dict[str, Any]:
    from firm_ray.config import FirmConfig

    dumped = FirmConfig().model_dump(mode="json")
    return {section: dumped[section] for section in LATER_SECTIONS}


LATER_DEFAULTS = _later_defaults()


def base_config(out: Path, m: int) -> Path:
    """The study's base experiment for M objectives: the quickstart (M = 2) or the quickstart
    plus the sentiment reward (M = 3), written next to the sweeps."""
    cfg = yaml.safe_load(BASE_CONFIG.read_text(encoding="utf-8"))
    for section in LATER_SECTIONS:  # at their defaults: the study runs without them
        if cfg.get(section) == LATER_DEFAULTS[section]:
            del cfg[section]
    if m == 3:
        cfg["rewards"] = [*cfg["rewards"], dict(SENTIMENT)]
    path = out / f"base_m{m}.yaml"
    text = yaml.safe_dump(cfg, sort_keys=False)
    header = f"# Generated by bench/paper_claims.py from {BASE_CONFIG.name} (M = {m})\n"
    if not path.is_file() or path.read_text(encoding="utf-8") != header + text:
        path.write_text(header + text, encoding="utf-8")
    return path


def sweep_spec(part: Part, out: Path, quick: bool) -> dict[str, Any]:
    """The sweep file's content of one part (its name carries a hash of everything else)."""
    s = part.setting
    space: dict[str, Any] = {"experiment.seed": {"grid": list(part.seeds)}}
    if part.preferences:
        space["algorithm.preference"] = {"grid": part.preferences}
    body = {
        "base": str(base_config(out, s.m)),
        "set": [
            *(QUICK_SET if quick else STUDY_SET),
            *s.overrides(),
            *part.extra,
            f"experiment.description=claims study {s.key} {part.role}",
        ],
        "variants": {a: algo_overrides(a) for a in part.algos},
        "space": space,
        "num_samples": 1,
        "scheduler": "fifo",
        "output_dir": str(out / "sweeps"),
    }
    return named_spec(f"claims_{s.slug}_{part.role}", body)


def named_spec(prefix: str, body: dict[str, Any]) -> dict[str, Any]:
    """A sweep file named ``<prefix>_<hash>``: the hash covers the body and the base file's
    content (an edited quickstart.yaml is a new sweep, not a cache hit)."""
    keyed = {**body, "base_text": Path(body["base"]).read_text(encoding="utf-8")}
    digest = hashlib.sha256(json.dumps(keyed, sort_keys=True).encode()).hexdigest()[:8]
    return {"sweep": {"name": f"{prefix}_{digest}", **body}}


def _sweep_dirs(out: Path, name: str) -> list[Path]:
    root = out / "sweeps"
    if not root.is_dir():
        return []
    found = [
        p
        for p in root.iterdir()
        if p.is_dir() and (p.name == name or p.name.startswith(name + "-"))
    ]
    return sorted(found, key=lambda p: p.stat().st_mtime)


def _completed(sweep_dir: Path) -> int:
    n = 0
    for summary in (sweep_dir / "trials").glob("*/summary.json"):
        try:
            n += json.loads(summary.read_text(encoding="utf-8")).get("status") == "completed"
        except (OSError, ValueError):
            continue
    return n


def ensure_sweep(
    spec: dict[str, Any],
    out: Path,
    expected: int,
    mode: str,
    console: Console,
    generator: str = "bench/paper_claims.py",
) -> dict[str, Any]:
    """Run, resume or reuse one sweep. mode: run (run what is missing) | reuse (run nothing).
    ``generator``: the bench named in the written spec file's header."""
    from firm_ray.runtime.sweep import SweepError, resume_sweep, run_sweep

    name = spec["sweep"]["name"]
    path = out / "specs" / f"{name}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    header = f"# Generated by {generator}; run alone: firm-ray sweep {path}\n"
    path.write_text(header + yaml.safe_dump(spec, sort_keys=False), encoding="utf-8")
    dirs = _sweep_dirs(out, name)
    best = max(dirs, key=_completed, default=None)
    done = _completed(best) if best is not None else 0
    entry = {"name": name, "spec_file": str(path), "expected": expected}
    if best is not None and done >= expected:
        return {**entry, "sweep_dir": str(best), "mode": "cached", "completed": done}
    if mode == "reuse":
        state = "missing" if best is None else f"partial ({done}/{expected})"
        console.print(f"[yellow]{name}: {state}; --reuse runs nothing")
        return {**entry, "sweep_dir": str(best) if best else None, "mode": state, "completed": done}
    if best is not None and (best / "tune").is_dir():
        console.print(f"{name}: resuming {best} ({done}/{expected} trials completed)")
        try:
            result = resume_sweep(best, console)
            return {
                **entry,
                "sweep_dir": result["sweep_dir"],
                "mode": "resumed",
                "wall_s": result["wall_s"],
                "completed": _completed(best),
            }
        except SweepError as err:
            console.print(f"[yellow]{name}: cannot resume ({err}); running it afresh")
    console.print(f"[bold]{name}[/]: {expected} trials -> {path}")
    result = run_sweep(path, console)
    sweep_dir = Path(result["sweep_dir"])
    return {
        **entry,
        "sweep_dir": str(sweep_dir),
        "mode": "ran",
        "wall_s": result["wall_s"],
        "completed": _completed(sweep_dir),
    }
