"""Configuration of the `baselines` stage (the `baselines:` section of a project config)."""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, field_validator


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TranscoderTrainConfig(_Strict):
    """How every transcoder is trained (shared by PLT and CLT)."""

    steps: int = Field(ge=1, description="Adam steps; each step streams one batch of target activations")
    batch_size: int = Field(8, ge=1, description="sequences per step (tokens per step = batch_size x seq_len)")
    seq_len: Optional[int] = Field(None, ge=2, description="tokens per training sequence (default: target context)")
    lr: float = Field(1e-3, gt=0, description="Adam learning rate (constant after warm-up, linear decay over the last 20%)")
    warmup_steps: int = Field(20, ge=0, description="linear learning-rate warm-up steps")
    betas: tuple[float, float] = Field((0.9, 0.999), description="Adam betas")
    auxk_coeff: float = Field(1 / 32, ge=0, description="weight of the AuxK dead-latent loss")
    k_aux: Optional[int] = Field(None, ge=1, description="latents used by AuxK (default: d_model // 2)")
    dead_tokens: int = Field(
        100_000, ge=1, description="a latent is dead if it has not fired in this many training tokens"
    )
    threshold_momentum: float = Field(
        0.99, ge=0, lt=1, description="EMA momentum of the BatchTopK inference threshold (min kept activation)"
    )


class BaselinesConfig(_Strict):
    """Transcoder baselines and the sparsity-vs-CE Pareto comparison with VPD."""

    kinds: list[Literal["plt", "clt"]] = Field(
        default_factory=lambda: ["plt", "clt"], description="per-layer (plt) and/or cross-layer (clt) transcoders"
    )
    n_latents: list[int] = Field(description="dictionary sizes (latents per layer) swept")
    k: list[int] = Field(description="BatchTopK k (mean active latents per token per layer) swept")
    train: TranscoderTrainConfig = Field(description="training schedule shared by every transcoder")
    inference: Literal["threshold", "batchtopk"] = Field(
        "threshold", description="sparsity at evaluation: the learned per-token threshold, or batch top-k"
    )
    vpd_thresholds: list[float] = Field(
        default_factory=lambda: [0.0, 0.1, 0.5],
        description="VPD Pareto points: MLP matrices masked with CI > tau, attention at original weights, Δ dropped",
    )
    vpd_importance_coeffs: list[float] = Field(
        default_factory=list,
        description="extra VPD runs along decompose.coeffs.importance_minimality tracing the VPD curve (empty: the main run only)",
    )
    vpd_steps: Optional[int] = Field(
        None, ge=1, description="optimisation steps of each extra VPD run (default: decompose.steps)"
    )

    @field_validator("vpd_importance_coeffs")
    @classmethod
    def _coeffs(cls, v: list[float]) -> list[float]:
        if any(c < 0 for c in v) or len(set(v)) != len(v):
            raise ValueError("vpd_importance_coeffs must be distinct values >= 0")
        return v

    @field_validator("n_latents", "k")
    @classmethod
    def _positive(cls, v: list[int]) -> list[int]:
        if not v or any(x < 1 for x in v) or len(set(v)) != len(v):
            raise ValueError("must be a non-empty list of distinct positive integers")
        return v
