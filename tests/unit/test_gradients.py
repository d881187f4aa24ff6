"""Per-objective gradients: the factored one-backward method equals plain autograd exactly."""

from __future__ import annotations

import pytest
import torch
from peft import LoraConfig, get_peft_model
from torch import nn
from transformers import GPT2Config, GPT2LMHeadModel

from firm_ray.core.gradients import (
    ObjectiveGradients,
    assign_flat_grad,
    gradient_scales,
    gram_matrix,
    losses_from_terms,
    normalize_gradients,
    per_objective_grads,
)


def tiny_lora_gpt2(dropout: float = 0.0, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    config = GPT2Config(vocab_size=64, n_positions=32, n_embd=32, n_layer=2, n_head=2)
    model = GPT2LMHeadModel(config)
    lora = LoraConfig(
        r=4,
        lora_alpha=8,
        lora_dropout=dropout,
        target_modules=["c_attn", "c_proj", "c_fc"],
        fan_in_fan_out=True,
    )
    model = get_peft_model(model, lora)
    for name, p in model.named_parameters():  # non-zero B so every LoRA grad is non-trivial
        if "lora_B" in name:
            nn.init.normal_(p, std=0.1)
    return model


def grpo_terms(model: nn.Module, ids: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """[K=2, S, T]: the PPO ratio term and the k3 KL term, both per token."""
    logits = model(input_ids=ids).logits[:, :-1]
    logp = torch.log_softmax(logits, -1).gather(-1, ids[:, 1:, None]).squeeze(-1)
    ratio = torch.exp(logp - logp.detach() + 0.05 * torch.randn_like(logp))
    log_r = ref_logp - logp
    kl = torch.exp(log_r) - log_r - 1
    return torch.stack([ratio, kl])


@pytest.mark.parametrize("num_obj", [1, 2, 3, 5])
def test_factored_equals_autograd_and_batched(num_obj: int) -> None:
    model = tiny_lora_gpt2()
    params = [p for p in model.parameters() if p.requires_grad]
    ids = torch.randint(0, 64, (6, 10), generator=torch.Generator().manual_seed(1))
    ref_logp = -torch.rand(6, 9) * 3
    weights = torch.randn(num_obj, 2, 6)
    results = {}
    for method in ("factored", "autograd", "batched"):
        og = ObjectiveGradients(model, params, method=method)
        torch.manual_seed(5)
        with og.capture():
            terms = grpo_terms(model, ids, ref_logp)
        results[method] = og.compute(terms, weights)
    assert results["factored"].shape == (num_obj, sum(p.numel() for p in params))
    assert results["factored"].abs().sum() > 0
    scale = results["autograd"].abs().max()
    for method in ("factored", "batched"):
        assert torch.allclose(results[method], results["autograd"], atol=1e-5 * scale, rtol=1e-4)


def test_auto_picks_factored_for_lora_and_autograd_otherwise() -> None:
    model = tiny_lora_gpt2()
    og = ObjectiveGradients(model)
    assert og.resolve(num_terms=1, num_objectives=2) == "factored"
    assert og.resolve(num_terms=2, num_objectives=3) == "factored"
    assert og.resolve(num_terms=2, num_objectives=2) == "autograd"  # no backward saved
    plain = GPT2LMHeadModel(GPT2Config(vocab_size=16, n_embd=8, n_layer=1, n_head=1))
    # embeddings, layer norms and a tied head cannot be factored
    assert ObjectiveGradients(plain).resolve(1, 4) == "autograd"
    with pytest.raises(ValueError, match="factored"):
        ObjectiveGradients(plain, method="factored")


def test_dropout_is_respected() -> None:
    """The recorded Linear input is the post-dropout one, so factored stays exact in training."""
    model = tiny_lora_gpt2(dropout=0.3)
    model.train()
    ids = torch.randint(0, 64, (4, 8), generator=torch.Generator().manual_seed(2))
    weights = torch.randn(2, 2, 4)
    out = {}
    for method in ("factored", "autograd"):
        og = ObjectiveGradients(model, method=method)
        torch.manual_seed(9)
        with og.capture():
            terms = grpo_terms(model, ids, -torch.ones(4, 7))
        out[method] = og.compute(terms, weights)
    assert torch.allclose(out["factored"], out["autograd"], atol=1e-5, rtol=1e-4)


def test_requires_capture() -> None:
    model = tiny_lora_gpt2()
    og = ObjectiveGradients(model)
    terms = grpo_terms(model, torch.randint(0, 64, (2, 5)), -torch.ones(2, 4))
    with pytest.raises(RuntimeError, match="capture"):
        og.compute(terms, torch.ones(3, 2, 2))
    with pytest.raises(ValueError, match="seq_weights"):
        og.compute(terms, torch.ones(2, 2, 3))


def test_losses_and_direction_helpers() -> None:
    terms = torch.arange(12.0).reshape(2, 2, 3)
    weights = torch.tensor([[[1.0, 0.0], [0.0, 0.0]], [[0.0, 1.0], [1.0, 1.0]]])
    assert losses_from_terms(terms, weights).tolist() == [3.0, 12.0 + 21.0 + 30.0]
    x = torch.tensor([1.0, 2.0], requires_grad=True)
    losses = torch.stack([x.sum(), (x**2).sum()])
    grads = per_objective_grads(losses, [x])
    assert grads.tolist() == [[1.0, 1.0], [2.0, 4.0]]
    assert gram_matrix(grads).tolist() == [[2.0, 6.0], [6.0, 20.0]]
    params = [nn.Parameter(torch.zeros(2, 2)), nn.Parameter(torch.zeros(3))]
    assign_flat_grad(params, torch.arange(7.0))
    assert params[0].grad.tolist() == [[0.0, 1.0], [2.0, 3.0]]
    assert params[1].grad.tolist() == [4.0, 5.0, 6.0]
    with pytest.raises(ValueError, match="entries"):
        assign_flat_grad(params, torch.arange(8.0))


def test_gradient_normalization_modes() -> None:
    grads = torch.tensor([[3.0, 4.0], [0.0, 0.0], [1.0, 0.0]])
    assert torch.allclose(normalize_gradients(grads, "none"), grads)
    l2 = normalize_gradients(grads, "l2")
    assert torch.allclose(l2[0].norm(), torch.tensor(1.0)) and l2[1].abs().sum() == 0
    # 1/|L_m| modes are gone: a policy-gradient surrogate with zero-mean advantages is ~0
    for removed in ("loss", "loss+l2", "max"):
        with pytest.raises(ValueError, match="grad_norm"):
            gradient_scales(grads, removed)  # type: ignore[arg-type]


def test_loss_normalization_is_rejected_by_the_config() -> None:
    from firm_ray.config import ConfigError, load_config

    with pytest.raises(ConfigError, match=r"algorithm.grad_norm = 'loss': must be one of none, l2"):
        load_config(None, ["algorithm.grad_norm=loss"])
