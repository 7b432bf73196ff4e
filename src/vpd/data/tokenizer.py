"""Byte-level BPE tokenizer: train on the corpus's train split, encode both splits to uint16 shards.

Pre-tokenisation first isolates every punctuation or symbol character (with the space before it,
if any), so no merge can cross one: " :)" is always "Ġ:" + ")" and ";)", ":P", ":o", "=D" split
the same way. The emoticon experiments need the eyes and the mouth as separate tokens. GPT-2
style byte-level splitting follows. There is no normaliser and every byte has a token, so
decoding returns the text exactly.

Outputs (in `out_dir`): `tokenizer.json`, `train.bin` and `val.bin` (flat uint16 token ids,
documents joined by the end-of-text token, read by `vpd.data.tokens.TokenShard`) and `meta.json`.
"""

from __future__ import annotations

import itertools
import logging
import sys
import time
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
from tqdm import tqdm

from vpd.config import TokenizerConfig
from vpd.data.corpus import iter_jsonl_texts
from vpd.utils.errors import UserError
from vpd.utils.io import atomic_path, sha256_file, write_json

log = logging.getLogger("vpd")

# One punctuation/symbol character (not a letter, digit or whitespace), with an optional space.
PUNCT_ISOLATE = r" ?[^\p{L}\p{N}\s]"
MAX_UINT16_VOCAB = 65535  # config bound: ids 0..65534 fit uint16


class TokenizerError(UserError, RuntimeError):
    """The tokenizer cannot be trained or used as configured; the message says what to change."""


def new_tokenizer() -> Tokenizer:
    """An untrained byte-level BPE with punctuation isolated."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PUNCT_ISOLATE), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    return tok


def _batches(items: Iterable, size: int) -> Iterator[list]:
    it = iter(items)
    while batch := list(itertools.islice(it, size)):
        yield batch


def train_tokenizer(texts: Iterable[str], cfg: TokenizerConfig, length: int | None = None) -> Tokenizer:
    """Train on `texts` (streamed once). The vocabulary must come out at exactly `cfg.vocab_size`."""
    tok = new_tokenizer()
    trainer = trainers.BpeTrainer(
        vocab_size=cfg.vocab_size,
        min_frequency=cfg.min_frequency,
        special_tokens=[cfg.end_of_text],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=sys.stderr.isatty(),
    )
    n_batches = None if length is None else -(-length // 1000)
    tok.train_from_iterator(_batches(texts, 1000), trainer=trainer, length=n_batches)
    size = tok.get_vocab_size(with_added_tokens=True)
    if size > MAX_UINT16_VOCAB:
        raise TokenizerError(f"trained vocabulary has {size} tokens; uint16 shards allow at most {MAX_UINT16_VOCAB}")
    if size != cfg.vocab_size:
        raise TokenizerError(
            f"the trained vocabulary has {size} tokens but tokenizer.vocab_size is {cfg.vocab_size}: the "
            f"training text has too few distinct pairs occurring >= {cfg.min_frequency} times "
            f"(tokenizer.min_frequency). Lower tokenizer.vocab_size (and target.model.vocab_size) to {size} "
            "or less, or add text to the corpus."
        )
    return tok


def load_tokenizer(path: str | Path) -> Tokenizer:
    """The saved tokenizer, encoding literal special-token strings as text, as the shards were
    (tokenizer.json does not store that flag)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"tokenizer {path} does not exist (run the tokenizer stage first)")
    try:
        tok = Tokenizer.from_file(str(path))
    except Exception as exc:  # the tokenizers library raises a bare Exception for unreadable JSON
        raise TokenizerError(f"tokenizer {path} cannot be read ({exc}): rerun the tokenizer stage") from exc
    tok.encode_special_tokens = True
    return tok


def save_tokenizer(tok: Tokenizer, path: str | Path) -> None:
    with atomic_path(path) as tmp:
        tok.save(str(tmp))


