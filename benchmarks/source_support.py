"""How much each text source, on its own, teaches the target's gendered-pronoun probes.

The corpus stage counts the support of the whole training split (`corpus/pronoun_support.csv`).
This script counts it per source, so a source can be judged before a target is trained on it:
every source of a config (enabled or not) and of any candidate files (a YAML `sources:` list of
`corpus.sources` entries) is fetched and extracted as the corpus stage does it (sha256-checked,
`vpd.data.sources.fetch_source`), its documents cleaned as there (whitespace, `min_doc_chars`;
no cross-source dedup, no split), and counted by `vpd.data.pronoun_support`.

    python benchmarks/source_support.py --candidates benchmarks/candidate_sources.yaml \\
        --json benchmarks/results/source_support.json

Per source: words; she / he / her / his; the ten female probe nouns' occurrences, how often their
next pronoun is female / male and the female share (`F own share`), the share for the male
nouns; the prompts' own shape after a female noun ("<noun> <word> her" / "... his"); and the next
pronouns after "princess". The JSON keeps every source's whole support table.
"""

from __future__ import annotations

import argparse
import time
from collections import Counter
from pathlib import Path

import pandas as pd
from pydantic import ValidationError

from vpd.config import CorpusSource, format_validation_error, load_config
from vpd.data.corpus import clean_documents
from vpd.data.pronoun_support import support_table, words_of
from vpd.data.sources import fetch_source
from vpd.utils.errors import UserError
from vpd.utils.io import read_yaml, write_json
from vpd.utils.provenance import source_commit

ROOT = Path(__file__).resolve().parents[1]
PRONOUNS = ("she", "he", "her", "his")


def candidate_sources(path: Path) -> list[CorpusSource]:
    """The `sources:` list of a candidates file, validated as `corpus.sources` entries."""
    data = read_yaml(path)
    if not isinstance(data, dict) or not isinstance(data.get("sources"), list):
        raise UserError(f"{path}: expected a mapping with a `sources:` list of corpus source entries")
    try:
        return [CorpusSource.model_validate(entry) for entry in data["sources"]]
    except ValidationError as exc:
        raise UserError(format_validation_error(exc, str(path))) from None


def source_summary(name: str, enabled: bool, documents: list[str]) -> tuple[dict, pd.DataFrame]:
    """The headline row of one source's documents, and its whole support table."""
    table = support_table(documents)
    words = Counter(w for text in documents for w in words_of(text))
    by_word = table.set_index("word")
    female, male, princess = by_word.loc["all female nouns"], by_word.loc["all male nouns"], by_word.loc["princess"]
    row = {
        "source": name,
        "enabled": enabled,
        "documents": len(documents),
        "words": sum(words.values()),
        **{p: words[p] for p in PRONOUNS},
        "F noun occurrences": int(female["occurrences"]),
        "F noun next F": int(female["next_female"]),
        "F noun next M": int(female["next_male"]),
        "F own share": float(female["own_share"]),
        "M noun occurrences": int(male["occurrences"]),
        "M own share": float(male["own_share"]),
        "F noun <w> her": int(female["then_her"]),
        "F noun <w> his": int(female["then_his"]),
        "princess next F": int(princess["next_female"]),
        "princess next M": int(princess["next_male"]),
    }
    return row, table


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=str(ROOT / "config" / "config.yaml"))
    ap.add_argument("--candidates", action="append", default=[], help="YAML file with a `sources:` list")
    ap.add_argument("--json", help="write every source's row and support table here")
    args = ap.parse_args()

    cfg = load_config(args.config)
    sources = [(s, s.enabled) for s in cfg.corpus.sources]
    sources += [(s, False) for path in args.candidates for s in candidate_sources(Path(path))]
    names = [s.name for s, _ in sources]
    if len(set(names)) != len(names):
        raise SystemExit(f"source names repeat across {args.config} and the candidates: {names}")

    rows, tables = [], {}
    for source, enabled in sources:
        docs = clean_documents(fetch_source(source, cfg.corpus.cache_dir).documents, cfg.corpus.min_doc_chars)
        row, table = source_summary(source.name, enabled, docs)
        rows.append(row)
        tables[source.name] = table.to_dict(orient="records")
    frame = pd.DataFrame(rows)
    print(frame.to_markdown(index=False, floatfmt=".2f", intfmt=","))
    if args.json:
        write_json(Path(args.json), {
            "config": str(args.config),
            "candidates": args.candidates,
            "measured": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "commit": source_commit(ROOT),
            "rows": rows,
            "support_tables": tables,
        })


if __name__ == "__main__":
    main()
