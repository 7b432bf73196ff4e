"""The models the sweeps train besides the target and the main decomposition, one Snakemake job each.

Torch-free: the Snakefile lists these jobs while it builds the DAG.

Transcoders: every (kind, n_latents, k) of `baselines` (the feature-splitting grid is a subset,
checked by the config), and for the seeds comparison the largest dictionary of each kind (largest
n_latents at the largest k) once more per entry of `seeds` other than the run's `seed`. VPD variants: one decomposition per `baselines.vpd_importance_coeffs`
entry (importance-minimality sweep, `baselines.vpd_steps` steps), one per
`feature_splitting.c_multipliers` entry (the MLP matrices at m x C) and one per entry of `seeds`
other than the run's `seed` (the main decomposition at another seed). The seeds comparison also
measures the feature-splitting ratio at every seed: at each other seed it trains the two ends of
that ratio once more (VPD at 1x and at the largest multiplier; each splitting transcoder kind at
the smallest and the largest dictionary of `feature_splitting.n_latents`). A variant's job folder name
is its `name`; the decompose stage turns a variant into its decomposition config
(`vpd.decomp.variants`).
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Literal, Optional

from vpd.config import ConfigError, ProjectConfig

@dataclass(frozen=True)
class TranscoderJob:
    kind: Literal["plt", "clt"]
    n_latents: int
    k: int
    seed: Optional[int] = None  # seeds comparison: trained at this seed instead of the run's

    @property
    def shape_name(self) -> str:
        return f"{self.kind}_L{self.n_latents}_k{self.k}"

    @property
    def name(self) -> str:
        """Folder and job name, e.g. `plt_L4096_k16`, or `plt_L4096_k16_s1` at seed 1."""
        return self.shape_name if self.seed is None else f"{self.shape_name}_s{self.seed}"

    def run_seed(self, seed: int) -> int:
        """The seed this job trains at, given the run's `seed`."""
        return seed if self.seed is None else self.seed

    def init_seed(self, seed: int) -> int:
        """Seed of this transcoder's initialisation: its run seed mixed with its shape's name (crc32,
        stable across processes), so each job starts the same wherever and whenever it runs."""
        return (self.run_seed(seed) * 1_000_003 + zlib.crc32(self.shape_name.encode())) % 2**63


@dataclass(frozen=True)
class VariantJob:
    """One extra decomposition: `purpose` says which comparison reads it."""

    name: str
    purpose: Literal["pareto", "splitting", "seed", "seed_splitting", "adversary"]
    importance_minimality: Optional[float] = None  # pareto: replaces decompose.coeffs.importance_minimality
    C_multiplier: Optional[float] = None  # (seed_)splitting: feature_splitting.matrices at this multiple of their C
    seed: Optional[int] = None  # seed, seed_splitting: trained at this seed instead of the run's
    adversary: Optional[bool] = None  # adversary: the main config at adversary_ablation.steps, with or without the adversary

    def as_dict(self) -> dict:
        return {"name": self.name, "purpose": self.purpose, "importance_minimality": self.importance_minimality,
                "C_multiplier": self.C_multiplier, "seed": self.seed, "adversary": self.adversary}


def transcoder_jobs(cfg: ProjectConfig) -> list[TranscoderJob]:
    b = cfg.baselines
    return [TranscoderJob(kind, n, k) for kind in b.kinds for n in b.n_latents for k in b.k]


def splitting_transcoders(cfg: ProjectConfig) -> list[TranscoderJob]:
    fs = cfg.feature_splitting
    return [TranscoderJob(kind, n, fs.k) for kind in fs.kinds for n in fs.n_latents]


def splitting_ratio_multipliers(cfg: ProjectConfig) -> tuple[float, float]:
    """The C multipliers whose alive counts give VPD's feature-splitting ratio: 1x and the largest."""
    return 1.0, max(cfg.feature_splitting.c_multipliers)


def seed_splitting_transcoders(cfg: ProjectConfig) -> dict[str, dict[int, dict[int, TranscoderJob]]]:
    """Transcoders of the seeds comparison's splitting ratio: kind -> {seed: {n_latents: job}} at the
    smallest and the largest `feature_splitting.n_latents` (the run's own seed: the splitting jobs)."""
    if not cfg.seeds:
        return {}
    fs = cfg.feature_splitting
    ends = (min(fs.n_latents), max(fs.n_latents))
    return {kind: {s: {n: TranscoderJob(kind, n, fs.k, seed=None if s == cfg.seed else s) for n in ends}
                   for s in cfg.seeds} for kind in fs.kinds}


