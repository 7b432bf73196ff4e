"""R lazy-load reader and the janeaustenr-style source: a database written here in R's XDR format
(the layout of an installed package's data/Rdata.{rdx,rdb}), packed in a sha256-pinned .deb and
read back into one document per chapter."""

from __future__ import annotations

import gzip
import struct
import zlib

import pytest

from vpd.config import CorpusSource
from vpd.data.rdata import RDataError, character_vectors, read_lazyload, unserialize
from vpd.data.sources import SourceError, fetch_source, novel_chapters
from vpd.utils.io import sha256_file
from test_data_corpus import make_deb

HAS_ATTR, HAS_TAG = 1 << 9, 1 << 10


def xdr_int(v: int) -> bytes:
    return struct.pack(">i", v)


def charsxp(s: str | None) -> bytes:
    if s is None:
        return xdr_int(9) + xdr_int(-1)
    b = s.encode()
    return xdr_int(9 | (1 << 15)) + xdr_int(len(b)) + b  # gp bit: UTF-8 encoded


def names_attr(names: list[str]) -> bytes:
    """A pairlist (names = <character vector>) as R writes an object's attributes."""
    sym = xdr_int(1) + charsxp("names")
    return xdr_int(2 | HAS_TAG) + sym + strsxp(names) + xdr_int(254)


def strsxp(items: list[str | None], names: list[str] | None = None) -> bytes:
    flags = 16 | (HAS_ATTR if names else 0)
    out = xdr_int(flags) + xdr_int(len(items)) + b"".join(charsxp(s) for s in items)
    return out + (names_attr(names) if names else b"")


def intsxp(values: list[int]) -> bytes:
    return xdr_int(13) + xdr_int(len(values)) + b"".join(xdr_int(v) for v in values)


def vecsxp(items: list[bytes], names: list[str]) -> bytes:
    return xdr_int(19 | HAS_ATTR) + xdr_int(len(items)) + b"".join(items) + names_attr(names)


def serialize(body: bytes) -> bytes:
    """Version-3 XDR header (R 4.2.1 writer, 3.5.0 reader, UTF-8) + one object."""
    return b"X\n" + xdr_int(3) + xdr_int(0x040201) + xdr_int(0x030500) + xdr_int(5) + b"UTF-8" + body


def lazyload_db(objects: dict[str, bytes]) -> tuple[bytes, bytes]:
    """(rdx, rdb): each object a zlib chunk (4-byte length + zlib data) of the .rdb; the index a
    gzip-compressed list(variables = list(name = c(offset, length)), references, compressed)."""
    rdb, where = b"", {}
    for name, body in objects.items():
        raw = serialize(body)
        chunk = struct.pack(">I", len(raw)) + zlib.compress(raw)
        where[name] = (len(rdb), len(chunk))
        rdb += chunk
    variables = vecsxp([intsxp(list(w)) for w in where.values()], list(where))
    index = vecsxp([variables, vecsxp([], []), xdr_int(10) + xdr_int(1) + xdr_int(1)],
                   ["variables", "references", "compressed"])
    return gzip.compress(serialize(index)), rdb


EMMA = ["EMMA", "", "By Jane Austen", "", "VOLUME I", "", "CHAPTER I", "", "Emma Woodhouse, handsome,",
        "clever, and rich.", "", "She was the youngest.", "", "", "CHAPTER II", "", "Mr. Weston was a native",
        "of Highbury."]


def test_unserialize_character_vector_with_na_and_names():
    obj = unserialize(serialize(strsxp(["a", None, "caf\u00e9"], names=["x", "y", "z"])))
    assert obj.value == ["a", None, "caf\u00e9"]
    assert obj.attributes["names"].value == ["x", "y", "z"]
    assert character_vectors({"v": obj}) == {"v": ["a", "", "caf\u00e9"]}


def test_unserialize_refuses_unknown_types_and_bad_headers():
    with pytest.raises(RDataError, match="type 3 is not supported"):
        unserialize(serialize(xdr_int(3)))  # a closure
    with pytest.raises(RDataError, match="XDR"):
        unserialize(b"A\n" + b"\x00" * 12)
    with pytest.raises(RDataError, match="truncated"):
        unserialize(serialize(strsxp(["abc"]))[:-2])


def test_lazyload_round_trip():
    rdx, rdb = lazyload_db({"emma": strsxp(EMMA), "persuasion": strsxp(["Persuasion"])})
    books = character_vectors(read_lazyload(rdx, rdb))
    assert books == {"emma": EMMA, "persuasion": ["Persuasion"]}


def test_novel_chapters_join_paragraphs_and_drop_front_matter():
    assert novel_chapters(EMMA) == [
        "Emma Woodhouse, handsome, clever, and rich.\nShe was the youngest.",
        "Mr. Weston was a native of Highbury.",
    ]
    assert novel_chapters(["Title", "Chapter 1", "", "One.", "Chapter 2.", "Two"]) == ["One.", "Two"]


def test_r_novels_source_from_pinned_deb(tmp_path):
    rdx, rdb = lazyload_db({"emma": strsxp(EMMA), "sense": strsxp(["CHAPTER 1", "", "The family of Dashwood."])})
    root = "./usr/lib/R/site-library/janeaustenr"
    cache = tmp_path / "cache"
    deb = make_deb(cache / "debian" / "r-cran-janeaustenr_1.0.0-1_all.deb", {
        f"{root}/data/Rdata.rdx": rdx, f"{root}/data/Rdata.rdb": rdb,
        f"{root}/R/janeaustenr.rdx": b"code, not data", f"{root}/DESCRIPTION": "Package: janeaustenr\n",
    }, {})
    source = CorpusSource(kind="debian", name="r-cran-janeaustenr", version="1.0.0-1", sha256=sha256_file(deb),
                          licence="public domain", extractor="r_novels")
    fetched = fetch_source(source, cache)
    assert fetched.documents == [  # books in name order, one document per chapter
        "Emma Woodhouse, handsome, clever, and rich.\nShe was the youngest.",
        "Mr. Weston was a native of Highbury.",
        "The family of Dashwood.",
    ]
    assert fetched.sha256 == sha256_file(deb)


def test_r_novels_source_names_missing_members(tmp_path):
    cache = tmp_path / "cache"
    deb = make_deb(cache / "debian" / "r-cran-x_1_all.deb", {"./usr/lib/R/site-library/x/data/Rdata.rdx": b"x"}, {})
    source = CorpusSource(kind="debian", name="r-cran-x", version="1", sha256=sha256_file(deb), licence="x",
                          extractor="r_novels")
    with pytest.raises(SourceError, match=r"needs both data/Rdata.rdx and data/Rdata.rdb"):
        fetch_source(source, cache)
