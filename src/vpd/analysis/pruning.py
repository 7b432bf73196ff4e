"""Prune a prompt's graph by re-optimising its CIs, and score the pruned CIs.

The CI pre-activations z [1, T, ΣC] of one prompt (flat, in `dec.layout` order) are initialised
from the decomposition's own CIs (the exact inverse of the upper-leaky readout where g > 0) and
trained with Adam on

    Σ_variant-weights · recon(masks)  +  λ Σ_(t,c) (g_upper + eps)^p,

where recon is measured at the prompt's last position only (CE of the target token, or KL to the
target's distribution) under: the CIs as masks (m = g, Δ dropped); stochastic masks
m = g + (1 - g) r on all matrices (Δ dropped); and adversarial masks m = g + (1 - g) r, m_Δ = r_Δ
from a PGD attack (per-position sources r ∈ [0, 1], sign ascent on recon).

Only the decomposition's active nodes A = {(t, c): g > 0 on the prompt} (the unpruned graph) are
optimised; every other CI stays 0. The attack surface: with `attack_surface: alive` the sources
move only on A and on the Δ channels, the rest stay 0 (ablated), as in the paper's reference
code; with `all` they move on every subcomponent. Why it matters: for a node with source r the
CI's gradient is (1 - r) ∂recon/∂m, so a CI can resist an attack that *ablates* a node it needs
(g -> 1 pins m = 1) but never one that *switches on* a node outside the graph (m = 1 is in
[g, 1] for every g). Switching on the decomposition's inactive subcomponents is a test of the
decomposition, not of the pruned graph, and on the small CPU-scale decompositions it drives
P(target) to ~1e-14 for every graph including the unpruned one; it is reported separately as
p_adversarial_all.

Masks use the lower-leaky readout g = clamp(z, 0, 1) and the minimality term the upper-leaky
one, as in training. The node set is {(t, c): g > 0}. With `pgd_persistent` the attack inside
the objective keeps its sources across pruning steps (pgd_steps ascent steps per pruning step
from where the last step left off), so it accumulates far more steps than a fresh attack would.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Callable, Mapping, Optional

import torch

from vpd.analysis.graph_config import AttributionConfig, PruneVariant
from vpd.decomp.masks import source_masks_flat
from vpd.decomp.sigmoids import lower_leaky, upper_leaky
from vpd.utils.divergence import KLTarget, ce_per_token

log = logging.getLogger("vpd")


@dataclass
class PromptScores:
    n_nodes: int
    p_target: float  # the target model
    p_ci: float  # CI masks (m = g, Δ dropped)
    p_stochastic: float  # mean over stochastic samples
    p_adversarial: float  # worst case over restarts of a fresh PGD attack on the configured surface
    p_adversarial_all: float  # the same attack free to move every subcomponent (a test of the decomposition)

    def as_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass
class PruneResult:
    ci: dict[str, torch.Tensor]  # lower-leaky CI [1, T, C] per matrix
    history: list[dict] = field(default_factory=list)


def _recon_fn(target_logits: torch.Tensor, target_token: int, kind: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """logits [1, T, V] -> loss at the last position: CE of `target_token`, or KL from the target's
    distribution there."""
    kl_vs_target = KLTarget(target_logits[0, -1])
    token = torch.tensor(target_token, device=target_logits.device)

    def recon(logits: torch.Tensor) -> torch.Tensor:
        if kind == "ce":
            return ce_per_token(logits[0, -1], token)
        return kl_vs_target(logits[0, -1])

    return recon


def _inverse_upper(g_upper: torch.Tensor, alpha: float) -> torch.Tensor:
    """z with upper_leaky(z) = g_upper where g_upper > 0 (0 where it is 0)."""
    above = 1 + (g_upper - 1) / max(alpha, 1e-12)
    return torch.where(g_upper > 1, above, g_upper).float()


class PromptObjective:
    """Masked forwards of one prompt in the decomposition's flat layout.

    `surface` (bool [1, T, ΣC], None = everything) is where attack sources may be nonzero; the Δ
    channels are always attackable.
    """

    def __init__(self, dec, ids: torch.Tensor, target_token: int, kind: str, surface: Optional[torch.Tensor] = None):
        self.dec, self.ids, self.target_token = dec, ids, int(target_token)
        self.layout = dec.layout
        self.target_logits = dec.target_forward(ids).float()  # [1, T, V]
        self.recon = _recon_fn(self.target_logits, target_token, kind)
        self.surface = surface

    def logits_ci(self, g: torch.Tensor) -> torch.Tensor:
        return self.dec.masked_forward(self.ids, self.layout.split(g), None)

    def logits_stochastic(self, g: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        r = torch.rand(g.shape, generator=gen).to(g.device)
        return self.dec.masked_forward(self.ids, self.layout.split(g + (1 - g) * r), None)

    def logits_sources(self, g: torch.Tensor, src: torch.Tensor) -> torch.Tensor:
        m, dm = source_masks_flat(g, src)
        return self.dec.masked_forward_flat(self.ids, m, dm)

    def project(self, src: torch.Tensor) -> torch.Tensor:
        """Clamp to [0, 1] and zero the component channels off the surface."""
        src = src.clamp(0.0, 1.0)
        if self.surface is None:
            return src
        n = self.layout.total
        return torch.cat([src[..., :n] * self.surface.to(src.dtype), src[..., n:]], dim=-1)

    def init_sources(self, g: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """U(0, 1) per-position sources [1, T, ΣC + L], projected onto the surface."""
        return self.project(torch.rand((*g.shape[:-1], g.shape[-1] + self.layout.L), generator=gen).to(g.device))

    def attack(
        self, g: torch.Tensor, steps: int, step_size: float, gen: torch.Generator, src: Optional[torch.Tensor] = None
    ) -> torch.Tensor:
        """Sources after `steps` sign-ascent steps on recon (g detached), from `src` or a fresh U(0, 1) start."""
        g = g.detach()
        src = self.init_sources(g, gen) if src is None else src.detach()
        with torch.enable_grad():
            for _ in range(steps):
                src.requires_grad_(True)
                (grad,) = torch.autograd.grad(self.recon(self.logits_sources(g, src)), [src])
                src = self.project(src.detach() + step_size * grad.sign())
        return src.detach()

    def worst_p(self, g: torch.Tensor, cfg: AttributionConfig, gen: torch.Generator) -> float:
        """min over restarts of P(target) after a fresh scoring attack."""
        return min(
            self.p_of(self.logits_sources(g, self.attack(g, cfg.eval_pgd_steps, cfg.eval_pgd_step_size, gen)))
            for _ in range(cfg.eval_pgd_restarts)
        )

    def p_of(self, logits: torch.Tensor) -> float:
        return float(torch.softmax(logits[0, -1].float(), -1)[self.target_token])


def _surface(cfg: AttributionConfig, active: torch.Tensor) -> Optional[torch.Tensor]:
    return active if cfg.attack_surface == "alive" else None


def prune_prompt(
    dec,
    ids: torch.Tensor,
    target_token: int,
    variant: PruneVariant,
    cfg: AttributionConfig,
    generator: torch.Generator,
    ci_upper: Mapping[str, torch.Tensor] | None = None,
) -> PruneResult:
    """Re-optimise the CIs of one prompt ids [1, T] for `variant` (module docstring)."""
    if ci_upper is None:
        ci_upper = dec.ci(ids, upper=True)
    gu0 = dec.layout.cat(ci_upper).detach().float()
    active = gu0 > 0  # the unpruned graph's nodes; every other CI stays 0
    obj = PromptObjective(dec, ids, target_token, cfg.loss, _surface(cfg, active))
    keep = active.float()
    z = _inverse_upper(gu0, cfg.leaky_alpha).clone().requires_grad_(True)
    opt = torch.optim.Adam([z], lr=cfg.lr)
    src = None  # the persistent attack's sources
    history = []
    for step in range(cfg.steps):
        g = lower_leaky(z, cfg.leaky_alpha) * keep
        gu = upper_leaky(z, cfg.leaky_alpha) * keep
        terms = {}
        if variant.ci_masked > 0:
            terms["ci_masked"] = obj.recon(obj.logits_ci(g))
        if variant.stochastic > 0:
            terms["stochastic"] = sum(
                obj.recon(obj.logits_stochastic(g, generator)) for _ in range(cfg.stochastic_samples)
            ) / cfg.stochastic_samples
        if variant.adversarial > 0:
            src = obj.attack(g, cfg.pgd_steps, cfg.pgd_step_size, generator, src if cfg.pgd_persistent else None)
            terms["adversarial"] = obj.recon(obj.logits_sources(g, src))  # gradient to g through m = g + (1-g) r
        minimality = (gu + 1e-12).pow(cfg.p).mul(keep).sum()
        lam = variant.minimality_scale * cfg.minimality_coeff
        loss = sum(getattr(variant, k) * v for k, v in terms.items()) + lam * minimality
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 25 == 0 or step == cfg.steps - 1:
            rec = {"step": step, "loss": float(loss.detach()), "minimality": float(minimality.detach()),
                   "n_nodes": int((g > 0).sum())}
            rec.update({k: float(v.detach()) for k, v in terms.items()})
            history.append(rec)
    with torch.no_grad():
        g = lower_leaky(z.detach(), cfg.leaky_alpha) * keep
    return PruneResult({k: v.clone() for k, v in obj.layout.split(g).items()}, history)


@torch.no_grad()
def score_prompt(
    dec,
    ids: torch.Tensor,
    target_token: int,
    ci: Mapping[str, torch.Tensor],
    cfg: AttributionConfig,
    generator: torch.Generator,
) -> PromptScores:
    """Node count and P(target) under the target, CI masks, stochastic masks and a fresh PGD attack
    (on the configured surface: the decomposition's active nodes on the prompt plus the graph's own,
    and on every subcomponent)."""
    g = dec.layout.cat(ci).float()
    active = (dec.layout.cat(dec.ci(ids)).float() > 0) | (g > 0)
    obj = PromptObjective(dec, ids, target_token, "ce", _surface(cfg, active))  # the attack lowers P(target)
    p_stoch = sum(obj.p_of(obj.logits_stochastic(g, generator)) for _ in range(cfg.eval_stochastic_samples))
    p_adv = obj.worst_p(g, cfg, generator)
    obj.surface = None
    p_all = p_adv if cfg.attack_surface == "all" else obj.worst_p(g, cfg, generator)
    return PromptScores(
        n_nodes=int((g > 0).sum()),
        p_target=obj.p_of(obj.target_logits),
        p_ci=obj.p_of(obj.logits_ci(g)),
        p_stochastic=p_stoch / cfg.eval_stochastic_samples,
        p_adversarial=p_adv,
        p_adversarial_all=p_all,
    )
