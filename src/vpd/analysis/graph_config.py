"""Configuration of the `attribution:`, `attention:` and `report:` sections of a project config."""

from __future__ import annotations

import re

from pydantic import BaseModel, ConfigDict, Field, StrictBool, field_validator, model_validator


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PromptSpec(_Strict):
    """One prompt of the attribution graphs and the next token it should predict."""

    name: str = Field(description="short label used in file names (graph_<name>.json), e.g. 'princess'")
    text: str = Field(description="the prompt, e.g. 'The princess lost'")
    target: str = Field(description="the predicted continuation, e.g. ' her' (its first token is the target logit)")

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9_-]+", v):
            raise ValueError(f"prompt name {v!r} must be letters, digits, '_' or '-' (it becomes a file name)")
        return v


class PruneVariant(_Strict):
    """Weights of the reconstruction terms when the prompt's CIs are re-optimised (plus minimality)."""

    ci_masked: float = Field(0.0, ge=0, description="loss with the CIs themselves as masks (m = g, Δ dropped)")
    stochastic: float = Field(0.0, ge=0, description="loss under stochastic masks m = g + (1-g) r (all matrices, Δ dropped)")
    adversarial: float = Field(0.0, ge=0, description="loss under masks from the PGD attack on the sources (Δ included; see pgd_persistent, attack_surface)")
    minimality_scale: float = Field(1.0, ge=0, description="this variant's minimality weight is minimality_scale x minimality_coeff")

    @model_validator(mode="after")
    def _some(self) -> "PruneVariant":
        if self.ci_masked + self.stochastic + self.adversarial <= 0:
            raise ValueError("a pruning variant needs at least one positive reconstruction weight")
        return self


def _default_prompts() -> list[PromptSpec]:
    return [
        PromptSpec(name="princess", text="The princess lost", target=" her"),
        PromptSpec(name="prince", text="The prince lost", target=" his"),
        PromptSpec(name="lady", text="The lady lost", target=" her"),
    ]


def _default_variants() -> dict[str, PruneVariant]:
    return {
        "adversarial": PruneVariant(stochastic=1.0, adversarial=1.0, minimality_scale=0.5),
        "ci_only": PruneVariant(ci_masked=1.0),
    }


