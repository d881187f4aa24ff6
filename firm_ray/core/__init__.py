"""Pure math of FIRM: no Ray, DeepSpeed, W&B or file IO (torch, numpy and moocore only).

- :func:`firm_weights` solves the in-client regularized multi-gradient problem;
- :mod:`firm_ray.core.gradients`: per-objective gradients from one forward pass, normalization;
- :mod:`firm_ray.core.aggregation`: streaming weighted averaging of adapter state dicts;
- :mod:`firm_ray.core.metrics`: client disagreement, parameter drift, smoothness;
- :mod:`firm_ray.core.pareto`: Pareto fronts and hypervolume of reward vectors.
"""

from firm_ray.core.solver import effective_beta, firm_objective, firm_weights, kkt_residual

__all__ = ["effective_beta", "firm_objective", "firm_weights", "kkt_residual"]
