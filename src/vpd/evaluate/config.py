"""Configuration of the `evaluate`, `feature_splitting` and `adversary_ablation` stages (their
sections of a project config)."""

from __future__ import annotations

import fnmatch
from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, field_validator


class EvaluateConfig(BaseModel):
    """Held-out evaluation of a decomposition: sparsity, mask strategies, PGD, compute recovered."""

    model_config = ConfigDict(extra="forbid")

    eval_sequences: Optional[int] = Field(
        None, ge=1,
        description="fixed held-out windows of the val shard (default: target.train.eval_sequences, "
        "the windows of the target's curve, so compute recovered compares like with like)",
    )
    batch_size: int = Field(8, ge=1, description="sequences per forward pass during evaluation")
    thresholds: list[float] = Field(
        default_factory=lambda: [0.0, 0.1, 0.5],
        description="CI thresholds tau of the 'rounded CI>tau' mask strategies and of the L0 tables",
    )
    alive_eps: float = Field(1e-6, gt=0, description="a subcomponent is alive if its mean CI over the eval tokens exceeds this")
    pgd_steps: list[int] = Field(
        default_factory=lambda: [20, 40, 80, 160, 320],
        description="PGD eval: record KL after these many sign-ascent steps (one continuous attack per batch)",
    )
    pgd_step_size: float = Field(0.1, gt=0, description="PGD eval: sign-ascent step on the sources, clamped to [0, 1]")
    pgd_batches: int = Field(2, ge=1, description="PGD eval: eval batches attacked, each with fresh shared sources")
    pgd_batch_size: Optional[int] = Field(None, ge=1, description="PGD eval: sequences per attacked batch (default: batch_size)")
    rare_fire_tokens: int = Field(
        10, ge=0,
        description="firing_counts.csv: a subcomponent fires rarely if its CI exceeds the threshold on at most this "
        "many eval tokens",
    )
    train_loss_window: int = Field(
        100, ge=1, description="vpd_losses.csv: final training loss terms are means over this many last steps",
    )
    generation_prompts: list[str] = Field(
        default_factory=lambda: ["The princess lost", "She said that", "The ship", "It was a truth"],
        description="generations showcase: greedy continuations of these prompts under the target and each mask strategy",
    )
    generation_tokens: int = Field(12, ge=0, description="generations showcase: new tokens per prompt (0 skips it)")

    @field_validator("thresholds")
    @classmethod
    def _thresholds(cls, v: list[float]) -> list[float]:
        if not v or any(not 0.0 <= t < 1.0 for t in v) or len(set(v)) != len(v):
            raise ValueError("thresholds must be distinct values in [0, 1)")
        return v

    @field_validator("pgd_steps")
    @classmethod
    def _steps(cls, v: list[int]) -> list[int]:
        if not v or any(s < 0 for s in v) or sorted(set(v)) != v:
            raise ValueError("pgd_steps must be a non-empty increasing list of step counts >= 0")
        return v


class FeatureSplittingConfig(BaseModel):
    """Feature splitting: alive units vs capacity, VPD at several C against transcoders at several sizes."""

    model_config = ConfigDict(extra="forbid")

    c_multipliers: list[float] = Field(
        default_factory=lambda: [0.5, 1.0, 2.0, 4.0],
        description="VPD runs at these multiples of each matrix's C in decompose.matrices (rounded, at least 1)",
    )
    matrices: list[str] = Field(
        default_factory=lambda: ["h.*.mlp.c_fc", "h.*.mlp.down_proj"],
        description="fnmatch patterns of the matrices decomposed in these runs (MLP matrices only; "
        "all other matrices keep their original weights)",
    )
    steps: int = Field(ge=1, description="VPD optimisation steps of each run (the rest of the schedule as in decompose)")
    faithfulness_warmup_steps: Optional[int] = Field(
        None, ge=0, description="faithfulness warm-up steps of each run (default: decompose.faithfulness_warmup_steps)"
    )
    batch_size: Optional[int] = Field(None, ge=1, description="sequences per step of each run (default: decompose.batch_size)")
    seq_len: Optional[int] = Field(None, ge=2, description="tokens per sequence of each run (default: decompose.seq_len)")
    kinds: list[Literal["plt", "clt"]] = Field(
        default_factory=lambda: ["plt", "clt"], description="transcoder kinds compared (taken from the baselines stage)"
    )
    n_latents: list[int] = Field(
        description="transcoder dictionary sizes compared; each must be in baselines.n_latents (the trained "
        "transcoders of the baselines stage are reused)"
    )
    k: int = Field(ge=1, description="BatchTopK k of the compared transcoders; must be in baselines.k")
    cosine_threshold: float = Field(
        0.5, gt=0, lt=1,
        description="a unit of one run has a match in another if some unit there has cosine > this "
        "(VPD: of the rank-one matrices U_c V_c^T; transcoders: of the decoder vectors)",
    )

    @field_validator("c_multipliers")
    @classmethod
    def _multipliers(cls, v: list[float]) -> list[float]:
        if len(v) < 2 or any(m <= 0 for m in v) or sorted(set(v)) != v:
            raise ValueError("c_multipliers must be at least two increasing positive values")
        return v

    @field_validator("matrices")
    @classmethod
    def _mlp_only(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError("feature_splitting.matrices must list at least one pattern")
        bad = [p for p in v if not fnmatch.fnmatchcase(p.split(".", 2)[-1] if p.startswith("h.") else p, "mlp.*")]
        if bad:
            raise ValueError(f"feature_splitting.matrices must name MLP matrices (h.<layer>.mlp.*), got {bad}")
        return v

    @field_validator("n_latents")
    @classmethod
    def _sizes(cls, v: list[int]) -> list[int]:
        if len(v) < 2 or any(n < 1 for n in v) or sorted(set(v)) != v:
            raise ValueError("n_latents must be at least two increasing positive dictionary sizes")
        return v


class AdversaryAblationConfig(BaseModel):
    """The adversary's contribution: CE with every ablated subcomponent at one fixed source value r
    (mask CI + (1 - CI) r, Δ at r), for a VPD run and the same run without the adversary."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(True, description="train the two runs and compare them (false skips the comparison)")
    steps: Optional[int] = Field(
        None, ge=1, description="VPD optimisation steps of each of the two runs (default: decompose.steps); the rest "
        "of the schedule as in decompose, the adversary-free run with coeffs.adversarial_recon 0",
    )
    source_values: list[float] = Field(
        default_factory=lambda: [0.0, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0],
        description="fixed source values r in [0, 1]: 0 ablates every subcomponent down to its CI, 1 is the target",
    )

    @field_validator("source_values")
    @classmethod
    def _in_unit_interval(cls, v: list[float]) -> list[float]:
        if not v or any(not 0.0 <= r <= 1.0 for r in v):
            raise ValueError(f"source_values must be a non-empty list of values in [0, 1], got {v}")
        return sorted(set(v))

