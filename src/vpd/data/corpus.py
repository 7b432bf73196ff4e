"""Build the text corpus: fetch the enabled sources, clean, deduplicate, cap, split, write.

Outputs (in `out_dir`): `train.jsonl` and `val.jsonl` (one {"text", "source"} per line),
`manifest.json` (where every source came from: version, sha256, licence, cache file, counts) and
`stats.json` (bytes, words, documents and the probe counts used later: emoticons, "princess",
"her"), and `pronoun_support.csv` (how often the training split pairs each probe noun with a
pronoun of its gender, `vpd.data.pronoun_support`). Every random choice (document caps, byte cap, the train/val split) comes from a generator
seeded by the project seed and the source name, so the same config gives the same files.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import re
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np
from tqdm import tqdm

from vpd.config import CorpusConfig, CorpusSource
from vpd.data.pronoun_support import support_table
from vpd.data.sources import FetchedSource, fetch_source
from vpd.utils.errors import UserError
from vpd.utils.io import atomic_path, write_csv, write_json

log = logging.getLogger("vpd")

# Probe strings counted in stats.json. An emoticon counts when no letter or digit touches it on
# either side, so ":o" in "mailto:owner" or ":P" in "Re:Patch" are not emoticons.
EMOTICONS = (":)", ";)", ":(", ":o", ":P")
_EMOTICON_RES = {e: re.compile(r"(?<![A-Za-z0-9])" + re.escape(e) + r"(?![A-Za-z0-9])") for e in EMOTICONS}
# Any face (eye, optional nose, mouth) not touching a letter or digit: documents holding one form
# their own split stratum (corpus.emoticon_val_fraction), so the held-out chat context is not tiny.
_FACE_RE = re.compile(r"(?<![A-Za-z0-9])[:;=]-?[)(DPpoO](?![A-Za-z0-9])")
_PRINCESS_RE = re.compile(r"princess", re.I)  # substring, any case ("Princesses" counts)
_HER_RE = re.compile(r"\bher\b", re.I)  # the word only ("Her" counts, "here" does not)


class CorpusError(UserError, RuntimeError):
    """The corpus cannot be built as configured; the message says which setting to change."""


@dataclass(frozen=True)
class Document:
    text: str
    source: str


# --------------------------------------------------------------------------------------------
# Cleaning


_HSPACE = re.compile(r"[^\S\n]+")  # any whitespace except newline
_NEWLINES = re.compile(r"\n{2,}")
_CONTROL = re.compile(r"[\x00-\x08\x0e-\x1f\x7f]")  # C0 controls other than whitespace


def normalize_whitespace(text: str) -> str:
    """Collapse runs of spaces/tabs to one space, blank-line runs to a single "\\n", strip lines."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = _CONTROL.sub("", text)
    text = _HSPACE.sub(" ", text)
    text = "\n".join(line.strip() for line in text.split("\n"))
    return _NEWLINES.sub("\n", text).strip()


def clean_documents(texts: Iterable[str], min_chars: int) -> list[str]:
    """The texts with whitespace normalised, those shorter than `min_chars` dropped, in order."""
    cleaned = (normalize_whitespace(t) for t in texts)
    return [t for t in cleaned if len(t) >= min_chars]


def text_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


# --------------------------------------------------------------------------------------------
# Seeded selection


def _rng(seed: int, label: str) -> np.random.Generator:
    """A generator that depends only on the project seed and a label (stable across runs)."""
    return np.random.default_rng([seed % (2**63), zlib.crc32(label.encode("utf-8"))])


def sample_documents(docs: list[Document], k: int, seed: int, label: str) -> list[Document]:
    """At most `k` documents chosen at random (seeded), kept in their original order."""
    if len(docs) <= k:
        return list(docs)
    keep = np.sort(_rng(seed, label).choice(len(docs), size=k, replace=False))
    return [docs[i] for i in keep]


