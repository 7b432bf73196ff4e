"""Configuration of a decomposition (the `decompose:` section of a project config).

Every key maps to a term of the method (../shared/docs/vpd-method.md sections 1-3). The seed,
numeric precision and CPU threads are project-level keys (`ProjectConfig.seed`, `.precision`,
`.threads`) and are passed to `vpd.decomp.decompose` by the caller.
"""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, StrictBool, model_validator


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class MatrixSpec(_Strict):
    """One group of decomposed matrices."""

    pattern: str = Field(description="fnmatch pattern over nn.Linear module names, e.g. 'h.*.mlp.c_fc'")
    C: int = Field(ge=1, description="subcomponents per matched matrix")


class CIFunctionConfig(_Strict):
    """The causal-importance function (method section 2)."""

    kind: Literal["global_transformer", "per_matrix_mlp"] = Field(
        "global_transformer", description="the paper's global transformer over all matrices, or SPD's small MLP per matrix"
    )
    d_model: int = Field(128, ge=8, description="global_transformer width")
    n_blocks: int = Field(2, ge=1, description="global_transformer pre-norm blocks (bidirectional RoPE attention + GELU MLP)")
    n_heads: int = Field(4, ge=1, description="global_transformer attention heads (head size must be even)")
    d_mlp: int = Field(512, ge=8, description="global_transformer MLP hidden width")
    hidden: list[int] = Field(default_factory=lambda: [64], description="per_matrix_mlp hidden widths")
    rope_base: float = Field(10000.0, gt=0, description="global_transformer RoPE base (bidirectional attention)")

    @model_validator(mode="after")
    def _heads(self) -> "CIFunctionConfig":
        if self.kind == "global_transformer" and (self.d_model % self.n_heads or (self.d_model // self.n_heads) % 2):
            raise ValueError(f"ci_fn.d_model {self.d_model} must split into {self.n_heads} heads of even size (RoPE)")
        return self


class PGDConfig(_Strict):
    """Persistent adversary (training) and the PGD evaluation attack."""

    lr: float = Field(0.01, gt=0, description="Adam lr of the persistent sources (after warm-up)")
    betas: tuple[float, float] = Field((0.5, 0.99), description="Adam betas of the source ascent")
    eps: float = Field(1e-8, gt=0, description="Adam epsilon of the source updates")
    warmup_frac: float = Field(0.025, ge=0, le=1, description="linear lr warm-up, fraction of `steps`")
    n_warmup_ascents: int = Field(2, ge=0, description="ascent updates on each batch before the main loss")
    eval_steps: int = Field(20, ge=0, description="sign-ascent steps of the periodic PGD eval (0: off)")
    eval_step_size: float = Field(0.1, gt=0, description="step of the PGD eval's sign ascent")


class LossCoefficients(_Strict):
    """Coefficients of the four loss terms (method section 3)."""

    faithfulness: float = Field(1e7, ge=0, description="Δ-L2: mean of (W - (VU)^T)^2 over all decomposed parameters")
    stochastic_recon: float = Field(0.5, ge=0, description="output loss under stochastic masks with k-subset routing")
    adversarial_recon: float = Field(0.5, ge=0, description="output loss under the persistent adversary's masks; 0 disables the adversary")
    importance_minimality: float = Field(2e-4, ge=0, description="importance + frequency minimality of the upper-leaky CI")


class DecompositionConfig(_Strict):
    """The `decompose:` section: what to decompose and how (seed/precision/threads are project keys)."""

    matrices: list[MatrixSpec] = Field(description="nn.Linear patterns and C per pattern; a pattern matching nothing is an error")
    ci_fn: CIFunctionConfig = Field(default_factory=CIFunctionConfig)
    coeffs: LossCoefficients = Field(default_factory=LossCoefficients)
    pgd: PGDConfig = Field(default_factory=PGDConfig)
    steps: int = Field(ge=1, description="main-loop optimiser steps (after the faithfulness warm-up)")
    batch_size: int = Field(ge=1, description="sequences per step (fixed: the persistent adversary has one source per position)")
    seq_len: Optional[int] = Field(None, ge=2, description="tokens per sequence (default: target context)")
    lr: float = Field(5e-5, gt=0, description="AdamW lr over U, V and the CI function (no weight decay)")
    lr_min_frac: float = Field(0.1, ge=0, le=1, description="cosine schedule ends at lr * lr_min_frac")
    grad_clip_components: float = Field(0.01, gt=0, description="gradient-norm clip on U, V only")
    faithfulness_warmup_steps: int = Field(400, ge=0, description="AdamW steps on Δ-L2 alone before the main loop")
    faithfulness_warmup_lr: float = Field(1e-3, gt=0, description="lr of the faithfulness warm-up")
    p_start: float = Field(2.0, gt=0, description="minimality exponent p at the first step (linear anneal)")
    p_end: float = Field(0.4, gt=0, description="minimality exponent p at the last step")
    frequency_beta: float = Field(0.5, ge=0, description="weight of the frequency (log2) part of minimality")
    importance_eps: float = Field(1e-12, ge=0, description="added to CI before the power p")
    leaky_alpha: float = Field(0.01, ge=0, description="slope of the leaky hard sigmoids outside [0, 1]")
    routing: Literal["uniform_k_subset", "all"] = Field(
        "uniform_k_subset", description="stochastic loss: per-token random k-subset of matrices, or all"
    )
    output_loss: Literal["kl", "mse"] = Field("kl", description="kl on logits for LMs, mse for other targets (toy models)")
    log_every: int = Field(10, ge=1, description="steps between training records in metrics.jsonl")
    eval_every: int = Field(100, ge=1, description="steps between the short evals (L0, alive, KL/CE per mask, PGD)")
    eval_batch_size: Optional[int] = Field(None, ge=1, description="sequences in the fixed eval batch (default batch_size)")
    alive_threshold: float = Field(1e-6, ge=0, description="alive: mean CI over eval tokens above this")
    checkpoint_every: int = Field(250, ge=1, description="steps between resumable checkpoints")
    checkpoint_keep: int = Field(2, ge=1, description="newest checkpoints kept on disk")
    fused_kernels: StrictBool = Field(
        False, description="compile the elementwise work over the [B, T, ΣC] tensors and the masked forward into fused "
        "kernels (torch.compile; the first step of each process compiles, from tens of seconds to minutes, less when "
        "torch's on-disk cache holds the same shapes; then faster steps; falls back to eager if compiling fails)"
    )
    fused_kernels_min_steps: int = Field(
        0, ge=0, description="with fused_kernels, compile only runs of at least this many steps and run shorter ones (e.g. "
        "the sweeps' variants) eagerly: a compile costs minutes per new shape on a CPU and saves a fraction of a second "
        "per step, so short runs do not repay it (benchmarks/RESULTS.md, variant_compile.py)"
    )
    world_size: int = Field(1, ge=1, description="processes (torchrun, one rank per process; batch_size is the global batch and must divide evenly); also scales the frequency term")

    @model_validator(mode="after")
    def _consistent(self) -> "DecompositionConfig":
        if not self.matrices:
            raise ValueError("decompose.matrices must list at least one {pattern, C}")
        for key in ("batch_size", "eval_batch_size"):
            n = getattr(self, key)
            if n is not None and n % self.world_size:
                raise ValueError(f"decompose.{key} {n} does not split evenly over decompose.world_size {self.world_size}")
        return self

    @property
    def compiles(self) -> bool:
        """Whether this run uses the compiled (fused) kernels."""
        return self.fused_kernels and self.steps >= self.fused_kernels_min_steps

    @classmethod
    def from_dict(cls, d: dict) -> "DecompositionConfig":
        return cls.model_validate(d)

    def to_dict(self) -> dict:
        return self.model_dump(mode="json")
