"""Client optimizers as functions over stacked flat parameters ``[K, d]``.

The same code steps one client (K = 1, the sequential trainer) or a whole cohort (the
vectorized executor). ``active`` ([K] bool) freezes clients whose schedule has run out
(padded steps), so a padded step leaves parameters and optimizer state exactly as they
were. The update rules match ``torch.optim.SGD`` (momentum, dampening 0, Nesterov, L2
weight decay) and ``torch.optim.Adam`` (L2 weight decay, bias correction), plus the
FedProx proximal term mu * (w - w_global) added to the gradient.

References: Kingma & Ba, "Adam", ICLR 2015; Li et al., "Federated Optimization in
Heterogeneous Networks" (FedProx), MLSys 2020.
"""

from __future__ import annotations

import torch

from fedloom.records import TrainPlan

State = dict[str, torch.Tensor]


def init_state(plan: TrainPlan, params: torch.Tensor) -> State:
    """Zeroed optimizer state for stacked parameters ``[K, d]``."""
    k = params.shape[0]
    if plan.optimizer == "adam":
        return {
            "m": torch.zeros_like(params),
            "v": torch.zeros_like(params),
            "t": torch.zeros((k, 1), dtype=params.dtype, device=params.device),
        }
    if plan.momentum:
        return {"buf": torch.zeros_like(params)}
    return {}


@torch.no_grad()
def step(
    plan: TrainPlan,
    params: torch.Tensor,
    grads: torch.Tensor,
    state: State,
    anchor: torch.Tensor | None = None,
    active: torch.Tensor | None = None,
) -> None:
    """One in-place optimizer step on ``params`` ([K, d]); ``grads`` may be overwritten.

    ``anchor`` (the global model, [d] or [K, d]) is needed when ``plan.prox_mu > 0``.
    """
    g = grads
    if plan.weight_decay:
        g.add_(params, alpha=plan.weight_decay)
    if plan.prox_mu:
        assert anchor is not None, "FedProx needs the global model as anchor"
        g.add_(params - anchor, alpha=plan.prox_mu)
    gate = None if active is None else active.to(params.dtype).unsqueeze(1)
    if plan.optimizer == "adam":
        _adam(plan, params, g, state, gate)
        return
    if plan.momentum:
        buf = state["buf"]
        new_buf = buf * plan.momentum + g
        if gate is None:
            buf.copy_(new_buf)
        else:
            torch.where(gate.bool(), new_buf, buf, out=buf)
        g = g.add_(buf, alpha=plan.momentum) if plan.nesterov else buf
    if gate is None:
        params.add_(g, alpha=-plan.lr)
    else:
        params.sub_(g * gate, alpha=plan.lr)


def _adam(
    plan: TrainPlan, params: torch.Tensor, g: torch.Tensor, state: State, gate: torch.Tensor | None
) -> None:
    b1, b2 = plan.betas
    m, v, t = state["m"], state["v"], state["t"]
    if gate is None:
        t.add_(1)
        m.mul_(b1).add_(g, alpha=1 - b1)
        v.mul_(b2).addcmul_(g, g, value=1 - b2)
    else:
        active = gate.bool()
        t.add_(gate)
        torch.where(active, m * b1 + g * (1 - b1), m, out=m)
        torch.where(active, v * b2 + g * g * (1 - b2), v, out=v)
    # clients that have not stepped yet have t = 0: use 1 to avoid 0/0 (they are gated)
    tt = t.clamp(min=1)
    bias1 = 1 - b1**tt
    bias2 = 1 - b2**tt
    denom = (v.sqrt() / bias2.sqrt()).add_(plan.eps)
    update = m / denom * (plan.lr / bias1)
    if gate is not None:
        update.mul_(gate)
    params.sub_(update)
