"""Running means over batches, weighted by the number of values each batch contributes."""

from __future__ import annotations

import torch


class MeanMeter:
    """Token-weighted running mean of a per-token quantity over batches."""

    def __init__(self) -> None:
        self.total, self.count = 0.0, 0

    def update(self, per_token: torch.Tensor) -> None:
        self.total += per_token.detach().double().sum().item()
        self.count += per_token.numel()

    @property
    def mean(self) -> float:
        return self.total / self.count if self.count else float("nan")
