"""Test helpers: a valid project config dict built from config/ci.yaml with sections replaced, and the
config files' merge as Snakemake does it."""

from pathlib import Path

import yaml

CI_CONFIG = Path(__file__).resolve().parents[1] / "config" / "ci.yaml"


def ci_project(**sections) -> dict:
    """config/ci.yaml as a dict, with the given top-level sections replaced (e.g. corpus={...})."""
    data = yaml.safe_load(CI_CONFIG.read_text())
    data.update(sections)
    return data


def merged_config(base: dict, over: dict) -> dict:
    """`over` merged into `base` nested key by nested key, as Snakemake merges --configfile files over the
    Snakefile's default; any other value of `over` (a list too) replaces base's."""
    out = dict(base)
    for key, value in over.items():
        out[key] = merged_config(base[key], value) if isinstance(value, dict) and isinstance(base.get(key), dict) else value
    return out


def write_tokenizer_files(d: Path, vocab_size: int) -> None:
    """A real byte-level BPE tokenizer.json of exactly `vocab_size` tokens and its meta.json in `d`
    (the target stage runs its probes with it), trained on a few probe-like sentences."""
    import json

    from vpd.config import TokenizerConfig
    from vpd.data.tokenizer import eot_id, save_tokenizer, train_tokenizer

    words = ("The woman lost her hat and the man shook his head; she said that he was here :) ;P =D "
             "The princess and the prince, the queen and the king, mother and father, sister and brother.")
    text = [words] * 20
    cfg = TokenizerConfig(vocab_size=vocab_size, min_frequency=2, end_of_text="<|endoftext|>")
    tok = train_tokenizer(text, cfg)
    save_tokenizer(tok, d / "tokenizer.json")
    (d / "meta.json").write_text(json.dumps({"vocab_size": vocab_size, "eot_id": eot_id(tok, cfg.end_of_text)}))
