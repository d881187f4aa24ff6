"""centralized: the non-federated reference of FIRM's in-client update.

One client holding all the training data (``federation.num_clients: 1``, checked at load
time) runs exactly FIRM's local update with FIRM's options (beta, beta_scale, grad_norm), and
the "server" takes its adapter (FedAvg of one, server_lr applied). It is what FIRM would do
without federation: comparing the two isolates the cost of splitting the data, nothing else.
"""

from __future__ import annotations

from firm_ray.algorithms.base import register
from firm_ray.algorithms.firm import Firm


@register("centralized", label="centralized FIRM")
class Centralized(Firm):
    """FIRM's client solver on all data, one client (no federation)."""

    min_objectives = 1
