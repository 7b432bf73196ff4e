"""Fused elementwise kernels for the per-step work over the flat [..., ΣC] tensors.

With fusion on, the masked forward of the whole target is compiled too (api.py), which fuses
the target's own elementwise work (norms, RoPE, GELU, softmax) with the masking around each
matrix.

A decomposition step does a few dozen elementwise passes over tensors of B·T·ΣC values (5.8M
at the benchmark shape): the two CI readouts and their backward, the masks built from CI and
sources, the minimality power sum, the adversary's Adam update. In eager PyTorch each is
several memory-bound kernels, and `torch.where`, comparisons and bool casts are about 10x
slower than a multiply on CPU. Each function here is the whole computation of one such group,
written as plain torch ops; with fusion on, `torch.compile` turns each into one kernel (about
10x faster for the readout backward on this CPU), with fusion off they run eagerly. Both paths
compute the same formulas (tests compare them); only float rounding of sums may differ.

Scalars that change between steps (p, lr, bias corrections) are passed as 0-dim tensors so a
compiled kernel is reused instead of recompiled per value. Fusion is a process-wide switch
(`set_enabled`), turned on by the trainer from `decompose.fused_kernels` for runs of at least
`decompose.fused_kernels_min_steps` steps; a compile failure
(e.g. no C++ compiler) logs a warning and falls back to eager for the rest of the process.
"""

from __future__ import annotations

import logging
from typing import Callable

import torch

log = logging.getLogger("vpd")

_enabled = False
_failed = False


def set_enabled(on: bool) -> None:
    """Turn fused (compiled) kernels on or off for this process."""
    global _enabled
    _enabled = bool(on)


def enabled() -> bool:
    return _enabled and not _failed


def scalar(x: float, like: torch.Tensor) -> torch.Tensor:
    """A 0-dim fp32 tensor on `like`'s device (a kernel argument that may change every step)."""
    return torch.tensor(float(x), dtype=torch.float32, device=like.device)


class _Kernel:
    """`fn` run eagerly, or compiled on first use while fusion is enabled.

    fullgraph=False allows graph breaks (for whole model forwards, api.py)."""

    def __init__(self, fn: Callable, fullgraph: bool = True):
        self.fn, self.fullgraph = fn, fullgraph
        self.compiled = None
        self.failed = False
        self.__name__ = getattr(fn, "__name__", "kernel")

    def __call__(self, *args):
        global _failed
        if not enabled() or self.failed:
            return self.fn(*args)
        if self.compiled is None:
            self.compiled = torch.compile(self.fn, dynamic=False, fullgraph=self.fullgraph)
        try:
            return self.compiled(*args)
        except Exception as err:  # a missing compiler or an unsupported backend
            if self.fullgraph:
                _failed = True  # the small kernels share one compiler: all of them go eager
            self.failed = True
            log.warning("fused kernel %s could not be compiled (%s); running it eager from now on", self.__name__, err)
            return self.fn(*args)


def kernel(fn: Callable, fullgraph: bool = True) -> _Kernel:
    return _Kernel(fn, fullgraph)


# ---------------------------------------------------------------- CI readouts (sigmoids.py)
@kernel
def readouts_forward(z: torch.Tensor, alpha: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(lower-leaky, upper-leaky) of z: clamp(z, 0, 1) and clamp(z, 0, 1) + alpha relu(z - 1)."""
    lower = z.clamp(0.0, 1.0)
    return lower, lower + alpha * (z - 1.0).clamp(min=0.0)


@kernel
def readouts_backward(z: torch.Tensor, grad_lower: torch.Tensor, grad_upper: torch.Tensor,
                      alpha: torch.Tensor) -> torch.Tensor:
    """dL/dz from both readouts' gradients (the regions are documented in sigmoids.py)."""
    one, zero = torch.ones_like(z), torch.zeros_like(z)
    f_lower = torch.where(z > 0, torch.where(z <= 1, one, zero), torch.where(grad_lower < 0, alpha * one, zero))
    f_upper = torch.where(z > 1, alpha * one, torch.where(z >= 0, one, zero))
    return grad_lower * f_lower + grad_upper * f_upper


# ---------------------------------------------------------------- masks (masks.py, adversary.py)
@kernel
def source_mask(g: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """m = g + (1 - g) s."""
    return g + (1.0 - g) * s


@kernel
def source_mask_backward(g: torch.Tensor, s: torch.Tensor, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(dL/dg, dL/ds) of m = g + (1 - g) s."""
    return grad * (1.0 - s), grad * (1.0 - g)


@kernel
def source_mask_backward_s(g: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """dL/ds of m = g + (1 - g) s (the adversary's ascents need only this)."""
    return grad * (1.0 - g)


# ---------------------------------------------------------------- minimality (losses.py)
@kernel
def pow_sum(g: torch.Tensor, p: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """s_c = Σ_n (g[n, c] + eps)^p  over g [N, C]."""
    return (g + eps).pow(p).sum(0)


@kernel
def pow_sum_backward(g: torch.Tensor, p: torch.Tensor, eps: torch.Tensor, grad_s: torch.Tensor) -> torch.Tensor:
    """dL/dg = grad_s[c] · p (g + eps)^(p - 1)."""
    return grad_s * p * (g + eps).pow(p - 1.0)


# ---------------------------------------------------------------- adversary (adversary.py)
@kernel
def adam_ascent(src: torch.Tensor, m: torch.Tensor, v: torch.Tensor, grad: torch.Tensor, beta1: torch.Tensor,
                beta2: torch.Tensor, step_size: torch.Tensor, bc2: torch.Tensor, eps: torch.Tensor):
    """One bias-corrected Adam step *up* the gradient, then clamp to [0, 1]: (src, m, v) new.

    step_size = lr / (1 - beta1^t), bc2 = 1 - beta2^t."""
    m_new = beta1 * m + (1.0 - beta1) * grad
    v_new = beta2 * v + (1.0 - beta2) * grad * grad
    src_new = (src + step_size * m_new / ((v_new / bc2).sqrt() + eps)).clamp(0.0, 1.0)
    return src_new, m_new, v_new
