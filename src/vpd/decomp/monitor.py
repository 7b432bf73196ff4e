"""Short periodic evaluation during training, on one fixed batch.

Reports L0 (CI > 0 per position, per matrix and total), alive counts (mean CI over the batch's
positions > alive_threshold), output-loss (KL or MSE) and, for LMs, next-token CE for: unmasked
(all masks 1), stochastic, rounded CI > 0 — each with Δ excluded, as in the paper's tables —
plus the stochastic variant that samples the Δ mask as in training (`stochastic_delta`) and the
PGD eval attack (`pgd`, Δ included). All randomness comes from the generator passed in.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional, Sequence

import torch

from vpd.decomp.adversary import pgd_attack
from vpd.decomp.losses import output_loss_fn
from vpd.decomp.masks import constant_masks, stochastic_masks
from vpd.utils.distributed import Dist
from vpd.utils.divergence import next_token_ce

if TYPE_CHECKING:
    from vpd.decomp.api import Decomposition


def l0_per_matrix(ci: dict[str, torch.Tensor]) -> dict[str, float]:
    """Mean over positions of the number of subcomponents with CI > 0."""
    return {n: float((g > 0).sum(-1).float().mean()) for n, g in ci.items()}


def alive_per_matrix(ci: dict[str, torch.Tensor], threshold: float, dist: Optional[Dist] = None) -> dict[str, int]:
    """Subcomponents whose mean CI over all positions (of every rank's shard) exceeds threshold."""
    dist = dist or Dist()
    means = {n: dist.mean_(g.reshape(-1, g.shape[-1]).float().mean(0)) for n, g in ci.items()}
    return {n: int((m > threshold).sum()) for n, m in means.items()}


def quick_eval(
    dec: "Decomposition",
    batch,
    generator: torch.Generator,
    *,
    dist: Optional[Dist] = None,
    row_seeds: Optional[Sequence[int]] = None,
) -> dict[str, float]:
    """Eval metrics on `batch` (this rank's shard of the eval batch with several processes:
    every number is then the mean over ranks). `row_seeds` key the stochastic masks by global
    row; the PGD source comes from `generator`."""
    cfg = dec.config
    dist = dist or Dist()
    is_lm = cfg.output_loss == "kl" and torch.is_tensor(batch) and batch.ndim == 2 and not batch.is_floating_point()
    out: dict[str, float] = {}
    with torch.no_grad():
        clean, inputs = dec.matrix_inputs(batch)
        ci, _ = dec.ci_from_inputs(inputs)
        l0 = l0_per_matrix(ci)
        alive = alive_per_matrix(ci, cfg.alive_threshold, dist)
        out["eval/l0_total"] = sum(l0.values())
        out["eval/alive_total"] = sum(alive.values())
        for n in dec.names:
            out[f"eval/l0/{n}"] = l0[n]
            out[f"eval/alive/{n}"] = alive[n]
        if is_lm:
            out["eval/ce/target"] = float(next_token_ce(clean, batch.to(clean.device)))
        stoch, stoch_delta = stochastic_masks(ci, generator, routing="all", row_seeds=row_seeds)
        strategies = {
            "unmasked": (constant_masks(ci, 1.0), None),
            "stochastic": (stoch, None),
            "rounded": ({n: (g > 0).float() for n, g in ci.items()}, None),
            "stochastic_delta": (stoch, stoch_delta),
        }
        key = "kl" if cfg.output_loss == "kl" else "mse"
        loss_vs_clean = output_loss_fn(cfg.output_loss, clean)
        for name, (masks, dmasks) in strategies.items():
            pred = dec.masked_forward(batch, masks, dmasks)
            out[f"eval/{key}/{name}"] = float(loss_vs_clean(pred))
            if is_lm:
                out[f"eval/ce/{name}"] = float(next_token_ce(pred, batch.to(pred.device)))
    if cfg.pgd.eval_steps > 0:
        def loss_fn(masks, dmasks):
            return loss_vs_clean(dec.masked_forward_flat(batch, masks, dmasks, detach_components=True))

        flat_ci = dec.layout.cat(ci)  # [..., ΣC]
        out[f"eval/{key}/pgd{cfg.pgd.eval_steps}"] = pgd_attack(
            loss_fn, flat_ci, dec.layout.L, cfg.pgd.eval_steps, cfg.pgd.eval_step_size, generator, dist
        )
    # means over equal shards: the ranks' mean is the global mean (alive counts are already global)
    means = [k for k in out if "/alive" not in k and "/pgd" not in k]
    out.update(zip(means, dist.mean_values([out[k] for k in means])))
    return out
