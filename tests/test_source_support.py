"""benchmarks/source_support.py: one source's headline counts, and the candidates file's checks."""

import importlib.util
from pathlib import Path

import pytest

from vpd.utils.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("source_support", ROOT / "benchmarks" / "source_support.py")
source_support = importlib.util.module_from_spec(spec)
spec.loader.exec_module(source_support)


def test_source_summary_counts_by_hand():
    docs = [
        "The queen lost her crown. She wept.",  # queen -> her (F); no pronoun follows "she"
        "The princess saw his horse, and the king took his sword.",  # princess -> his (M); king -> his (M)
        "A woman said that he was late.",  # woman -> he (M)
    ]
    row, table = source_support.source_summary("hand", True, docs)
    assert row == {
        "source": "hand", "enabled": True, "documents": 3,
        "words": 7 + 11 + 7,
        "she": 1, "he": 1, "her": 1, "his": 2,
        "F noun occurrences": 3, "F noun next F": 1, "F noun next M": 2,  # queen F; princess M; woman M
        "F own share": pytest.approx(1 / 3),
        "M noun occurrences": 1, "M own share": 1.0,
        "F noun <w> her": 1, "F noun <w> his": 1,  # "queen lost her", "princess saw his"
        "princess next F": 0, "princess next M": 1,
    }
    assert table.set_index("word").loc["woman", "said_that_he"] == 1


def test_candidates_file_is_validated_before_anything_is_fetched(tmp_path):
    bad = tmp_path / "c.yaml"
    bad.write_text("sources:\n- kind: npm\n  name: x\n  licence: l\n")
    with pytest.raises(UserError, match="must pin both `version` and `sha256`"):
        source_support.candidate_sources(bad)
    bad.write_text("- kind: npm\n")
    with pytest.raises(UserError, match="`sources:` list"):
        source_support.candidate_sources(bad)


def test_committed_candidates_are_pinned_disabled_sources():
    sources = source_support.candidate_sources(ROOT / "benchmarks" / "candidate_sources.yaml")
    assert [(s.name, s.extractor, s.enabled) for s in sources] == [("kjv", "verses_by_chapter", False)]
