"""Configuration of a decomposition (the `decompose:` section of a project config)."""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict, Field


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class MatrixSpec(_Strict):
    pattern: str = Field(description="fnmatch pattern over nn.Linear module names, e.g. 'h.*.mlp.c_fc'")
    C: int = Field(ge=1, description="subcomponents per matched matrix")


class CIFunctionConfig(_Strict):
    kind: Literal["global_transformer", "per_matrix_mlp"] = "global_transformer"
    d_model: int = Field(128, ge=8, description="global_transformer width")
    n_blocks: int = Field(2, ge=1)
    n_heads: int = Field(4, ge=1)
    d_mlp: int = Field(512, ge=8)
    hidden: list[int] = Field(default_factory=lambda: [64], description="per_matrix_mlp hidden widths")


class PGDConfig(_Strict):
    lr: float = Field(0.01, gt=0)
    betas: tuple[float, float] = (0.5, 0.99)
    warmup_frac: float = Field(0.025, ge=0, le=1)
    n_warmup_ascents: int = Field(2, ge=0)


class LossCoefficients(_Strict):
    faithfulness: float = 1e7
    stochastic_recon: float = 0.5
    adversarial_recon: float = 0.5
    importance_minimality: float = 2e-4


class DecompositionConfig(_Strict):
    matrices: list[MatrixSpec]
    ci_fn: CIFunctionConfig = Field(default_factory=CIFunctionConfig)
    coeffs: LossCoefficients = Field(default_factory=LossCoefficients)
    pgd: PGDConfig = Field(default_factory=PGDConfig)
    steps: int = Field(ge=1)
    batch_size: int = Field(ge=1)
    seq_len: Optional[int] = Field(None, ge=2, description="tokens per sequence (default: target context)")
    lr: float = Field(5e-5, gt=0)
    lr_min_frac: float = Field(0.1, ge=0, le=1)
    grad_clip_components: float = Field(0.01, gt=0)
    faithfulness_warmup_steps: int = Field(400, ge=0)
    faithfulness_warmup_lr: float = Field(1e-3, gt=0)
    p_start: float = 2.0
    p_end: float = 0.4
    frequency_beta: float = 0.5
    leaky_alpha: float = 0.01
    output_loss: Literal["kl", "mse"] = "kl"
    eval_every: int = Field(100, ge=1)
    checkpoint_every: int = Field(250, ge=1)
    world_size: int = Field(1, ge=1)

    @classmethod
    def from_dict(cls, d: dict) -> "DecompositionConfig":
        return cls.model_validate(d)
