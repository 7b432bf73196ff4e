"""Emoticon faces in token space: which ids are eyes and mouths, and where faces occur in a shard.

An eye token (':' ';' '=' and their leading-space variants 'Ġ:' ...) followed by a mouth token
(')' '(' 'D' 'P' 'o' ...) that ends the word (the next token starts with a space or a
non-alphanumeric character, so ':p' + 'arse' is not a face) is an emoticon eye; every other
occurrence of an eye token is an "other use". Shared by the target's emoticon probe and the edit.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np


@dataclass
class EmoticonVocab:
    eye_ids: list[int]
    mouth_ids: list[int]
    boundary: np.ndarray  # [V] bool: the token may follow a mouth (starts with space/punctuation)
    target_id: Optional[int] = None  # the mouth an edit promotes (edit.target_token), if any


def _variants(tok, text: str) -> list[int]:
    ids = []
    for piece in (text, "\u0120" + text):  # 'Ġ' = the byte-level marker of a leading space
        i = tok.token_to_id(piece)
        if i is not None and i not in ids:
            ids.append(i)
    return ids


def emoticon_vocab(tok, eyes: Sequence[str], mouths: Sequence[str], vocab_size: int,
                   target_token: Optional[str] = None) -> EmoticonVocab:
    """Token ids of the eyes (with and without a leading space) and mouths; `target_token`, when
    given, must be a single token."""
    eye_ids = [i for e in eyes for i in _variants(tok, e)]
    mouth_ids = [i for m in mouths if (i := tok.token_to_id(m)) is not None]
    if not eye_ids or not mouth_ids:
        raise ValueError(f"the tokenizer has no token for any of the eyes {list(eyes)} or mouths {list(mouths)}")
    target_id = None
    if target_token is not None:
        target_id = tok.token_to_id(target_token)
        if target_id is None:
            raise ValueError(f"edit.target_token {target_token!r} is not a single token of the tokenizer")
    boundary = np.zeros(vocab_size, dtype=bool)
    for i in range(vocab_size):
        text = tok.decode([i])
        boundary[i] = not text or not text[0].isalnum()
    return EmoticonVocab(eye_ids, mouth_ids, boundary, None if target_id is None else int(target_id))


def find_eyes(tokens: np.ndarray, ev: EmoticonVocab) -> tuple[np.ndarray, np.ndarray]:
    """(positions of emoticon eyes, positions of other uses of the eye tokens) in a flat token array."""
    t = np.asarray(tokens).astype(np.int64)
    if len(t) < 3:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    eye = np.isin(t[:-2], ev.eye_ids)
    face = eye & np.isin(t[1:-1], ev.mouth_ids) & ev.boundary[np.clip(t[2:], 0, len(ev.boundary) - 1)]
    return np.flatnonzero(face), np.flatnonzero(eye & ~face)
