"""Read character vectors out of an R package's lazy-load database without R.

An installed R package keeps its data sets in `data/Rdata.rdx` (a gzip- or zlib-compressed
serialized index: variable name -> [offset, length] into the .rdb) and `data/Rdata.rdb` (one
compressed, serialized object per chunk). Objects use R's XDR serialization format (version 2 or
3). This reader understands the subset that text data sets use — character, logical, integer and
real vectors, generic vectors (lists), pairlists, symbols and attributes — and refuses anything
else with an error naming the type, so a package holding other objects fails loudly.
"""

from __future__ import annotations

import bz2
import gzip
import lzma
import struct
import zlib
from dataclasses import dataclass, field
from typing import Any

from vpd.utils.errors import UserError

# SEXP type codes (R Internals, "Serialization formats").
NILSXP, SYMSXP, LISTSXP, CHARSXP, LGLSXP, INTSXP, REALSXP, STRSXP, VECSXP = 0, 1, 2, 9, 10, 13, 14, 16, 19
REFSXP, NILVALUE_SXP, GLOBALENV_SXP, EMPTYENV_SXP, BASEENV_SXP = 255, 254, 253, 242, 241
_NA_INT = -(2**31)


class RDataError(UserError, ValueError):
    """The bytes are not an R serialization this reader understands."""


@dataclass
class RObject:
    """An R value with its attributes (`names`, `class`, ...); `value` is a Python list or None."""

    sexp_type: int
    value: Any
    attributes: dict[str, Any] = field(default_factory=dict)


class _Reader:
    def __init__(self, data: bytes):
        self.data, self.pos = data, 0
        self.refs: list[Any] = []

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise RDataError(f"truncated R serialization: wanted {n} bytes at offset {self.pos}")
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out

    def int(self) -> int:
        return struct.unpack(">i", self.take(4))[0]

    def header(self) -> None:
        if self.take(2) != b"X\n":
            raise RDataError("not an XDR R serialization (expected the 'X\\n' header)")
        version = self.int()
        self.int(), self.int()  # writer's R version, minimal reader version
        if version == 3:
            self.take(self.int())  # native encoding name
        elif version != 2:
            raise RDataError(f"R serialization version {version} is not supported (2 or 3)")

    def charsxp(self) -> str | None:
        length = self.int()
        return None if length == -1 else self.take(length).decode("utf-8", errors="replace")

    def item(self) -> Any:
        flags = self.int()
        sexp_type = flags & 0xFF
        has_attr, has_tag = bool(flags & (1 << 9)), bool(flags & (1 << 10))
        if sexp_type in (NILVALUE_SXP, GLOBALENV_SXP, EMPTYENV_SXP, BASEENV_SXP):
            return None
        if sexp_type == REFSXP:
            index = flags >> 8 or self.int()
            return self.refs[index - 1]
        if sexp_type == SYMSXP:
            name = self.item()  # a CHARSXP
            self.refs.append(name)
            return name
        if sexp_type == CHARSXP:
            return self.charsxp()
        if sexp_type == LISTSXP:
            return self.pairlist(has_attr, has_tag)
        if sexp_type in (STRSXP, VECSXP, LGLSXP, INTSXP, REALSXP):
            n = self.int()
            if sexp_type == STRSXP:
                value = [self.item() for _ in range(n)]
            elif sexp_type == VECSXP:
                value = [self.item() for _ in range(n)]
            elif sexp_type == REALSXP:
                value = list(struct.unpack(f">{n}d", self.take(8 * n)))
            else:
                ints = struct.unpack(f">{n}i", self.take(4 * n))
                value = [None if v == _NA_INT else (bool(v) if sexp_type == LGLSXP else v) for v in ints]
            obj = RObject(sexp_type, value)
            if has_attr:
                obj.attributes = self.attributes()
            return obj
        raise RDataError(f"R object type {sexp_type} is not supported by this reader")

    def pairlist(self, has_attr: bool, has_tag: bool) -> dict[str, Any]:
        """A pairlist as {tag: value} (untagged cells get their position as key)."""
        out: dict[str, Any] = {}
        while True:
            if has_attr:
                self.attributes()
            tag = self.item() if has_tag else str(len(out))
            out[tag] = self.item()
            flags = self.int()
            sexp_type = flags & 0xFF
            if sexp_type == NILVALUE_SXP:
                return out
            if sexp_type != LISTSXP:
                raise RDataError(f"pairlist cell followed by type {sexp_type}")
            has_attr, has_tag = bool(flags & (1 << 9)), bool(flags & (1 << 10))

    def attributes(self) -> dict[str, Any]:
        flags = self.int()
        if flags & 0xFF != LISTSXP:
            raise RDataError(f"attributes must be a pairlist, got type {flags & 0xFF}")
        return self.pairlist(bool(flags & (1 << 9)), bool(flags & (1 << 10)))


def unserialize(data: bytes) -> Any:
    """One object from R's XDR serialization bytes."""
    reader = _Reader(data)
    reader.header()
    return reader.item()


def _decompress_chunk(chunk: bytes) -> bytes:
    """A lazy-load chunk: 4-byte big-endian length, then zlib data, or a type byte ('Z' zlib,
    '2' bzip2, 'X' xz, '0' stored) and the data."""
    if len(chunk) < 5:
        raise RDataError("lazy-load chunk shorter than its header")
    expected = struct.unpack(">I", chunk[:4])[0]
    kind, body = chunk[4:5], chunk[5:]
    if kind == b"Z":
        out = zlib.decompress(body)
    elif kind == b"2":
        out = bz2.decompress(body)
    elif kind == b"X":
        out = lzma.decompress(body)
    elif kind == b"0":
        out = body
    else:
        out = zlib.decompress(chunk[4:])
    if len(out) != expected:
        raise RDataError(f"lazy-load chunk decompressed to {len(out)} bytes, header says {expected}")
    return out


def _read_index(rdx: bytes) -> Any:
    if rdx[:2] == b"\x1f\x8b":
        return unserialize(gzip.decompress(rdx))
    return unserialize(_decompress_chunk(rdx))


def read_lazyload(rdx: bytes, rdb: bytes) -> dict[str, Any]:
    """All variables of a lazy-load database: {name: RObject}."""
    index = _read_index(rdx)
    if not isinstance(index, RObject) or index.sexp_type != VECSXP:
        raise RDataError("lazy-load index is not a list")
    names = index.attributes.get("names")
    entries = dict(zip(names.value, index.value)) if isinstance(names, RObject) else {}
    variables = entries.get("variables")
    if not isinstance(variables, RObject):
        raise RDataError("lazy-load index has no `variables` entry")
    var_names = variables.attributes["names"].value
    out = {}
    for name, where in zip(var_names, variables.value):
        offset, length = (int(v) for v in where.value)
        out[name] = unserialize(_decompress_chunk(rdb[offset:offset + length]))
    return out


def character_vectors(variables: dict[str, Any]) -> dict[str, list[str]]:
    """The character-vector variables, NA entries as empty strings."""
    return {
        name: ["" if s is None else s for s in obj.value]
        for name, obj in variables.items()
        if isinstance(obj, RObject) and obj.sexp_type == STRSXP
    }
