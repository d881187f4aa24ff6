"""One client's local training, no Ray: usable in pytest, a notebook, or inside a Ray actor."""

from firm_ray.trainer.local import LocalTrainer, derive_seed

__all__ = ["LocalTrainer", "derive_seed"]