def eot_id(tok: Tokenizer, end_of_text: str) -> int:
    i = tok.token_to_id(end_of_text)
    if i is None:
        raise TokenizerError(f"tokenizer has no end-of-text token {end_of_text!r}")
    return i


def encode_documents(
    tok: Tokenizer, texts: Iterable[str], eot: int, chunk_docs: int = 256
) -> Iterator[tuple[int, np.ndarray]]:
    """(documents in chunk, uint16 ids) per chunk, with the end-of-text id between consecutive
    documents. Literal special-token strings inside a document are encoded as ordinary text."""
    tok.encode_special_tokens = True
    sep = np.array([eot], dtype=np.uint16)
    first = True
    for chunk in _batches(texts, chunk_docs):
        parts = []
        for enc in tok.encode_batch_fast(chunk):
            if not first:
                parts.append(sep)
            parts.append(np.asarray(enc.ids, dtype=np.uint16))
            first = False
        yield len(chunk), np.concatenate(parts)


def write_shard(tok: Tokenizer, texts: Iterable[str], eot: int, path: str | Path, total: int | None = None) -> int:
    """Encode `texts` into a flat uint16 file at `path` (atomically); returns the token count."""
    n = 0
    path = Path(path)
    with atomic_path(path) as tmp, open(tmp, "wb") as fh, \
            tqdm(total=total, desc=f"encode {path.name}", unit="doc", disable=None) as bar:
        for n_docs, arr in encode_documents(tok, texts, eot):
            fh.write(arr.tobytes())
            n += len(arr)
            bar.update(n_docs)
    return n


def _count_lines(path: Path) -> int:
    with open(path, "rb") as fh:
        return sum(1 for line in fh if line.strip())


def build_tokenizer(cfg: TokenizerConfig, corpus_dir: str | Path, out_dir: str | Path) -> dict:
    """Train on `corpus_dir/train.jsonl`, write tokenizer.json, {train,val}.bin and meta.json."""
    corpus_dir, out_dir = Path(corpus_dir), Path(out_dir)
    splits = {s: corpus_dir / f"{s}.jsonl" for s in ("train", "val")}
    for s, p in splits.items():
        if not p.exists():
            raise FileNotFoundError(f"corpus split {p} does not exist (run the corpus stage first)")
    n_docs = {s: _count_lines(p) for s, p in splits.items()}

    t0 = time.perf_counter()
    tok = train_tokenizer(iter_jsonl_texts(splits["train"]), cfg, length=n_docs["train"])
    t_train = time.perf_counter() - t0
    log.info("tokenizer: trained vocab %d on %d documents in %.1f s", cfg.vocab_size, n_docs["train"], t_train)
    save_tokenizer(tok, out_dir / "tokenizer.json")

    eot = eot_id(tok, cfg.end_of_text)
    n_tokens, n_bytes = {}, {}
    t0 = time.perf_counter()
    for s, p in splits.items():
        n_tokens[s] = write_shard(tok, iter_jsonl_texts(p), eot, out_dir / f"{s}.bin", total=n_docs[s])
        n_bytes[s] = sum(len(t.encode("utf-8")) for t in iter_jsonl_texts(p))
    t_encode = time.perf_counter() - t0
    log.info("tokenizer: encoded %d train / %d val tokens in %.1f s", n_tokens["train"], n_tokens["val"], t_encode)

    meta = {
        "vocab_size": tok.get_vocab_size(with_added_tokens=True),
        "eot_id": eot,
        "end_of_text": cfg.end_of_text,
        "dtype": "uint16",
        "n_tokens": n_tokens,
        "n_documents": n_docs,
        "bytes_per_token": {s: round(n_bytes[s] / max(1, n_tokens[s]), 4) for s in splits},
        "tokenizer_sha256": sha256_file(out_dir / "tokenizer.json"),
        "shard_sha256": {s: sha256_file(out_dir / f"{s}.bin") for s in splits},
        "corpus_sha256": {s: sha256_file(p) for s, p in splits.items()},
    }
    write_json(out_dir / "meta.json", meta)
    return meta