class AttributionConfig(_Strict):
    """Attribution graphs over subcomponents, pruned by re-optimising one prompt's CIs."""

    prompts: list[PromptSpec] = Field(default_factory=_default_prompts, description="prompts and their target tokens")
    variants: dict[str, PruneVariant] = Field(
        default_factory=_default_variants,
        description="pruning objectives by name (file suffix; 'adversarial' is the paper's main graph, 'ci_only' its no-adversary contrast)",
    )
    loss: str = Field(
        "ce", pattern="^(ce|kl)$",
        description="reconstruction loss at the last position: 'ce' = -log P(target token) (the paper's pruned graph "
        "reaches P = 1.000 under CI masks, above the target's own 0.586), 'kl' = KL to the target's distribution",
    )
    steps: int = Field(300, ge=1, description="Adam steps re-optimising the CI pre-activations of one prompt")
    lr: float = Field(0.05, gt=0, description="Adam learning rate of the CI pre-activations")
    minimality_coeff: float = Field(0.01, ge=0, description="weight of the minimality term sum_(t,c) (g_upper + eps)^p over the decomposition's active nodes")
    p: float = Field(0.5, gt=0, le=2, description="exponent of the minimality term")
    leaky_alpha: float = Field(0.01, ge=0, description="leak of the hard-sigmoid readouts (as in decompose.leaky_alpha)")
    stochastic_samples: int = Field(4, ge=1, description="stochastic mask samples per pruning step")
    pgd_steps: int = Field(4, ge=1, description="sign-ascent steps of the attack inside each pruning step")
    pgd_step_size: float = Field(0.2, gt=0, description="sign-ascent step of the attack inside the pruning objective")
    pgd_persistent: StrictBool = Field(
        True, description="keep the objective's attack sources across pruning steps (pgd_steps more ascent steps each "
        "pruning step) instead of a fresh U(0,1) start every step")
    attack_surface: str = Field(
        "alive", pattern="^(alive|all)$",
        description="subcomponents the attack sources may move (objective and scoring; Δ always): 'alive' = those with "
        "CI > 0 on the prompt under the decomposition (the unpruned graph's nodes; the rest stay ablated, as in the paper's "
        "code), 'all' = every subcomponent. graphs.csv always also reports p_adversarial_all (the 'all' attack)")
    eval_stochastic_samples: int = Field(64, ge=1, description="stochastic samples averaged for P(target) under stochastic masks")
    eval_pgd_steps: int = Field(
        20, ge=1, description="steps of the fresh per-position PGD attack (Δ included) that scores each pruned graph, "
        "on attack_surface plus the graph's own nodes (p_adversarial) and on every subcomponent (p_adversarial_all)")
    eval_pgd_step_size: float = Field(0.1, gt=0, description="sign-ascent step of the scoring attack")
    eval_pgd_restarts: int = Field(4, ge=1, description="random restarts of the scoring attack; the worst case is reported")
    figure_links: int = Field(300, ge=1, description="strongest links drawn in each graph figure")

    def graph_stems(self) -> list[tuple[str, str, str]]:
        """(prompt name, variant, file stem): the first variant is the plain label graph_<prompt>,
        the others graph_<prompt>_<variant> (e.g. graph_princess, graph_princess_ci_only)."""
        first = next(iter(self.variants))
        return [(p.name, v, f"graph_{p.name}" if v == first else f"graph_{p.name}_{v}")
                for p in self.prompts for v in self.variants]

    @field_validator("prompts")
    @classmethod
    def _prompts(cls, v: list[PromptSpec]) -> list[PromptSpec]:
        names = [p.name for p in v]
        if not v or len(set(names)) != len(names):
            raise ValueError(f"prompts must be non-empty with distinct names, got {names}")
        return v

    @field_validator("variants")
    @classmethod
    def _variants(cls, v: dict[str, PruneVariant]) -> dict[str, PruneVariant]:
        bad = [k for k in v if not re.fullmatch(r"[A-Za-z0-9_-]+", k)]
        if not v or bad:
            raise ValueError(f"variants must be non-empty, names letters/digits/'_'/'-' (bad: {bad})")
        return v


class AttentionConfig(_Strict):
    """Attention q/k subcomponent pairs: previous-token scores, per-head norms, the RoPE interaction grid."""

    layer: int = Field(1, ge=0, description="layer of fig_qk_comp_weight_norm and fig_attn_contrib_grid (paper: layer 1)")
    max_offset: int = Field(16, ge=1, description="offsets tau = 0..max_offset of the interaction grid")
    n_sequences: int = Field(64, ge=1, description="held-out windows for mean activations, CI and attention by offset")
    batch_size: int = Field(16, ge=1, description="windows per forward pass")
    alive_threshold: float = Field(1e-3, ge=0, description="a subcomponent is alive if its mean CI over the windows exceeds this")
    top_pairs: int = Field(10, ge=1, description="pairs highlighted in fig_attn_contrib_grid and listed in attention_pairs.csv")
    ablation_position: int = Field(-1, description="query position where the previous-token q subcomponent is ablated (-1: last)")
    prev_token_offset_max: int = Field(2, ge=1, description="a pair is 'previous-token' if its mean z-score peaks at an offset in 1..this")


class ReportConfig(_Strict):
    """The papermill notebooks and results/<name>/paper/README.md."""

    execute_notebooks: StrictBool = Field(True, description="run the notebooks of notebooks/ with papermill into results/<name>/notebooks/")
    kernel_name: str = Field("python3", description="Jupyter kernel (ipykernel in the same environment provides 'python3')")
    timeout: int = Field(600, ge=10, description="seconds a notebook cell may run")
