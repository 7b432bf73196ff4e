"""Adversarial masks: the persistent PGD adversary used in training, and the PGD eval attack.

Persistent adversary: per matrix a source [*lead, C+1] (lead = the batch's position dims, e.g.
[B, T]; the extra channel is Δ), initialised U(0, 1) and kept across training steps. All
matrices' sources are stored as two flat leaves, the component channels [*lead, ΣC] in the
flat layout (masks.FlatLayout) and the Δ channels [*lead, L], so an update is a handful of
elementwise ops instead of a handful per matrix, and no slicing of one big leaf (whose
backward would allocate and fill a full-size zero tensor per slice).
`.sources` is their concatenation [*lead, ΣC + L] (checkpoints and inspection). Each update is an Adam *ascent* step on the
reconstruction loss (betas (0.5, 0.99), bias-corrected), then clamping to [0, 1]. Per training
step the trainer calls `ascend` n_warmup_ascents times (gradient w.r.t. the sources only; CI and
components detached) and then `step` once with the source gradient of the main loss, after the
main optimiser step.

PGD eval attack: one fresh source per subcomponent shared by all positions ([1, .., 1, ΣC+L]),
U(0, 1) init, n sign-ascent steps with clamping, all matrices masked, Δ included.
"""

from __future__ import annotations

from typing import Callable, Mapping, Optional, Sequence

import torch

from vpd.decomp.config import PGDConfig
from vpd.decomp import fused
from vpd.decomp.masks import FlatLayout, source_mask, source_masks_flat
from vpd.utils.distributed import Dist, rand_rows

