"""Two ``python`` rewards for the GPU smoke test: one scored in plain Python on the CPU, one with
a torch op on a device, so a round exercises both places a user's reward can run.

Both vary with the completion's words (the built-in world's completions differ in length and
wording), so advantages and gradients are not zero. ``DEVICES_SEEN`` records where the device
reward computed, so the test can check it really ran there.
"""

from __future__ import annotations

import torch

VOWELS = "aeiouAEIOU"
DEVICES_SEEN: list[str] = []


def distinct_word_share(prompts: list[str], completions: list[str]) -> list[float]:
    """Distinct words / (words + 1): plain Python floats, computed on the CPU."""
    return [len(set(c.split())) / (len(c.split()) + 1) for c in completions]


def vowel_share(prompts: list[str], completions: list[str], device: str = "cpu") -> torch.Tensor:
    """Share of vowels among a completion's characters, computed on ``device``; returns the
    tensor where it was computed (the reward guard moves scores to the CPU)."""
    width = max([1, *(len(c) for c in completions)])
    codes = torch.zeros(len(completions), width, dtype=torch.int64)
    for i, text in enumerate(completions):
        if text:
            codes[i, : len(text)] = torch.tensor([ord(ch) for ch in text])
    codes = codes.to(device)
    vowels = torch.tensor([ord(ch) for ch in VOWELS], device=codes.device)
    present = (codes != 0).sum(dim=1).clamp_min(1)
    share = torch.isin(codes, vowels).sum(dim=1).float() / present
    DEVICES_SEEN.append(share.device.type)
    return share
