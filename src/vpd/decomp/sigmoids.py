"""The two hard-sigmoid readouts of the causal-importance pre-activation z.

- `lower_leaky` (used to build masks): forward clamp(z, 0, 1). Backward is straight-through on
  (0, 1], zero above 1, and for z <= 0 passes `alpha * grad` only when that gradient would raise
  the output (grad < 0 under gradient descent), else 0 — a dead subcomponent can come back to
  life, but nothing pushes an already-zero CI further down.
- `upper_leaky` (used by the minimality losses): clamp(z, 0, 1) below 1 and 1 + alpha (z - 1)
  above 1, so large pre-activations keep a small penalty gradient (0 below 0, 1 on [0, 1],
  alpha above 1).
"""

from __future__ import annotations

import torch

from vpd.decomp import fused


class _LowerLeakyHardSigmoid(torch.autograd.Function):
    @staticmethod
    def forward(ctx, z: torch.Tensor, alpha: float) -> torch.Tensor:
        ctx.save_for_backward(z)
        ctx.alpha = alpha
        return z.clamp(0.0, 1.0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (z,) = ctx.saved_tensors
        # One fused factor instead of nested wheres: 1 on (0, 1], 0 above 1, and for z <= 0
        # alpha where grad < 0 (a gradient that would raise the output), else 0.
        factor = torch.where(z > 0, (z <= 1).to(grad.dtype), (grad < 0).to(grad.dtype) * ctx.alpha)
        return grad * factor, None


def lower_leaky(z: torch.Tensor, alpha: float = 0.01) -> torch.Tensor:
    """clamp(z, 0, 1) with the straight-through/leaky backward described in the module docstring."""
    return _LowerLeakyHardSigmoid.apply(z, alpha)


class _UpperLeakyHardSigmoid(torch.autograd.Function):
    """clamp(z, 0, 1) + alpha * relu(z - 1), with its exact gradient in one fused factor (the
    autograd graph of the where/clamp form costs several extra passes over [B, T, ΣC])."""

    @staticmethod
    def forward(ctx, z: torch.Tensor, alpha: float) -> torch.Tensor:
        ctx.save_for_backward(z)
        ctx.alpha = alpha
        return z.clamp(0.0, 1.0).add_((z - 1).clamp_(min=0.0), alpha=alpha)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (z,) = ctx.saved_tensors
        factor = torch.where(z > 1, ctx.alpha, (z >= 0).to(grad.dtype))
        return grad * factor, None


def upper_leaky(z: torch.Tensor, alpha: float = 0.01) -> torch.Tensor:
    """clamp(z, 0, 1) below 1, 1 + alpha (z - 1) above 1 (gradient 0, 1, alpha in the three regions)."""
    return _UpperLeakyHardSigmoid.apply(z, alpha)


class _Readouts(torch.autograd.Function):
    """Both readouts of one z at once, forward and backward each one fused kernel (fused.py);
    the same values and gradients as `lower_leaky(z)`, `upper_leaky(z)`."""

    @staticmethod
    def forward(ctx, z: torch.Tensor, alpha: float):
        a = fused.scalar(alpha, z)
        ctx.save_for_backward(z, a)
        return fused.readouts_forward(z, a)

    @staticmethod
    def backward(ctx, grad_lower: torch.Tensor, grad_upper: torch.Tensor):
        z, a = ctx.saved_tensors
        return fused.readouts_backward(z, grad_lower.contiguous(), grad_upper.contiguous(), a), None


def lower_and_upper_leaky(z: torch.Tensor, alpha: float = 0.01) -> tuple[torch.Tensor, torch.Tensor]:
    """(lower_leaky(z), upper_leaky(z)) with one fused forward and one fused backward."""
    return _Readouts.apply(z, alpha)
