"""firm_ray: federated, multi-objective RLHF alignment of LLMs with FIRM, orchestrated by Ray.

FIRM (Federated In-client Regularized Multi-objective alignment, arXiv 2511.16992): each client
balances several rewards by solving a regularized min-norm problem over its per-objective
gradients and uploads one LoRA adapter; the server averages adapters. See docs/ARCHITECTURE.md.
"""

__version__ = "0.1.0"


def __getattr__(name: str):  # lazy: `import firm_ray` must not import Ray or torch
    if name == "run":
        from firm_ray.runtime.loop import run

        return run
    raise AttributeError(f"module 'firm_ray' has no attribute {name!r}")
