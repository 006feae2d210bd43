"""A linear head that grows with the classes seen: :class:`GrowingHead` (linear probe, fine-tuning)."""
from __future__ import annotations

from typing import Optional

import torch
from avalanche.models import DynamicModule
from torch import nn


class GrowingHead(DynamicModule):
    """A linear layer with one output row per class seen so far (columns = labels 0..n-1).

    Args:
        in_features: input width.
        init: ``[n_classes, in_features]`` starting rows for every class of the benchmark
            (e.g. text features), or None to start new rows at zero.

    At each experience the rows of its new classes are appended (from ``init``, or zeros) with a
    zero bias; the weight parameter is replaced by a larger one under the same name, which
    Avalanche's optimizer update recognises.
    """

    def __init__(self, in_features: int, init: Optional[torch.Tensor] = None):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(0, in_features))
        self.bias = nn.Parameter(torch.zeros(0))
        self.register_buffer("init", None if init is None else init.detach().clone())

    @property
    def n_classes(self) -> int:
        return int(self.weight.shape[0])

    @torch.no_grad()
    def grow(self, n_classes: int) -> None:
        """Append rows up to ``n_classes`` (nothing happens when there are that many already)."""
        old = self.n_classes
        if n_classes <= old:
            return
        w = self.weight
        rows = (self.init[old:n_classes].to(w) if self.init is not None
                else w.new_zeros(n_classes - old, w.shape[1]))
        self.weight = nn.Parameter(torch.cat([w.detach(), rows]))
        self.bias = nn.Parameter(torch.cat([self.bias.detach(), self.bias.new_zeros(n_classes - old)]))

    def adaptation(self, experience) -> None:
        """Avalanche hook: grow to cover the experience's classes."""
        self.grow(max(int(c) for c in experience.classes_in_this_experience) + 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.weight.t() + self.bias