def seed_transcoders(cfg: ProjectConfig) -> dict[str, dict[int, TranscoderJob]]:
    """Transcoders of the seeds comparison: kind -> {seed: job}, the largest dictionary of the
    baselines sweep at every entry of `seeds` (the run's own seed is the baselines job itself)."""
    if not cfg.seeds:
        return {}
    b = cfg.baselines
    n, k = max(b.n_latents), max(b.k)
    return {kind: {s: TranscoderJob(kind, n, k, seed=None if s == cfg.seed else s) for s in cfg.seeds}
            for kind in b.kinds}


def coeff_variant_name(coeff: float) -> str:
    return f"coeff_{coeff:g}"


def split_variant_name(multiplier: float) -> str:
    return f"split_{multiplier:g}x"


def seed_variant_name(seed: int) -> str:
    return f"seed_{seed}"


def seed_split_variant_name(multiplier: float, seed: int) -> str:
    return f"{split_variant_name(multiplier)}_s{seed}"


def adversary_variant_name(adversary: bool) -> str:
    return "adversary_on" if adversary else "adversary_off"


def variant_jobs(cfg: ProjectConfig) -> list[VariantJob]:
    pareto = [VariantJob(coeff_variant_name(c), "pareto", importance_minimality=c)
              for c in cfg.baselines.vpd_importance_coeffs]
    splitting = [VariantJob(split_variant_name(m), "splitting", C_multiplier=m)
                 for m in cfg.feature_splitting.c_multipliers]
    seeds = [VariantJob(seed_variant_name(s), "seed", seed=s) for s in cfg.seeds if s != cfg.seed]
    seed_splitting = [job for by_m in seed_splitting_variants(cfg).values() for job in by_m.values() if job.seed is not None]
    adversary = [VariantJob(adversary_variant_name(a), "adversary", adversary=a)
                 for a in (True, False)] if cfg.adversary_ablation.enabled else []
    return pareto + splitting + seeds + seed_splitting + adversary


def seed_splitting_variants(cfg: ProjectConfig) -> dict[int, dict[float, VariantJob]]:
    """The VPD runs of the seeds comparison's splitting ratio: {seed: {multiplier: job}} at
    `splitting_ratio_multipliers` (the run's own seed: its `splitting` variants)."""
    if not cfg.seeds:
        return {}
    ends = splitting_ratio_multipliers(cfg)
    return {s: {m: VariantJob(split_variant_name(m), "splitting", C_multiplier=m) if s == cfg.seed
                else VariantJob(seed_split_variant_name(m, s), "seed_splitting", C_multiplier=m, seed=s) for m in ends}
            for s in cfg.seeds}


def seed_runs(cfg: ProjectConfig) -> dict[int, Optional[str]]:
    """Each seed of the seeds comparison -> its variant's name (None: the main decomposition)."""
    return {s: None if s == cfg.seed else seed_variant_name(s) for s in cfg.seeds}


def seeded_transcoder_jobs(cfg: ProjectConfig) -> list[TranscoderJob]:
    """The transcoders the seeds comparison trains besides the baselines sweep (each at another seed)."""
    mmcs = [j for by_seed in seed_transcoders(cfg).values() for j in by_seed.values()]
    splitting = [j for by_seed in seed_splitting_transcoders(cfg).values() for by_n in by_seed.values() for j in by_n.values()]
    return list({j.name: j for j in mmcs + splitting if j.seed is not None}.values())


def find_transcoder(cfg: ProjectConfig, name: str) -> TranscoderJob:
    """The transcoder job called `name`; a name outside the configured sweep is a ConfigError naming them."""
    jobs = {j.name: j for j in transcoder_jobs(cfg) + seeded_transcoder_jobs(cfg)}
    if name not in jobs:
        raise ConfigError(f"transcoder {name!r} is not in the baselines sweep (kinds x n_latents x k) or the seeds "
                          f"comparison: {sorted(jobs)}")
    return jobs[name]


def find_variant(cfg: ProjectConfig, name: str) -> VariantJob:
    """The VPD variant called `name`; an unknown name is a ConfigError naming the configured ones."""
    jobs = {j.name: j for j in variant_jobs(cfg)}
    if name not in jobs:
        raise ConfigError(f"decomposition variant {name!r} is not configured (baselines.vpd_importance_coeffs, "
                         f"feature_splitting.c_multipliers, seeds and adversary_ablation give: {sorted(jobs)})")
    return jobs[name]


def variant_steps(cfg: ProjectConfig, job: VariantJob) -> int:
    """Optimisation steps of a variant (sizes its job's runtime)."""
    if job.purpose == "pareto":
        return cfg.baselines.vpd_steps or cfg.decompose.steps
    if job.purpose == "seed":
        return cfg.decompose.steps
    if job.purpose == "adversary":
        return cfg.adversary_ablation.steps or cfg.decompose.steps
    return cfg.feature_splitting.steps