def cap_bytes(docs: list[Document], max_bytes: int, seed: int) -> list[Document]:
    """A seeded random subset of whole documents with at most `max_bytes` UTF-8 bytes in all."""
    sizes = [len(d.text.encode("utf-8")) for d in docs]
    if sum(sizes) <= max_bytes:
        return list(docs)
    chosen, total = [], 0
    for i in _rng(seed, "max_bytes").permutation(len(docs)):
        if total + sizes[i] <= max_bytes:
            chosen.append(i)
            total += sizes[i]
    if not chosen:
        raise CorpusError(f"corpus.max_bytes = {max_bytes} is smaller than every document: raise it")
    return [docs[i] for i in sorted(chosen)]


def has_face(text: str) -> bool:
    return _FACE_RE.search(text) is not None


def split_documents(
    docs: list[Document], val_fraction: float, seed: int, emoticon_val_fraction: float | None = None
) -> tuple[list[Document], list[Document]]:
    """Split by document, stratified by source: each source gives round(val_fraction * n) of its
    documents to validation (never all of them); at least one validation document overall.

    With `emoticon_val_fraction`, a source's documents that hold an emoticon form a stratum of
    their own that gives that fraction to validation instead."""
    if len(docs) < 2:
        raise CorpusError(f"the corpus has {len(docs)} document(s); at least 2 are needed for a train/val split")
    by_stratum: dict[str, list[int]] = {}
    for i, d in enumerate(docs):
        key = d.source + (":emoticon" if emoticon_val_fraction is not None and has_face(d.text) else "")
        by_stratum.setdefault(key, []).append(i)
    val_idx: set[int] = set()
    for name, idx in by_stratum.items():
        fraction = emoticon_val_fraction if name.endswith(":emoticon") else val_fraction
        n_val = min(math.floor(fraction * len(idx) + 0.5), len(idx) - 1)
        if n_val > 0:
            val_idx.update(int(i) for i in _rng(seed, f"split:{name}").choice(idx, size=n_val, replace=False))
    if not val_idx:  # tiny corpus: take one document of the largest source
        name, idx = max(by_stratum.items(), key=lambda kv: len(kv[1]))
        val_idx.add(int(_rng(seed, f"split:{name}").choice(idx)))
    train = [d for i, d in enumerate(docs) if i not in val_idx]
    val = [d for i, d in enumerate(docs) if i in val_idx]
    return train, val


# --------------------------------------------------------------------------------------------
# Statistics


def _empty_stats() -> dict:
    return {"documents": 0, "bytes": 0, "words": 0, "emoticons": {e: 0 for e in EMOTICONS}, "princess": 0, "her": 0}


def _doc_stats(text: str) -> dict:
    return {
        "documents": 1,
        "bytes": len(text.encode("utf-8")),
        "words": len(text.split()),
        "emoticons": {e: len(p.findall(text)) for e, p in _EMOTICON_RES.items()},
        "princess": len(_PRINCESS_RE.findall(text)),
        "her": len(_HER_RE.findall(text)),
    }


def _add(total: dict, part: dict) -> None:
    for k, v in part.items():
        if isinstance(v, dict):
            _add(total[k], v)
        else:
            total[k] += v


def text_stats(texts: Iterable[str]) -> dict:
    """Documents, UTF-8 bytes, whitespace-separated words and probe counts over `texts`."""
    out = _empty_stats()
    for t in texts:
        _add(out, _doc_stats(t))
    return out


def corpus_stats(train: list[Document], val: list[Document]) -> dict:
    """Stats per split, in total and per source (each document is scanned once)."""
    out = {"train": _empty_stats(), "val": _empty_stats(), "total": _empty_stats(), "sources": {}}
    for split, docs in (("train", train), ("val", val)):
        for d in tqdm(docs, desc=f"stats {split}", unit="doc", disable=None, leave=False):
            st = _doc_stats(d.text)
            _add(out[split], st)
            _add(out["total"], st)
            _add(out["sources"].setdefault(d.source, _empty_stats()), st)
    return out


# --------------------------------------------------------------------------------------------
# Building


