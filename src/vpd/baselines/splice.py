"""Splicing: every MLP of the target replaced at once, errors propagating through the residual.

Temporary forward hooks on `target.h[j].mlp` swap each MLP's output for a replacement's
prediction computed from the spliced model's own MLP input at that layer (so the errors of
earlier layers reach later ones). A replacement is anything with the small `MLPReplacement`
interface: a transcoder (`TranscoderReplacement`), the MLPs themselves (`ModuleReplacement`,
exact by construction), or zero ablation (`ZeroReplacement`). The target is never modified.

Reported: CE of the spliced model and its increase over the target on the shared eval windows,
KL to the target, per-layer L0 (mean active latents per token) and active parameters per token
(sum over layers of L0_i x the parameters one latent of layer i uses).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Iterator, Optional, Protocol, Sequence

import torch
import torch.nn as nn

from vpd.baselines.transcoders import Mode, Transcoder, mlp_modules
from vpd.utils.divergence import ce_per_token, kl_per_token
from vpd.utils.meters import MeanMeter
from vpd.utils.runtime import autocast


class MLPReplacement(Protocol):
    n_layer: int

    def reset(self) -> None:
        """Forget the latents of the previous forward pass."""

    def replace(self, layer: int, x: torch.Tensor) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """MLP input x [B, T, d_in] of `layer` -> (MLP output [B, T, d_out], latents [B, T, L] or None)."""

    def latent_param_cost(self, layer: int) -> int:
        """Parameters one active latent of `layer` uses (0 if there are no latents)."""


class TranscoderReplacement:
    """A PLT or CLT as an MLP replacement; CLT latents of earlier layers are kept for later ones."""

    def __init__(self, tc: Transcoder, mode: Mode = "threshold"):
        self.tc, self.mode, self.n_layer = tc, mode, tc.n_layer
        self._acts: list[Optional[torch.Tensor]] = [None] * tc.n_layer

    def reset(self) -> None:
        self._acts = [None] * self.n_layer

    def replace(self, layer: int, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        missing = [i for i in self.tc.sources(layer) if i != layer and self._acts[i] is None]
        if missing:
            raise RuntimeError(f"layer {layer} needs latents of layers {missing}, which did not run first")
        self._acts[layer] = self.tc.encode(layer, x.float(), self.mode)  # [B, T, L]
        return self.tc.decode(layer, self._acts).to(x.dtype), self._acts[layer]

    def latent_param_cost(self, layer: int) -> int:
        return self.tc.latent_param_cost(layer)


class ModuleReplacement:
    """Modules mapping MLP input -> MLP output (e.g. the target's own MLPs: an exact splice)."""

    def __init__(self, modules: Sequence[nn.Module]):
        self.modules, self.n_layer = list(modules), len(modules)

    def reset(self) -> None:
        pass

    def replace(self, layer: int, x: torch.Tensor) -> tuple[torch.Tensor, None]:
        # .forward, not __call__: a spliced MLP's own hooks must not fire again (recursion).
        return self.modules[layer].forward(x), None

    def latent_param_cost(self, layer: int) -> int:
        return 0


class ZeroReplacement:
    """Zero ablation of every MLP."""

    def __init__(self, n_layer: int):
        self.n_layer = n_layer

    def reset(self) -> None:
        pass

    def replace(self, layer: int, x: torch.Tensor) -> tuple[torch.Tensor, None]:
        return torch.zeros_like(x), None  # MLP output width = input width (d_model)

    def latent_param_cost(self, layer: int) -> int:
        return 0


@contextlib.contextmanager
def spliced(target: nn.Module, replacement: MLPReplacement) -> Iterator[list]:
    """Context in which `target(idx)` runs with every MLP replaced; yields the per-layer latents
    of the latest forward (list of [B, T, L] or None)."""
    mlps = mlp_modules(target)
    if len(mlps) != replacement.n_layer:
        raise ValueError(f"replacement covers {replacement.n_layer} layers, target has {len(mlps)} MLPs")
    latents: list[Optional[torch.Tensor]] = [None] * len(mlps)

    def pre_hook(i):
        def fn(module, inputs):
            if i == 0:
                replacement.reset()
        return fn

    def hook(i):
        def fn(module, inputs, output):
            y, acts = replacement.replace(i, inputs[0])
            latents[i] = acts
            return y
        return fn

    handles = [mlps[0].register_forward_pre_hook(pre_hook(0))]
    handles += [m.register_forward_hook(hook(i)) for i, m in enumerate(mlps)]
    try:
        yield latents
    finally:
        for h in handles:
            h.remove()


@torch.no_grad()
def splice_logits(target: nn.Module, replacement: MLPReplacement, idx: torch.Tensor) -> torch.Tensor:
    """Logits [B, T, V] of the target with all MLPs replaced."""
    with spliced(target, replacement):
        return target(idx)


@dataclass
class SpliceResult:
    target_ce: float
    ce: float
    kl: float
    n_tokens: int
    l0_per_layer: list[float] = field(default_factory=list)  # mean active latents per token
    latent_param_cost: list[int] = field(default_factory=list)

    @property
    def ce_increase(self) -> float:
        return self.ce - self.target_ce

    @property
    def l0_per_module(self) -> float:
        """Mean over the replaced MLPs of the per-token L0 (one transcoder module per MLP)."""
        return sum(self.l0_per_layer) / len(self.l0_per_layer) if self.l0_per_layer else 0.0

    @property
    def active_params(self) -> float:
        """Parameters used per token, summed over all replaced MLPs."""
        return float(sum(l0 * c for l0, c in zip(self.l0_per_layer, self.latent_param_cost)))


@torch.no_grad()
def evaluate_splice(
    target: nn.Module, replacement: MLPReplacement, windows: torch.Tensor, *, batch_size: int,
    dtype: torch.dtype = torch.float32,
) -> SpliceResult:
    """CE (and its increase over the target), KL and L0 of the spliced model on windows [N, T + 1]."""
    device = next(target.parameters()).device
    t_ce, ce, kl = MeanMeter(), MeanMeter(), MeanMeter()
    active = [0.0] * replacement.n_layer
    has_latents = False
    for start in range(0, len(windows), batch_size):
        chunk = windows[start : start + batch_size].to(device)
        x, y = chunk[:, :-1], chunk[:, 1:]
        with autocast(device, dtype):
            t_logits = target(x).float()
            with spliced(target, replacement) as latents:
                logits = target(x).float()
        t_ce.update(ce_per_token(t_logits, y))
        ce.update(ce_per_token(logits, y))
        kl.update(kl_per_token(t_logits, logits))
        for i, a in enumerate(latents):
            if a is not None:
                has_latents = True
                active[i] += (a > 0).sum().item()
    n = ce.count
    return SpliceResult(
        target_ce=t_ce.mean, ce=ce.mean, kl=kl.mean, n_tokens=n,
        l0_per_layer=[a / n for a in active] if has_latents else [0.0] * replacement.n_layer,
        latent_param_cost=[replacement.latent_param_cost(i) for i in range(replacement.n_layer)],
    )
