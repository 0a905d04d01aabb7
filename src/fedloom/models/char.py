"""A small character model for next-character prediction (LEAF Shakespeare).

An embedding of the token ids ``[n, T]`` feeds GRU layers built from ``nn.Linear``
maps with PyTorch's gate equations and initialization. ``torch.nn.GRU`` runs one fused
``aten::gru`` op that has no ``vmap`` batching rule: a cohort's gradients go through
(autograd decomposes it) but a vectorized forward pass fails, and the vectorized
executor needs both. These layers are plain matrix products, so a cohort trains and
evaluates under ``torch.func.vmap`` of ``functional_call``. Input projections of all
time steps are one matrix product; only the recurrence loops over time.

References: Cho et al., "Learning Phrase Representations using RNN Encoder-Decoder"
(2014) for the GRU; Caldas et al., "LEAF: A Benchmark for Federated Settings" (2018)
for the Shakespeare task (embedding 8, recurrent layers, next-character target).
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import pairwise

import torch
from torch import nn


class GRULayer(nn.Module):
    """One GRU layer, ``[..., T, in_features] -> [..., T, hidden]`` from a zero state;
    the same function as ``nn.GRU`` given its weights (``input`` holds ``weight_ih``,
    ``hidden`` holds ``weight_hh``, gates in the order reset, update, new)."""

    def __init__(self, in_features: int, hidden: int) -> None:
        super().__init__()
        self.width = hidden
        self.input = nn.Linear(in_features, 3 * hidden)
        self.hidden = nn.Linear(hidden, 3 * hidden)
        bound = hidden**-0.5  # nn.GRU's initialization
        for p in self.parameters():
            nn.init.uniform_(p, -bound, bound)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gates_x = self.input(x)
        h = gates_x.new_zeros((*gates_x.shape[:-2], self.width))
        states = []
        # one unbind, not an index per step: each index's backward would build a
        # full-size zero gradient, making the backward quadratic in the length
        for step in gates_x.unbind(-2):
            xr, xz, xn = step.chunk(3, -1)
            hr, hz, hn = self.hidden(h).chunk(3, -1)
            r = torch.sigmoid(xr + hr)
            z = torch.sigmoid(xz + hz)
            n = torch.tanh(xn + r * hn)
            h = n + z * (h - n)  # (1 - z) * n + z * h
            states.append(h)
        return torch.stack(states, -2)


class CharGRU(nn.Module):
    """Embedding, GRU layers of widths ``hidden``, a linear map to ``vocab`` logits.

    Input: token ids ``[n, T]`` (int64). ``per_token=False``: the logits after the last
    position ``[n, vocab]`` (the next character); ``per_token=True``: the logits after
    every position ``[n, T, vocab]`` (token targets ``[n, T]``).
    """

    def __init__(
        self,
        vocab: int,
        hidden: Sequence[int] = (128,),
        embed_dim: int = 8,
        per_token: bool = False,
    ) -> None:
        super().__init__()
        if not hidden:
            raise ValueError("a CharGRU needs at least one GRU layer")
        self.per_token = per_token
        self.embed = nn.Embedding(vocab, embed_dim)
        widths = [embed_dim, *hidden]
        self.layers = nn.ModuleList(GRULayer(a, b) for a, b in pairwise(widths))
        self.head = nn.Linear(widths[-1], vocab)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(x)
        for layer in self.layers:
            h = layer(h)
        return self.head(h if self.per_token else h[..., -1, :])
