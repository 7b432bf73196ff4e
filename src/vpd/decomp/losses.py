"""The loss terms of VPD as pure functions (all computed in fp32).

total = c_faith * faithfulness + c_stoch * stochastic_recon + c_adv * adversarial_recon
        + c_imp * importance_minimality (fused with frequency minimality).
"""

from __future__ import annotations

import math
from typing import Iterable, Mapping

import torch

from vpd.decomp import fused
from vpd.utils.divergence import KLTarget


def faithfulness_loss(deltas: Iterable[torch.Tensor]) -> torch.Tensor:
    """Mean of Δ^2 over all decomposed parameters (all matrices pooled)."""
    total, n = None, 0
    for d in deltas:
        s = d.float().pow(2).sum()
        total = s if total is None else total + s
        n += d.numel()
    return total / n


def anneal_p(step: int, total_steps: int, p_start: float, p_end: float) -> float:
    """Linear anneal of the minimality exponent from p_start (step 0) to p_end (last step)."""
    t = min(max(step / max(total_steps - 1, 1), 0.0), 1.0)
    return p_start + (p_end - p_start) * t


class _PowSum(torch.autograd.Function):
    """s_c = Σ_positions (g + eps)^p over a [N, C] tensor, with the backward reusing the forward
    power (d/dg = p (g+eps)^p / (g+eps)) instead of a second fractional pow over [N, C]."""

    @staticmethod
    def forward(ctx, g: torch.Tensor, p: float, eps: float) -> torch.Tensor:
        ctx.p = p
        if fused.enabled():  # one kernel each way; the backward recomputes the power
            pe = (fused.scalar(p, g), fused.scalar(eps, g))
            ctx.save_for_backward(g, *pe)
            ctx.fused = True
            return fused.pow_sum(g, *pe)
        ctx.fused = False
        base = g + eps
        y = base.pow(p)
        ctx.save_for_backward(base, y)
        return y.sum(0)  # [C]

    @staticmethod
    def backward(ctx, grad_s: torch.Tensor):
        if ctx.fused:
            g, p, eps = ctx.saved_tensors
            return fused.pow_sum_backward(g, p, eps, grad_s.contiguous()), None, None
        base, y = ctx.saved_tensors
        return (y / base).mul_(grad_s * ctx.p), None, None


def importance_minimality_loss(
    ci_upper: Mapping[str, torch.Tensor], p: float, beta: float, eps: float = 1e-12, world_size: int = 1
) -> torch.Tensor:
    """Σ_l Σ_c [ s_c/N + β (s_c/N) log2(1 + s_c · world_size) ],  s_c = Σ_tokens (g_upper + eps)^p.

    ci_upper: name -> [..., C]; N is the number of positions (product of the leading dims). The
    log2 term is the frequency penalty: it grows superlinearly with how often c is used.
    """
    total = None
    for g in ci_upper.values():
        g = g.float()
        s = _PowSum.apply(g.reshape(-1, g.shape[-1]), p, eps)  # [C]
        mean = s / (g.numel() // g.shape[-1])
        term = (mean + beta * mean * torch.log2(1 + s * world_size)).sum()
        total = term if total is None else total + term
    return total


def mse_output_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared error over all output elements (non-LM targets such as toy models)."""
    return (pred.float() - target.detach().float()).pow(2).mean()


def output_loss_fn(kind: str, target: torch.Tensor):
    """pred -> loss against a fixed target, with the target-side work done once."""
    if kind == "kl":
        return KLTarget(target)
    if kind == "mse":
        return lambda pred: mse_output_loss(pred, target)
    raise ValueError(f"output_loss must be 'kl' or 'mse', got {kind!r}")


def cosine_lr(step: int, total: int, lr: float, final_frac: float) -> float:
    """Half-cosine from lr (step 0) to lr * final_frac (last step)."""
    if total <= 1:
        return lr
    t = min(max(step / (total - 1), 0.0), 1.0)
    final = lr * final_frac
    return final + 0.5 * (lr - final) * (1 + math.cos(math.pi * t))


def warmup_lr(step: int, total: int, lr: float, warmup_frac: float) -> float:
    """Linear warm-up from 0 over warmup_frac * total steps, then constant."""
    w = int(warmup_frac * total)
    return lr * step / w if w > 0 and step < w else lr
