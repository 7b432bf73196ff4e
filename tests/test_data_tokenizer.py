"""Tokenizer stage: exact round trip, isolated punctuation (emoticons), end-of-text between
documents, uint16 shards equal to the encoded ids, vocabulary-size errors. Tiny corpora, seconds."""

from __future__ import annotations

import json

import numpy as np
import pytest

from vpd.config import TokenizerConfig, parse_config
from vpd.data.corpus import Document, write_jsonl
from vpd.stages.data import run_tokenizer
from vpd.data.tokenizer import (
    TokenizerError,
    build_tokenizer,
    encode_documents,
    eot_id,
    load_tokenizer,
    train_tokenizer,
)
from vpd.data.tokens import TokenShard
from vpd.utils.io import read_json, read_yaml, sha256_file
from project import ci_project

EOT = "<|endoftext|>"

SENTENCES = [
    "Thanks for the help :) see you tomorrow ;) bye :P",
    "The princess gave her crown to the king, and the king smiled :o",
    "I can't reproduce this error =D but it's fine :( really.",
    "Call me Ishmael. Some years ago, never mind how long precisely.",
    "Fellow-Citizens of the Senate and House of Representatives: welcome!",
    "Good night, sweet prince; and flights of angels sing thee to thy rest.",
]


def corpus_texts(n: int = 60) -> list[str]:
    return [f"{SENTENCES[i % len(SENTENCES)]} (note {i})\n{SENTENCES[(i * 5 + 1) % len(SENTENCES)]}" for i in range(n)]


@pytest.fixture(scope="module")
def tok():
    return train_tokenizer(corpus_texts(), TokenizerConfig(vocab_size=400, min_frequency=2, end_of_text=EOT))


def test_round_trip_exact(tok):
    texts = [
        "Hello, world! :) ;) :P :o =D",
        "  two  spaces, tabs\tand\nnewlines\n\nand unicode: caf\u00e9 \u2014 na\u00efve \U0001F600 \u4e2d\u6587",
        "Numbers 1,234.56 and 'quotes' \"double\" <tags> ___ --- ...",
        "",
    ]
    for t in texts:
        assert tok.decode(tok.encode(t).ids, skip_special_tokens=False) == t


def test_emoticon_eyes_and_mouths_are_separate_tokens(tok):
    assert tok.encode(" :)").tokens == ["\u0120:", ")"]
    assert tok.encode("see you :) bye").tokens[-3:-1] == ["\u0120:", ")"]
    for emo in (";)", ":P", ":o", "=D", ":("):
        assert tok.encode(" " + emo).tokens == ["\u0120" + emo[0], emo[1]], emo
    # no merge crosses a punctuation character anywhere in the vocabulary
    for token in tok.get_vocab():
        if token == EOT:
            continue
        punct = [c for c in token.replace("\u0120", " ") if not (c.isalnum() or c.isspace())]
        if punct:
            assert token in (punct[0], "\u0120" + punct[0]), token


def test_eot_between_documents_and_literal_eot_is_text(tok):
    eot = eot_id(tok, EOT)
    assert eot == 0 and tok.get_vocab_size() == 400
    docs = ["first doc :)", "second doc", "third"]
    ids = np.concatenate([arr for _, arr in encode_documents(tok, docs, eot, chunk_docs=2)])
    expected = tok.encode(docs[0]).ids + [eot] + tok.encode(docs[1]).ids + [eot] + tok.encode(docs[2]).ids
    assert ids.dtype == np.uint16 and ids.tolist() == expected
    literal = np.concatenate([arr for _, arr in encode_documents(tok, [f"a {EOT} b"], eot)])
    assert eot not in literal.tolist()
    assert tok.decode(literal.tolist(), skip_special_tokens=False) == f"a {EOT} b"


def test_vocab_size_mismatch_error():
    with pytest.raises(TokenizerError, match=r"Lower tokenizer\.vocab_size .* or add text"):
        train_tokenizer(["tiny text :)"] * 3, TokenizerConfig(vocab_size=5000))


def test_training_is_deterministic():
    cfg = TokenizerConfig(vocab_size=350)
    a = train_tokenizer(corpus_texts(), cfg).to_str()
    b = train_tokenizer(corpus_texts(), cfg).to_str()
    assert a == b


def write_corpus(path, n_train=50, n_val=6):
    texts = corpus_texts(n_train + n_val)
    write_jsonl(path / "train.jsonl", [Document(t, "s") for t in texts[:n_train]])
    write_jsonl(path / "val.jsonl", [Document(t, "s") for t in texts[n_train:]])
    return texts[:n_train], texts[n_train:]


def test_shards_equal_encoded_ids(tmp_path):
    train, val = write_corpus(tmp_path / "corpus")
    out = tmp_path / "tok"
    meta = build_tokenizer(TokenizerConfig(vocab_size=380), tmp_path / "corpus", out)
    tok = load_tokenizer(out / "tokenizer.json")
    eot = meta["eot_id"]
    for split, texts in (("train", train), ("val", val)):
        expected = []
        for i, t in enumerate(texts):
            expected += ([eot] if i else []) + tok.encode(t).ids
        mm = np.memmap(out / f"{split}.bin", dtype=np.uint16, mode="r")
        assert mm.tolist() == expected
        assert meta["n_tokens"][split] == len(expected) and meta["n_documents"][split] == len(texts)
    shard = TokenShard(out / "val.bin", seq_len=8)
    assert len(shard) == meta["n_tokens"]["val"]
    assert meta["vocab_size"] == 380 and meta["tokenizer_sha256"] == sha256_file(out / "tokenizer.json")
    assert read_json(out / "meta.json") == meta


def test_run_tokenizer_writes_final_config(tmp_path):
    write_corpus(tmp_path / "corpus")
    vocab = 300
    data = ci_project(name="t")
    data["tokenizer"]["vocab_size"] = data["target"]["model"]["vocab_size"] = vocab
    cfg = parse_config(data)
    run_tokenizer(cfg, tmp_path / "corpus", tmp_path / "tok")
    files = {p.name for p in (tmp_path / "tok").iterdir()}
    assert files == {"tokenizer.json", "train.bin", "val.bin", "meta.json", "final_config.yaml"}
    assert read_yaml(tmp_path / "tok" / "final_config.yaml")["tokenizer"]["vocab_size"] == vocab
    assert json.loads((tmp_path / "tok" / "meta.json").read_text())["eot_id"] == 0
