"""Rank-1 LoRA baseline of the emoticon edit: W' = W + b a^T on one matrix, trained by gradient descent.

Loss on a batch of windows: cross-entropy of the target token ('o') at the marked (firing)
positions plus lambda times KL(target || LoRA model) at every other position of the windows.
The LoRA is attached with a temporary forward hook (y += (x . a) b), so the target's weights are
never written during training; `delta()` gives the trained weight update for evaluation.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from typing import Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F

from vpd.utils.divergence import KLTarget


class RankOneLoRA(nn.Module):
    """a [d_in] ~ N(0, 1/d_in), b [d_out] = 0 at init (so the update starts at zero)."""

    def __init__(self, d_in: int, d_out: int, generator: torch.Generator | None = None):
        super().__init__()
        self.a = nn.Parameter(torch.randn(d_in, generator=generator) / math.sqrt(d_in))
        self.b = nn.Parameter(torch.zeros(d_out))

    def delta(self) -> torch.Tensor:
        """The weight update b a^T  [d_out, d_in]."""
        return torch.outer(self.b, self.a).detach()

    @contextlib.contextmanager
    def attached(self, linear: nn.Linear) -> Iterator[None]:
        def hook(module, inputs, output):
            x = inputs[0]
            return output + (x.to(self.a.dtype) @ self.a)[..., None] * self.b  # [..., d_out]

        handle = linear.register_forward_hook(hook)
        try:
            yield
        finally:
            handle.remove()


def edit_loss(logits: torch.Tensor, base: KLTarget, fire: torch.Tensor, target_id: int, lam: float):
    """(total, CE at firing positions, KL elsewhere) for logits [B, T, V], the unedited model's
    distribution `base` over the same [B, T] positions and fire [B, T] bool."""
    log_q = F.log_softmax(logits.float(), dim=-1)
    ce = -log_q[..., target_id][fire].mean() if fire.any() else logits.new_zeros(())
    rest = ~fire
    kl = base.per_token_log_q(log_q)[rest].mean() if rest.any() else logits.new_zeros(())
    return ce + lam * kl, ce, kl


@dataclass
class LoRAResult:
    lora: RankOneLoRA
    losses: list[float] = field(default_factory=list)  # total loss per step
    ce: list[float] = field(default_factory=list)
    kl: list[float] = field(default_factory=list)


def train_lora(
    model: nn.Module,
    matrix: str,
    windows: torch.Tensor,
    fire: torch.Tensor,
    target_id: int,
    lam: float,
    *,
    steps: int,
    lr: float,
    batch_size: int,
    seed: int = 0,
) -> LoRAResult:
    """Train a rank-1 LoRA on `model`'s nn.Linear `matrix` (weights untouched).

    windows [n, T] token ids, fire [n, T] bool: CE(target_id) where fire, lam * KL elsewhere.
    Full batch when n <= batch_size, else seeded random minibatches.
    """
    linear = dict(model.named_modules()).get(matrix)
    if not isinstance(linear, nn.Linear):
        raise ValueError(f"{matrix!r} is not an nn.Linear of the model")
    if windows.shape != fire.shape:
        raise ValueError(f"windows {tuple(windows.shape)} and fire {tuple(fire.shape)} must have the same shape")
    device = linear.weight.device
    gen = torch.Generator().manual_seed(int(seed))
    d_out, d_in = linear.weight.shape
    lora = RankOneLoRA(d_in, d_out, gen).to(device)
    opt = torch.optim.Adam(lora.parameters(), lr=lr)
    was_training = model.training
    model.eval()
    requires = [p.requires_grad for p in model.parameters()]
    model.requires_grad_(False)
    windows, fire = windows.to(device), fire.to(device)
    with torch.no_grad():  # the unedited distribution, prepared once for every step's KL
        base = KLTarget(torch.cat([model(windows[i:i + batch_size]) for i in range(0, len(windows), batch_size)]))
    result = LoRAResult(lora)
    try:
        for _ in range(steps):
            if len(windows) <= batch_size:
                idx = torch.arange(len(windows), device=device)
            else:
                idx = torch.randperm(len(windows), generator=gen)[:batch_size].to(device)
            with lora.attached(linear):
                logits = model(windows[idx])
            loss, ce, kl = edit_loss(logits, base[idx], fire[idx], target_id, lam)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            result.losses.append(loss.item())
            result.ce.append(ce.item())
            result.kl.append(kl.item())
    finally:
        for p, r in zip(model.parameters(), requires):
            p.requires_grad_(r)
        model.train(was_training)
    return result