def prepare_corpus(
    fetched: list[FetchedSource], cfg: CorpusConfig, seed: int
) -> tuple[list[Document], list[Document], dict]:
    """Clean, deduplicate, cap and split fetched documents; returns (train, val, manifest)."""
    seen: set[str] = set()
    per_source: list[tuple[FetchedSource, dict, list[Document]]] = []
    for f in fetched:
        name = f.source.name
        long_enough = clean_documents(f.documents, cfg.min_doc_chars)
        unique = []
        for t in long_enough:  # exact duplicates, across all sources; the first occurrence wins
            h = text_hash(t)
            if h not in seen:
                seen.add(h)
                unique.append(Document(t, name))
        capped = unique
        if f.source.max_documents is not None:
            capped = sample_documents(unique, f.source.max_documents, seed, f"max_documents:{name}")
        entry = f.manifest()
        entry.update(
            documents_after_cleaning=len(long_enough),
            documents_after_dedup=len(unique),
            documents_after_max_documents=len(capped),
        )
        per_source.append((f, entry, capped))
        log.info("source %s: %d extracted, %d >= %d chars, %d unique, %d kept",
                 name, len(f.documents), len(long_enough), cfg.min_doc_chars, len(unique), len(capped))

    docs = [d for _, _, capped in per_source for d in capped]
    if cfg.max_bytes is not None:
        docs = cap_bytes(docs, cfg.max_bytes, seed)
    if not docs:
        names = [f.source.name for f in fetched] or "none enabled"
        raise CorpusError(
            f"the corpus is empty (sources: {names}): enable a source, or lower corpus.min_doc_chars "
            f"({cfg.min_doc_chars})"
        )
    train, val = split_documents(docs, cfg.val_fraction, seed, cfg.emoticon_val_fraction)

    sources = []
    for f, entry, _ in per_source:
        name = f.source.name
        kept = [d for d in docs if d.source == name]
        entry.update(
            documents=len(kept),
            bytes=sum(len(d.text.encode("utf-8")) for d in kept),
            train_documents=sum(d.source == name for d in train),
            val_documents=sum(d.source == name for d in val),
        )
        sources.append(entry)
    manifest = {
        "seed": seed,
        "val_fraction": cfg.val_fraction,
        "emoticon_val_fraction": cfg.emoticon_val_fraction,
        "min_doc_chars": cfg.min_doc_chars,
        "max_bytes": cfg.max_bytes,
        "sources": sources,
        "documents": {"train": len(train), "val": len(val)},
    }
    return train, val, manifest


def write_jsonl(path: Path, docs: list[Document]) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as fh:
        for d in docs:
            fh.write(json.dumps({"text": d.text, "source": d.source}, ensure_ascii=False) + "\n")


def fetch_all(cfg: CorpusConfig, fetch: Callable[[CorpusSource, str], FetchedSource] = fetch_source) -> list[FetchedSource]:
    """Fetch every enabled source (all of them before anything is written)."""
    enabled = [s for s in cfg.sources if s.enabled]
    names = [s.name for s in enabled]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise CorpusError(f"corpus.sources: names must be unique among enabled sources, repeated: {dupes}")
    if not enabled:
        raise CorpusError("corpus.sources: no source is enabled, so the corpus would be empty")
    return [fetch(s, cfg.cache_dir) for s in tqdm(enabled, desc="fetch sources", unit="source", disable=None)]


def build_corpus(
    cfg: CorpusConfig,
    seed: int,
    out_dir: str | Path,
    fetch: Callable[[CorpusSource, str], FetchedSource] = fetch_source,
) -> dict:
    """Fetch, prepare and write the corpus to `out_dir`; returns the stats. Nothing is written
    unless every source was fetched and verified."""
    out_dir = Path(out_dir)
    fetched = fetch_all(cfg, fetch)
    train, val, manifest = prepare_corpus(fetched, cfg, seed)
    stats = corpus_stats(train, val)
    write_jsonl(out_dir / "train.jsonl", train)
    write_jsonl(out_dir / "val.jsonl", val)
    write_json(out_dir / "manifest.json", manifest)
    write_json(out_dir / "stats.json", stats)
    write_csv(out_dir / "pronoun_support.csv", support_table(d.text for d in train))
    t = stats["total"]
    log.info("corpus: %d documents (%d train / %d val), %.1f MB, %d words -> %s",
             t["documents"], len(train), len(val), t["bytes"] / 1e6, t["words"], out_dir)
    return stats


def iter_jsonl_texts(path: str | Path) -> Iterator[str]:
    """Stream the texts of a corpus split file, one document at a time."""
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                yield json.loads(line)["text"]
