"""Configuration of the application stages: the `harvest:` and `edit:` sections of a project config."""

from __future__ import annotations

from typing import Optional

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class HarvestConfig(BaseModel):
    """One pass over held-out tokens recording what every subcomponent fires on (feeds the browser)."""

    model_config = ConfigDict(extra="forbid")

    n_windows: int = Field(256, ge=1, description="fixed, evenly spaced held-out windows of the val shard to harvest")
    batch_size: int = Field(16, ge=1, description="windows per forward pass")
    seq_len: Optional[int] = Field(None, ge=2, description="tokens per window (default: decompose.seq_len, else the target's context)")
    fire_threshold: float = Field(
        0.1, ge=0, lt=1,
        description="a subcomponent 'fires' at a token when its CI exceeds this (examples and token statistics); "
        "densities are recorded at CI > 0 and at this threshold",
    )
    n_examples: int = Field(20, ge=1, description="uniform reservoir sample of firing tokens kept per subcomponent")
    context: int = Field(20, ge=0, description="tokens shown on each side of a firing token in an example")
    top_k_tokens: int = Field(10, ge=1, description="input and next tokens listed per subcomponent, by recall and by PMI")
    pmi_min_count: int = Field(2, ge=1, description="a token needs at least this many co-firings to be ranked by PMI")


class EditConfig(BaseModel):
    """Emoticon edit: find the subcomponents that fire on emoticon eyes, edit one, compare with rank-1 LoRA."""

    model_config = ConfigDict(extra="forbid")

    eyes: list[str] = Field(
        default_factory=lambda: [":", ";", "="],
        description="eye characters; their leading-space token variants (e.g. 'Ġ:') count too where the vocabulary has them",
    )
    mouths: list[str] = Field(
        default_factory=lambda: [")", "(", "D", "P", "o", "p", "O"],
        description="mouth tokens: an eye followed by one of these (and then a word boundary) is an emoticon eye",
    )
    target_token: str = Field("o", description="the token whose probability the edit raises where the subcomponent fires")
    matrices: list[str] = Field(
        default_factory=lambda: ["h.*.mlp.down_proj", "h.*.attn.o_proj"],
        description="fnmatch patterns of the candidate matrices; they must write to the residual stream (d_out = d_model), "
        "because the edit writes the unembedding direction of target_token",
    )
    fire_threshold: float = Field(0.1, ge=0, lt=1, description="CI above which a subcomponent counts as firing")
    seq_len: Optional[int] = Field(None, ge=8, description="tokens per emoticon window (default: decompose.seq_len, else the target's context)")
    context: int = Field(20, ge=1, description="surrounding KL: non-firing tokens within this many positions of the eye")
    n_negatives: int = Field(2000, ge=10, description="other uses of the eye characters sampled (seeded) for the precision/recall ranking")
    min_eval_windows: int = Field(
        20, ge=1,
        description="if the val shard holds fewer emoticon windows than this, train documents holding emoticons are split "
        "(by document, seeded) into train and eval until eval has this many",
    )
    alphas: list[float] = Field(
        default_factory=lambda: [1.5, 2.0, 3.0, 4.0, 5.0, 6.0],
        description="edit strengths swept: U_c is replaced by sign * alpha * u_o / ||u_o||",
    )
    reference_alpha: float = Field(3.0, gt=0, description="alpha of the heatmap figure and of the numerical sign check")
    lora_lambdas: list[float] = Field(
        default_factory=lambda: [0.1, 1.0, 10.0, 100.0], description="LoRA baseline: weights of the KL term elsewhere"
    )
    lora_reference_lambda: float = Field(10.0, gt=0, description="lambda of the LoRA shown in the heatmap figure")
    lora_n_small: int = Field(10, ge=1, description="LoRA baseline trained on this many windows (and on all of them)")
    lora_steps: int = Field(200, ge=1, description="LoRA optimiser steps")
    lora_lr: float = Field(0.01, gt=0, description="LoRA Adam learning rate")
    lora_batch_size: int = Field(32, ge=1, description="LoRA windows per step (all when fewer)")
    global_windows: int = Field(64, ge=1, description="ordinary val windows scoring the global KL")
    batch_size: int = Field(16, ge=1, description="windows per forward pass during evaluation")
    heatmap_windows: int = Field(3, ge=1, description="held-out windows shown in fig_model-editing-heatmap")

    @field_validator("eyes", "mouths")
    @classmethod
    def _non_empty(cls, v: list[str]) -> list[str]:
        if not v or any(not s for s in v):
            raise ValueError("must be a non-empty list of non-empty strings")
        return v

    @field_validator("alphas", "lora_lambdas")
    @classmethod
    def _positive(cls, v: list[float]) -> list[float]:
        if not v or any(x <= 0 for x in v):
            raise ValueError("must be a non-empty list of positive values")
        return v

    @model_validator(mode="after")
    def _references(self) -> "EditConfig":
        if self.reference_alpha not in self.alphas:
            raise ValueError(f"edit.reference_alpha {self.reference_alpha} must be one of edit.alphas {self.alphas}")
        if self.lora_reference_lambda not in self.lora_lambdas:
            raise ValueError(
                f"edit.lora_reference_lambda {self.lora_reference_lambda} must be one of edit.lora_lambdas {self.lora_lambdas}"
            )
        return self