# loss_fn(flat masks [..., ΣC], flat Δ masks [..., L]) -> scalar reconstruction loss
MaskedLossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class PersistentAdversary:
    def __init__(
        self,
        layout: FlatLayout,
        lead_shape: tuple[int, ...],
        cfg: PGDConfig,
        generator: Optional[torch.Generator] = None,
        device: torch.device | str = "cpu",
        row_seeds: Optional[Sequence[int]] = None,
    ):
        """Sources start U(0, 1): from `generator`, or with `row_seeds` (one per batch row) row i
        from its own seeded generator, so a row's start does not depend on the batch split."""
        self.cfg, self.layout = cfg, layout
        shape = (*lead_shape, layout.total + layout.L)
        if row_seeds is None:
            init = torch.rand(shape, generator=generator, dtype=torch.float32).to(device)
        else:
            if len(row_seeds) != shape[0]:
                raise ValueError(f"{len(row_seeds)} row seeds for {shape[0]} batch rows")
            init = rand_rows(shape[1:], row_seeds, torch.device("cpu")).to(device)
        self._set(init, torch.zeros_like(init), torch.zeros_like(init))
        self.t = 0

    def _set(self, src: torch.Tensor, m: torch.Tensor, v: torch.Tensor) -> None:
        n = self.layout.total
        # leaves: [..., ΣC] component sources and [..., L] Δ sources; Adam moments likewise
        self.src = [src[..., :n].contiguous(), src[..., n:].contiguous()]
        self.m = [m[..., :n].contiguous(), m[..., n:].contiguous()]
        self.v = [v[..., :n].contiguous(), v[..., n:].contiguous()]

    @property
    def sources(self) -> torch.Tensor:
        """All sources [*lead, ΣC + L] (a copy)."""
        return torch.cat([s.detach() for s in self.src], dim=-1)

    def grads(self, scale: float = 1.0) -> list[torch.Tensor]:
        """Gradients of the last backward w.r.t. the two source leaves, times `scale`."""
        if self.src[0].grad is None:
            raise RuntimeError("the adversary's sources received no gradient (masks(requires_grad=True) not used?)")
        return [s.grad * scale for s in self.src]

    @property
    def lead_shape(self) -> tuple[int, ...]:
        return tuple(self.src[0].shape[:-1])

    def per_matrix(self) -> dict[str, torch.Tensor]:
        """{name: source [*lead, C+1]} (copies; last channel Δ), for inspection."""
        comps = self.layout.split(self.sources[..., : self.layout.total])
        deltas = self.layout.split_delta(self.sources[..., self.layout.total:])
        return {n: torch.cat([comps[n], deltas[n].unsqueeze(-1)], dim=-1) for n in self.layout.names}

    def masks(self, ci: torch.Tensor, requires_grad: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """Flat masks m = g + (1 - g) s, m_Δ = s_Δ; with requires_grad the sources become a leaf."""
        for s in self.src:
            s.requires_grad_(requires_grad)
            s.grad = None
        sc, sd = self.src
        return source_mask(ci, sc), sd

    def ascend(self, loss_fn: MaskedLossFn, ci: torch.Tensor, lr: float, grad_scale: float = 1.0) -> float:
        """One warm-up ascent: gradient of loss_fn w.r.t. the sources only (times grad_scale),
        then an Adam step up."""
        loss = loss_fn(*self.masks(ci.detach(), requires_grad=True))
        grads = torch.autograd.grad(loss, self.src)
        self.release()
        self.step([g * grad_scale for g in grads] if grad_scale != 1.0 else list(grads), lr)
        return float(loss.detach())

    def release(self) -> None:
        for s in self.src:
            s.requires_grad_(False)
            s.grad = None

    @torch.no_grad()
    def step(self, grad: torch.Tensor | list[torch.Tensor], lr: float) -> None:
        """Adam ascent step with bias correction, then clamp the sources to [0, 1].

        grad: [*lead, ΣC + L], or the two leaves' gradients ([*lead, ΣC], [*lead, L]).
        """
        b1, b2 = self.cfg.betas
        self.t += 1
        bc1, bc2 = 1 - b1**self.t, 1 - b2**self.t
        n = self.layout.total
        if torch.is_tensor(grad):
            grad = [grad[..., :n], grad[..., n:]]
        if fused.enabled():
            like = self.src[0]
            consts = [fused.scalar(x, like) for x in (b1, b2, lr / bc1, bc2, self.cfg.eps)]
            for i, g in enumerate(grad):
                self.src[i], self.m[i], self.v[i] = fused.adam_ascent(
                    self.src[i], self.m[i], self.v[i], g.float().contiguous(), *consts)
            return
        for src, m, v, g in zip(self.src, self.m, self.v, (gr.float() for gr in grad)):
            m.lerp_(g, 1 - b1)
            v.mul_(b2).addcmul_(g, g, value=1 - b2)
            denom = (v / bc2).sqrt_().add_(self.cfg.eps)
            src.addcdiv_(m, denom, value=lr / bc1).clamp_(0.0, 1.0)

    # ------------------------------------------------------------ persistence
    def state_tensors(self, prefix: str = "adv") -> dict[str, torch.Tensor]:
        return {
            f"{prefix}.src": self.sources,
            f"{prefix}.m": torch.cat(self.m, dim=-1),
            f"{prefix}.v": torch.cat(self.v, dim=-1),
        }

    def load_state_tensors(self, tensors: Mapping[str, torch.Tensor], t: int, prefix: str = "adv") -> None:
        src = tensors.get(f"{prefix}.src")
        expected = (*self.lead_shape, self.layout.total + self.layout.L)
        if src is None or tuple(src.shape) != expected:
            got = None if src is None else tuple(src.shape)
            raise ValueError(f"checkpoint adversary sources have shape {got}, expected {expected}")
        dev = self.src[0].device
        self._set(src.float().to(dev), tensors[f"{prefix}.m"].float().to(dev), tensors[f"{prefix}.v"].float().to(dev))
        self.t = int(t)


def pgd_attack(
    loss_fn: MaskedLossFn,
    ci: torch.Tensor,
    n_matrices: int,
    n_steps: int,
    step_size: float,
    generator: Optional[torch.Generator] = None,
    dist: Optional[Dist] = None,
) -> float:
    """Evaluation attack on the flat CI [..., ΣC]: one source per subcomponent (+ one Δ source per
    matrix) shared by all positions, n sign-ascent steps; returns the final loss.

    With several processes each holds a shard of the batch: the source starts as rank 0's draw,
    its gradient is averaged over ranks before each sign step, and the loss is the ranks' mean."""
    dist = dist or Dist()
    ci = ci.detach()
    shape = (*([1] * (ci.ndim - 1)), ci.shape[-1] + n_matrices)
    src = dist.broadcast_(torch.rand(shape, generator=generator, dtype=torch.float32).to(ci.device))
    with torch.enable_grad():
        for _ in range(n_steps):
            src.requires_grad_(True)
            (grad,) = torch.autograd.grad(loss_fn(*source_masks_flat(ci, src)), [src])
            src = (src.detach() + step_size * dist.mean_(grad).sign()).clamp_(0.0, 1.0)
    with torch.no_grad():
        return dist.mean_values([float(loss_fn(*source_masks_flat(ci, src)))])[0]
