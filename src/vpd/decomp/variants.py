"""The decomposition config of a VPD variant (`vpd.sweeps.VariantJob`): the project's `decompose`
section with the variant's change applied.

pareto     coeffs.importance_minimality replaced, `baselines.vpd_steps` steps.
splitting  only the matrices of `feature_splitting.matrices`, each at round(m x C) (at least 1)
           with C from decompose.matrices; steps, warm-up, batch size and sequence length from the
           `feature_splitting` section where it sets them.
seed       the decompose section unchanged (the stage runs it at the variant's seed).
seed_splitting  as splitting, run at the variant's seed (the seeds comparison's splitting ratio).
adversary  `adversary_ablation.steps` steps; without the adversary, coeffs.adversarial_recon 0
           (no PGD sources are kept or trained).
"""

from __future__ import annotations

import torch.nn as nn

from vpd.config import ProjectConfig
from vpd.decomp.components import match_matrices
from vpd.decomp.config import DecompositionConfig, MatrixSpec
from vpd.sweeps import VariantJob, variant_steps
from vpd.utils.errors import InputError


def variant_config(base: DecompositionConfig, **changes) -> DecompositionConfig:
    """`base` with top-level keys replaced (None keeps the base value); `importance_minimality=x`
    sets coeffs.importance_minimality (and `adversarial_recon=x` coeffs.adversarial_recon). The result is validated like a config file's section."""
    data = base.to_dict()
    for coeff in ("importance_minimality", "adversarial_recon"):
        if coeff in changes:
            data["coeffs"][coeff] = float(changes.pop(coeff))
    unknown = set(changes) - set(data)
    if unknown:
        raise KeyError(f"unknown decompose keys {sorted(unknown)}")
    data.update({k: v for k, v in changes.items() if v is not None})
    return DecompositionConfig.from_dict(data)


def splitting_matrices(cfg: ProjectConfig, target: nn.Module) -> dict[str, int]:
    """The matrices of the splitting runs with their base C (from decompose.matrices)."""
    base = match_matrices(target, cfg.decompose.matrices)
    chosen = match_matrices(target, [MatrixSpec(pattern=p, C=1) for p in cfg.feature_splitting.matrices])
    missing = [n for n in chosen if n not in base]
    if missing:
        raise InputError(f"feature_splitting.matrices selects {missing}, which decompose.matrices does not decompose "
                         f"(no base C to multiply)")
    return {n: base[n] for n in chosen}


def variant_decompose_config(cfg: ProjectConfig, job: VariantJob, target: nn.Module) -> DecompositionConfig:
    if job.purpose == "seed":
        return cfg.decompose
    if job.purpose == "pareto":
        return variant_config(cfg.decompose, importance_minimality=job.importance_minimality,
                              steps=cfg.baselines.vpd_steps)
    if job.purpose == "adversary":
        changes = {} if job.adversary else {"adversarial_recon": 0.0}
        return variant_config(cfg.decompose, steps=variant_steps(cfg, job), **changes)
    fs = cfg.feature_splitting
    specs = [{"pattern": n, "C": max(1, round(job.C_multiplier * c))} for n, c in splitting_matrices(cfg, target).items()]
    return variant_config(cfg.decompose, matrices=specs, steps=fs.steps,
                          faithfulness_warmup_steps=fs.faithfulness_warmup_steps, batch_size=fs.batch_size,
                          seq_len=fs.seq_len)
