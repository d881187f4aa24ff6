"""Per-objective gradients of a set of parameters from ONE forward pass, and their normalization.

FIRM needs g_m = grad_theta L_m for every objective m (to form G^T G), where all L_m share the
same forward pass (same completions, same log-probs); only the per-sequence advantages differ.
Losses are described in the factored form every policy-gradient loss we use fits:

    L_m = sum_k sum_s  seq_weights[m, k, s] * sum_t token_terms[k, s, t]

``token_terms`` [K, S, T] are differentiable per-token terms shared by all objectives (e.g. the
clipped ratio term and the KL term), ``seq_weights`` [M, K, S] are constants (e.g. -A_m(s) / T).

Methods (all exact; pick with ``method=``):

- ``factored`` (default when possible): sequences never interact inside a causal LM, so the
  gradient reaching a layer's output for sequence s is the same for every objective up to the
  constant seq_weights[m, k, s]. One backward per shared term k (not per objective) gives the
  output gradients of every trainable Linear (LoRA A/B); the M weight gradients are then small
  matmuls over recorded inputs: grad W_m = sum_s w[m, s] * sum_t delta[s, t]^T x[s, t].
  Cost: forward + K backwards (K = 1 or 2) + O(M) tiny matmuls, whatever M is.
- ``autograd``: M calls of ``torch.autograd.grad(retain_graph=True)`` on the same graph.
- ``batched``: one ``autograd.grad(..., is_grads_batched=True)`` (vmap over objectives).

``factored`` needs every trainable parameter to be the weight or bias of exactly one
``nn.Linear`` whose inputs have the sequence as their first dimension (true for LoRA adapters
from peft on transformers models). ``auto`` uses ``factored`` when it applies and saves work
(K < M), else ``autograd``; both cost K or M backwards, so for M = 2 with K = 2 they tie and
autograd is slightly cheaper (bench/core.py).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Literal

import torch
from torch import nn

GradMethod = Literal["auto", "factored", "autograd", "batched"]
GradNorm = Literal["none", "l2"]

_TINY = 1e-12


def losses_from_terms(token_terms: torch.Tensor, seq_weights: torch.Tensor) -> torch.Tensor:
    """The M scalar losses L_m = sum_{k,s} w[m,k,s] sum_t terms[k,s,t] (for logging, baselines)."""
    _check_shapes(token_terms, seq_weights)
    return torch.einsum("mks,ks->m", seq_weights.to(token_terms.dtype), token_terms.sum(dim=2))


def per_objective_grads(
    losses: torch.Tensor,
    params: Sequence[torch.Tensor],
    batched: bool = False,
    retain_graph: bool = False,
) -> torch.Tensor:
    """[M, P] gradients of M scalar losses built on one graph (the generic, unfactored way)."""
    params = list(params)
    if batched:
        eye = torch.eye(losses.shape[0], dtype=losses.dtype, device=losses.device)
        grads = torch.autograd.grad(
            losses,
            params,
            grad_outputs=eye,
            is_grads_batched=True,
            allow_unused=True,
            retain_graph=retain_graph,
        )
        return torch.cat(
            [
                (g if g is not None else losses.new_zeros(losses.shape[0], *p.shape)).reshape(
                    losses.shape[0], -1
                )
                for g, p in zip(grads, params, strict=True)
            ],
            dim=1,
        )
    rows = []
    for m in range(losses.shape[0]):
        grads = torch.autograd.grad(
            losses[m],
            params,
            retain_graph=retain_graph or m < losses.shape[0] - 1,
            allow_unused=True,
        )
        rows.append(_flatten(grads, params))
    return torch.stack(rows)


class ObjectiveGradients:
    """Computes [M, P] per-objective gradients of ``params`` from one forward pass.

    Usage::

        og = ObjectiveGradients(model, params)          # params: the trainable LoRA tensors
        with og.capture():                               # records Linear inputs/outputs
            logp = token_logprobs(model, batch)          # one forward, [S, T]
        terms = torch.stack([ratio_term, kl_term])       # [K, S, T], built from logp
        grads = og.compute(terms, seq_weights)           # [M, P], flat in params order
    """

    def __init__(
        self,
        model: nn.Module,
        params: Sequence[nn.Parameter] | None = None,
        method: GradMethod = "auto",
    ) -> None:
        self.params = (
            list(params)
            if params is not None
            else [p for p in model.parameters() if p.requires_grad]
        )
        if not self.params:
            raise ValueError("ObjectiveGradients: no trainable parameters")
        self.numel = sum(p.numel() for p in self.params)
        owners = _linear_owners(model, self.params)
        if method == "factored" and owners is None:
            raise ValueError(
                "method='factored' needs every trainable parameter to be the weight or bias of "
                "exactly one nn.Linear (LoRA adapters); use method='autograd'"
            )
        if method not in ("auto", "factored", "autograd", "batched"):
            raise ValueError(f"method = {method!r}: must be auto, factored, autograd or batched")
        self.method: GradMethod = method
        self.can_factor = owners is not None
        # Gradients are float32 at least (bf16/fp16 LoRA params still get a float32 Gram).
        self.grad_dtype = torch.promote_types(self.params[0].dtype, torch.float32)
        self._slices: dict[int, tuple[int, int]] = {}
        offset = 0
        for p in self.params:
            self._slices[id(p)] = (offset, p.numel())
            offset += p.numel()
        self._owners = owners or {}
        self._records: list[tuple[nn.Linear, torch.Tensor, torch.Tensor]] = []

    @contextmanager
    def capture(self) -> Iterator[None]:
        """Record the inputs and outputs of the trainable Linears during the forward pass."""
        self._records.clear()
        if not (self.can_factor and self.method in ("auto", "factored")):
            yield
            return

        def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
            if torch.is_grad_enabled() and output.requires_grad:
                self._records.append((module, inputs[0], output))

        modules = {id(m): m for m, _ in self._owners.values()}
        handles = [m.register_forward_hook(hook) for m in modules.values()]
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()

    def compute(
        self, token_terms: torch.Tensor, seq_weights: torch.Tensor, retain_graph: bool = False
    ) -> torch.Tensor:
        """Return [M, P] gradients of L_m (see module docstring) w.r.t. ``params``.

        ``retain_graph=True`` keeps the autograd graph for a later backward of the same loss
        (the DeepSpeed backend backpropagates sum_m lambda_m L_m through its engine).
        """
        _check_shapes(token_terms, seq_weights)
        try:
            if self.resolve(token_terms.shape[0], seq_weights.shape[0]) == "factored":
                return self._factored(token_terms, seq_weights.detach(), retain_graph)
            losses = losses_from_terms(token_terms, seq_weights.detach())
            return per_objective_grads(
                losses, self.params, batched=self.method == "batched", retain_graph=retain_graph
            )
        finally:
            self._records.clear()

    def resolve(self, num_terms: int, num_objectives: int) -> GradMethod:
        """The method ``compute`` will use for K shared terms and M objectives."""
        if self.method != "auto":
            return self.method
        return "factored" if self.can_factor and num_terms < num_objectives else "autograd"

    def _factored(
        self, token_terms: torch.Tensor, seq_weights: torch.Tensor, retain_graph: bool = False
    ) -> torch.Tensor:
        """One backward per shared term; each trainable Linear's output gradient is turned into
        its M weight gradients by a tensor hook the moment the backward produces it, so only a
        few layer-output gradients are alive at a time (not all of them at once)."""
        if not self._records:
            raise RuntimeError(
                "no recorded activations: run the forward pass inside ObjectiveGradients.capture()"
            )
        num_terms, num_seqs = token_terms.shape[0], token_terms.shape[1]
        num_obj = seq_weights.shape[0]
        rows = token_terms.new_zeros(num_obj, self.numel, dtype=self.grad_dtype)
        current: dict[str, torch.Tensor] = {}

        def consume(module: nn.Linear, x: torch.Tensor, delta: torch.Tensor) -> None:
            if x.shape[0] != num_seqs or delta.shape[0] != num_seqs:
                raise RuntimeError(
                    f"a trainable Linear saw a batch of {x.shape[0]} rows, expected {num_seqs} "
                    "sequences first: use method='autograd' for this model"
                )
            weights = current["weights"]
            for name, grad in _linear_grads(module, x, delta, weights).items():
                start, size = self._slices[id(getattr(module, name))]
                rows[:, start : start + size] += grad.reshape(num_obj, -1)

        handles = [
            out.register_hook(lambda delta, m=module, x=x: consume(m, x, delta))
            for module, x, out in self._records
        ]
        try:
            for k in range(num_terms):
                current["weights"] = seq_weights[:, k, :].to(self.grad_dtype)
                torch.autograd.grad(
                    token_terms[k].sum(),
                    self.params,
                    retain_graph=retain_graph or k < num_terms - 1,
                    allow_unused=True,
                )
        finally:
            for handle in handles:
                handle.remove()
        return rows


def assign_flat_grad(params: Sequence[torch.Tensor], flat: torch.Tensor) -> None:
    """Write a flat [P] direction into ``p.grad`` so any torch optimizer can take the step."""
    offset = 0
    for p in params:
        chunk = flat[offset : offset + p.numel()].view_as(p)
        p.grad = chunk.to(device=p.device, dtype=p.dtype, copy=True)
        offset += p.numel()
    if offset != flat.numel():
        raise ValueError(f"direction has {flat.numel()} entries, parameters have {offset}")


def gram_matrix(grads: torch.Tensor) -> torch.Tensor:
    """G^T G of [M, P] gradients, accumulated in float64 (M x M inner products)."""
    g = grads.double()
    return g @ g.T


def gradient_scales(grads: torch.Tensor, mode: GradNorm = "none") -> torch.Tensor:
    """Per-objective float64 factors c_m (on the gradients' device) so that normalized gradients
    are c_m * g_m: ``l2``: 1 / ||g_m|| (a zero gradient stays zero); ``none``: 1.

    LibMTL's ``loss`` modes (1 / |L_m|) are deliberately absent: a policy-gradient surrogate
    with zero-mean advantages has |L_m| ~ 1e-8 whatever the objective, so they made lambda noise.
    """
    ones = torch.ones(grads.shape[0], dtype=torch.float64, device=grads.device)
    if mode == "none":
        return ones
    if mode != "l2":
        raise ValueError(f"grad_norm = {mode!r}: must be none or l2")
    return ones / grads.double().norm(dim=1).clamp_min(_TINY)


def normalize_gradients(grads: torch.Tensor, mode: GradNorm = "none") -> torch.Tensor:
    """[M, P] gradients scaled by :func:`gradient_scales`."""
    return grads * gradient_scales(grads, mode).to(grads.dtype)[:, None]


# ----------------------------------------------------------------------------------------------


def _check_shapes(token_terms: torch.Tensor, seq_weights: torch.Tensor) -> None:
    if token_terms.dim() != 3:
        raise ValueError(f"token_terms must be [K, S, T], got {tuple(token_terms.shape)}")
    if seq_weights.dim() != 3 or seq_weights.shape[1:] != token_terms.shape[:2]:
        raise ValueError(
            f"seq_weights must be [M, K, S] = [M, {token_terms.shape[0]}, "
            f"{token_terms.shape[1]}], got {tuple(seq_weights.shape)}"
        )


def _flatten(grads: Sequence[torch.Tensor | None], params: Sequence[torch.Tensor]) -> torch.Tensor:
    return torch.cat(
        [
            (g if g is not None else torch.zeros_like(p)).reshape(-1)
            for g, p in zip(grads, params, strict=True)
        ]
    )


def _linear_owners(
    model: nn.Module, params: Sequence[torch.Tensor]
) -> dict[int, tuple[nn.Linear, str]] | None:
    """Map each param to its (Linear, 'weight' | 'bias'), or None if any is not that simple."""
    wanted = {id(p) for p in params}
    owners: dict[int, tuple[nn.Linear, str]] = {}
    for module in model.modules():
        for name, p in module._parameters.items():
            if p is None or id(p) not in wanted:
                continue
            if id(p) in owners or type(module) is not nn.Linear:
                return None  # shared, or owned by something we cannot factor
            owners[id(p)] = (module, name)
    return owners if len(owners) == len(wanted) else None


def _linear_grads(
    module: nn.Linear, x: torch.Tensor, delta: torch.Tensor, weights: torch.Tensor
) -> dict[str, torch.Tensor]:
    """Per-objective grads of a Linear's weight [M, out, in] (and bias [M, out]).

    x [S, ..., in], delta [S, ..., out] = dL/d(output) of the shared term, weights [M, S].
    """
    num_obj, num_seqs = weights.shape
    x = x.detach().reshape(num_seqs, -1, x.shape[-1]).to(weights.dtype)
    delta = delta.reshape(num_seqs, -1, delta.shape[-1]).to(weights.dtype)
    grads: dict[str, torch.Tensor] = {}
    if module.weight.requires_grad:
        n_tokens = num_seqs * x.shape[1]
        if x.shape[-1] <= delta.shape[-1]:  # scale the thinner of the two by the weights
            scaled = (weights[:, :, None, None] * x[None]).reshape(num_obj, n_tokens, -1)
            grads["weight"] = torch.matmul(delta.reshape(n_tokens, -1).T, scaled)
        else:
            scaled = (weights[:, :, None, None] * delta[None]).reshape(num_obj, n_tokens, -1)
            grads["weight"] = torch.matmul(scaled.transpose(1, 2), x.reshape(n_tokens, -1))
    if module.bias is not None and module.bias.requires_grad:
        grads["bias"] = weights @ delta.sum(dim=1)
    return grads
