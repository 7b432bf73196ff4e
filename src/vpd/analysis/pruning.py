"""Prune a prompt's graph by re-optimising its CIs, and score the pruned CIs.

The CI pre-activations z [1, T, ΣC] of one prompt (flat, in `dec.layout` order) are initialised
from the decomposition's own CIs (the exact inverse of the upper-leaky readout where g > 0; 0
where the CI is 0) and trained with Adam on

    Σ_variant-weights · recon(masks)  +  λ Σ_(t,c) (g_upper + eps)^p,

where recon is measured at the prompt's last position only (CE of the target token, or KL to the
target's distribution) under: the CIs as masks (m = g, Δ dropped); stochastic masks
m = g + (1 - g) r on all matrices (Δ dropped); and the masks of a fresh per-step PGD attack
(per-position sources r ∈ [0, 1] for every subcomponent and Δ channel, U(0, 1) init, a few
sign-ascent steps maximising recon; then m = g + (1 - g) r, m_Δ = r_Δ). Masks use the lower-leaky
readout g = clamp(z, 0, 1) (its straight-through backward lets a zeroed node come back), and the
minimality term the upper-leaky one, as in training. The node set is {(t, c): g > 0}.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Callable, Mapping

import torch
import torch.nn.functional as F

from vpd.analysis.graph_config import AttributionConfig, PruneVariant
from vpd.decomp.masks import source_masks_flat
from vpd.decomp.sigmoids import lower_leaky, upper_leaky

log = logging.getLogger("vpd")


@dataclass
class PromptScores:
    n_nodes: int
    p_target: float  # the target model
    p_ci: float  # CI masks (m = g, Δ dropped)
    p_stochastic: float  # mean over stochastic samples
    p_adversarial: float  # worst case over restarts of a fresh PGD attack

    def as_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass
class PruneResult:
    ci: dict[str, torch.Tensor]  # lower-leaky CI [1, T, C] per matrix
    history: list[dict] = field(default_factory=list)


def _recon_fn(target_logits: torch.Tensor, target_token: int, kind: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """logits [1, T, V] -> loss at the last position."""
    log_p = F.log_softmax(target_logits[0, -1].float(), -1)

    def recon(logits: torch.Tensor) -> torch.Tensor:
        log_q = F.log_softmax(logits[0, -1].float(), -1)
        if kind == "ce":
            return -log_q[target_token]
        return (log_p.exp() * (log_p - log_q)).sum()

    return recon


def _inverse_upper(g_upper: torch.Tensor, alpha: float) -> torch.Tensor:
    """z with upper_leaky(z) = g_upper where g_upper > 0 (0 where it is 0)."""
    above = 1 + (g_upper - 1) / max(alpha, 1e-12)
    return torch.where(g_upper > 1, above, g_upper).float()


class PromptObjective:
    """Masked forwards of one prompt in the decomposition's flat layout."""

    def __init__(self, dec, ids: torch.Tensor, target_token: int, kind: str):
        self.dec, self.ids, self.target_token = dec, ids, int(target_token)
        self.layout = dec.layout
        self.target_logits = dec.target_forward(ids).float()  # [1, T, V]
        self.recon = _recon_fn(self.target_logits, target_token, kind)

    def logits_ci(self, g: torch.Tensor) -> torch.Tensor:
        return self.dec.masked_forward(self.ids, self.layout.split(g), None)

    def logits_stochastic(self, g: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        r = torch.rand(g.shape, generator=gen).to(g.device)
        return self.dec.masked_forward(self.ids, self.layout.split(g + (1 - g) * r), None)

    def logits_sources(self, g: torch.Tensor, src: torch.Tensor) -> torch.Tensor:
        m, dm = source_masks_flat(g, src)
        return self.dec.masked_forward_flat(self.ids, m, dm)

    def attack(self, g: torch.Tensor, steps: int, step_size: float, gen: torch.Generator) -> torch.Tensor:
        """Per-position sources [1, T, ΣC + L] after `steps` sign-ascent steps on recon (g detached)."""
        g = g.detach()
        src = torch.rand((*g.shape[:-1], g.shape[-1] + self.layout.L), generator=gen).to(g.device)
        with torch.enable_grad():
            for _ in range(steps):
                src.requires_grad_(True)
                (grad,) = torch.autograd.grad(self.recon(self.logits_sources(g, src)), [src])
                src = (src.detach() + step_size * grad.sign()).clamp_(0.0, 1.0)
        return src.detach()

    def p_of(self, logits: torch.Tensor) -> float:
        return float(torch.softmax(logits[0, -1].float(), -1)[self.target_token])


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
    obj = PromptObjective(dec, ids, target_token, cfg.loss)
    if ci_upper is None:
        ci_upper = dec.ci(ids, upper=True)
    z = _inverse_upper(obj.layout.cat(ci_upper).detach(), cfg.leaky_alpha).clone().requires_grad_(True)
    opt = torch.optim.Adam([z], lr=cfg.lr)
    history = []
    for step in range(cfg.steps):
        g = lower_leaky(z, cfg.leaky_alpha)
        gu = upper_leaky(z, cfg.leaky_alpha)
        terms = {}
        if variant.ci_masked > 0:
            terms["ci_masked"] = obj.recon(obj.logits_ci(g))
        if variant.stochastic > 0:
            terms["stochastic"] = sum(
                obj.recon(obj.logits_stochastic(g, generator)) for _ in range(cfg.stochastic_samples)
            ) / cfg.stochastic_samples
        if variant.adversarial > 0:
            src = obj.attack(g, cfg.pgd_steps, cfg.pgd_step_size, generator)
            terms["adversarial"] = obj.recon(obj.logits_sources(g, src))
        minimality = (gu + 1e-12).pow(cfg.p).sum()
        loss = sum(getattr(variant, k) * v for k, v in terms.items()) + cfg.minimality_coeff * minimality
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 25 == 0 or step == cfg.steps - 1:
            rec = {"step": step, "loss": float(loss.detach()), "minimality": float(minimality.detach()),
                   "n_nodes": int((g > 0).sum())}
            rec.update({k: float(v.detach()) for k, v in terms.items()})
            history.append(rec)
    with torch.no_grad():
        g = lower_leaky(z.detach(), cfg.leaky_alpha)
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
    """Node count and P(target) under the target, CI masks, stochastic masks and a fresh PGD attack."""
    obj = PromptObjective(dec, ids, target_token, "ce")  # the scoring attack always lowers P(target)
    g = obj.layout.cat(ci).float()
    p_stoch = sum(obj.p_of(obj.logits_stochastic(g, generator)) for _ in range(cfg.eval_stochastic_samples))
    p_adv = min(
        obj.p_of(obj.logits_sources(g, obj.attack(g, cfg.eval_pgd_steps, cfg.eval_pgd_step_size, generator)))
        for _ in range(cfg.eval_pgd_restarts)
    )
    return PromptScores(
        n_nodes=int((g > 0).sum()),
        p_target=obj.p_of(obj.target_logits),
        p_ci=obj.p_of(obj.logits_ci(g)),
        p_stochastic=p_stoch / cfg.eval_stochastic_samples,
        p_adversarial=p_adv,
    )
