"""Entry points of the two data stages (`python -m vpd corpus|tokenizer`).

Each writes its outputs atomically and `final_config.yaml` last, holding the config sections it
used, so a complete `final_config.yaml` marks a finished stage.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from vpd.config import ProjectConfig
from vpd.data.corpus import build_corpus
from vpd.data.tokenizer import build_tokenizer
from vpd.utils.io import write_yaml


log = logging.getLogger("vpd")


def run_corpus(cfg: ProjectConfig, out_dir: Path) -> None:
    """Fetch the enabled sources and write train/val jsonl, manifest.json and stats.json."""
    out_dir = Path(out_dir)
    t0 = time.perf_counter()
    stats = build_corpus(cfg.corpus, cfg.seed, out_dir)
    t = stats["total"]
    log.info("corpus stage done in %.1f s: %d documents, %d bytes, emoticons %s",
             time.perf_counter() - t0, t["documents"], t["bytes"], t["emoticons"])
    write_yaml(out_dir / "final_config.yaml",
               {"name": cfg.name, "seed": cfg.seed, "corpus": cfg.corpus.model_dump(mode="json")})


def run_tokenizer(cfg: ProjectConfig, corpus_dir: Path, out_dir: Path) -> None:
    """Train the BPE tokenizer on `corpus_dir/train.jsonl` and write the uint16 token shards."""
    out_dir = Path(out_dir)
    t0 = time.perf_counter()
    meta = build_tokenizer(cfg.tokenizer, corpus_dir, out_dir)
    log.info("tokenizer stage done in %.1f s: %d train / %d val tokens",
             time.perf_counter() - t0, meta["n_tokens"]["train"], meta["n_tokens"]["val"])
    write_yaml(out_dir / "final_config.yaml",
               {"name": cfg.name, "seed": cfg.seed, "corpus_dir": str(corpus_dir),
                "tokenizer": cfg.tokenizer.model_dump(mode="json")})
