"""What a client does to its update before it leaves: an attack (malicious clients only), DP
clipping and local noise, and withholding what DP does not cover.

Why here, after `LocalTrainer.run_round` and before the wire: these are properties of the
client, not of the local optimization, and must apply the same way to every algorithm
(fmgda's M deltas included). Order: a malicious client attacks its honest update first (an
attacker controls what it sends); DP then clips whatever is sent, as an honest client's DP
library would (a DP guarantee assumes honest clipping; the server checks the bound again).

Under DP (``privacy.clip`` set) an update carries only: its payloads (clipped to C jointly; with
distributed noise, plus N(0, local_noise_std^2)), the sample count (not used by the DP mean;
kept so the server's screening is unchanged), the step counts (``steps``, ``skipped_steps``:
counts, needed to tell a client that trained from one that did not) and the adaptive-clipping
bit (``dp_unclipped``, noised in aggregate by the server). Lambda, rewards, losses, KL, skip
reasons and the reward-normalization state are withheld (docs/PRIVACY.md).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from firm_ray.config import FirmConfig
from firm_ray.core.aggregation import state_delta
from firm_ray.federation.attacks import (
    PAYLOAD_ATTACKS,
    attack_update,
    attackers,
    mirrored_preference,
)
from firm_ray.federation.combine import UNCLIPPED_KEY
from firm_ray.privacy import clip_joint, gaussian_like, noise_generator
from firm_ray.types import AdapterState, ClientUpdate

DP_KEPT_METRICS = ("steps", "skipped_steps", UNCLIPPED_KEY)
"""The only client metrics an update carries under DP (all counts or bits)."""


class ClientUploads:
    """The client-side policy of a run: who attacks, and the DP treatment of every upload."""

    def __init__(self, config: FirmConfig) -> None:
        self.config = config
        attack = config.robustness.attack
        self.attack_seed = attack.seed if attack.seed is not None else config.experiment.seed
        self.malicious = (
            attackers(config.federation.num_clients, attack.fraction, self.attack_seed)
            if attack.kind is not None
            else frozenset()
        )
        p = config.privacy
        self.noise_seed = None if p.secure_noise else config.experiment.seed

    def preference_of(self, client_id: int) -> list[float] | None:
        """The preference a client trains for when it is not algorithm.preference (an
        opposite_preference attacker: the mirrored one); None otherwise."""
        kind = self.config.robustness.attack.kind
        if client_id not in self.malicious or kind != "opposite_preference":
            return None
        p = self.config.algorithm.preference_vector(self.config.num_objectives)
        return mirrored_preference(p)

    def prepare(
        self, update: ClientUpdate, reference: AdapterState, instructions: dict[str, Any]
    ) -> ClientUpdate:
        """The update as it leaves the client (``reference`` = theta^t, as received)."""
        update = self._attack(update, reference)
        clip = instructions.get("clip")
        if clip is None:
            return update
        return self._privatize(update, reference, float(clip), instructions)

    def _attack(self, update: ClientUpdate, reference: AdapterState) -> ClientUpdate:
        kind = self.config.robustness.attack.kind
        if kind is None or update.client_id not in self.malicious:
            return update
        if kind == "opposite_preference":  # acted on training (preference_of)
            return update
        if kind in PAYLOAD_ATTACKS and update.adapter is None and not update.objective_deltas:
            return update  # nothing was trained (rejected as such by the server)
        generator = noise_generator(self.attack_seed, "attack", update.client_id, update.round)
        ref = reference if update.adapter is not None else None
        return attack_update(kind, update, ref, self.config.robustness.attack.scale, generator)

    def _privatize(
        self,
        update: ClientUpdate,
        reference: AdapterState,
        clip: float,
        instructions: dict[str, Any],
    ) -> ClientUpdate:
        metrics = {k: update.metrics[k] for k in DP_KEPT_METRICS if k in update.metrics}
        withheld = replace(update, metrics=metrics, client_state={})
        payloads = [update.adapter] if update.adapter is not None else update.objective_deltas
        if not payloads or not update.valid:
            return withheld
        is_adapter = update.adapter is not None
        deltas = [state_delta(p, reference) for p in payloads] if is_adapter else list(payloads)
        clipped, norm, _ = clip_joint(deltas, clip)
        metrics[UNCLIPPED_KEY] = float(norm <= clip)
        std = float(instructions.get("local_noise_std") or 0.0)
        if std > 0:
            generator = noise_generator(self.noise_seed, "dp_local", update.client_id, update.round)
            clipped = [
                {k: v + n[k].to(v.dtype) for k, v in d.items()}
                for d in clipped
                for n in [gaussian_like(d, std, generator)]
            ]
        if is_adapter:
            (delta,) = clipped
            adapter = {
                k: (reference[k].to(v.dtype) + v).to(reference[k].dtype) for k, v in delta.items()
            }
            return replace(withheld, adapter=adapter)
        return replace(withheld, objective_deltas=clipped)
