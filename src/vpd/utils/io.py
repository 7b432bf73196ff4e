"""Atomic file output and small readers/writers (JSON, YAML, JSONL, sha256).

Every file a stage produces goes through `atomic_path`: the content is written to a temp file in
the same directory and renamed into place, so an interrupted write never leaves a half-written
file that a later stage could read as valid.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator

import yaml


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temp path next to `path`; on success fsync and rename it onto `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp_path, 0o666 & ~umask)  # mkstemp creates 0600; outputs get ordinary permissions
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "item"):  # numpy / torch scalars
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def to_json(obj: Any) -> str:
    return json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n"


def write_json(path: str | os.PathLike, obj: Any) -> None:
    write_text(path, to_json(obj))


def read_json(path: str | os.PathLike) -> Any:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def write_yaml(path: str | os.PathLike, obj: Any) -> None:
    write_text(path, yaml.safe_dump(obj, sort_keys=False))


def write_csv(path: str | os.PathLike, table: Any, float_format: str | None = None) -> None:
    """A pandas DataFrame as CSV (no index), written atomically."""
    write_text(path, table.to_csv(index=False, float_format=float_format))


def read_yaml(path: str | os.PathLike) -> Any:
    return yaml.safe_load(Path(path).read_text(encoding="utf-8"))


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


class MetricsLog:
    """Append-only `metrics.jsonl`: one JSON object per line, flushed at every write.

    Non-finite floats are written as strings ("nan", "inf") so that the file stays valid JSON.
    `truncate_after(step)` drops lines logged after a checkpoint, so a resumed run's log equals an
    uninterrupted run's.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)

    @staticmethod
    def _clean(value: Any) -> Any:
        if hasattr(value, "item"):
            value = value.item()
        if isinstance(value, float) and not math.isfinite(value):
            return str(value)
        return value

    def log(self, record: dict[str, Any]) -> None:
        line = json.dumps({k: self._clean(v) for k, v in record.items()})
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(line + "\n")
            fh.flush()

    def read(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]

    def truncate_after(self, step: int) -> None:
        """Keep only records with `step` <= the given step (records without a step are kept)."""
        if self.path.exists():
            self.restore(self.read(), step)

    def restore(self, records: list[dict[str, Any]], step: int) -> None:
        """Rewrite the log as `records` up to `step`: a resumed run's history kept in its checkpoint
        (the file itself may be gone, e.g. Snakemake deletes a rerun job's outputs)."""
        kept = [r for r in records if r.get("step", -1) <= step]
        write_text(self.path, "".join(json.dumps(r) + "\n" for r in kept))
