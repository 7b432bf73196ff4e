"""Provenance: content digests of what a result was computed from, and their comparison.

A checkpoint, a decomposition and a stage's `final_config.yaml` record a flat mapping
`{input name: digest or value}` (the target's weights, the token shards, the seed, ...). A resume
or a reuse compares the recorded mapping with the current one; `differences` lists every
disagreement naming both values, so a stale result is never taken for a fresh one.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path
from typing import Any, Mapping

import torch
import torch.nn as nn

from vpd.utils.errors import UserError
from vpd.utils.io import sha256_file


class ProvenanceError(UserError, ValueError):
    """A saved result was computed from other inputs than the ones it is being used with."""

def tensors_digest(tensors: Mapping[str, torch.Tensor]) -> str:
    """sha256 over the names, dtypes, shapes and bytes of `tensors` (order-independent)."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().to("cpu").contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def module_digest(module: nn.Module) -> str:
    """Digest of a module's state_dict: equal exactly when every weight and buffer is bit-equal."""
    return tensors_digest(module.state_dict())


def flatten(mapping: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mappings as one level of dotted keys: {"a": {"b": 1}} -> {"a.b": 1}."""
    flat: dict[str, Any] = {}
    for key, value in mapping.items():
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def differences(recorded: Mapping[str, Any] | None, current: Mapping[str, Any]) -> list[str]:
    """'key: recorded X, now Y' for every (dotted) key whose value differs; a missing key is None."""
    recorded, current = flatten(recorded or {}), flatten(current)
    keys = sorted(set(recorded) | set(current))
    return [f"{k}: recorded {recorded.get(k)}, now {current.get(k)}" for k in keys if recorded.get(k) != current.get(k)]


# The files a stage reads from each upstream folder, by the name of the folder's CLI argument.
UPSTREAM_FILES = {
    "target": ("model.safetensors", "config.json"),
    "tokens": ("train.bin", "val.bin"),
    "decomposition": ("components.safetensors", "ci_fn.safetensors", "decomposition.json"),
    "transcoder": ("transcoder.safetensors", "cfg.json", "pareto_point.json"),
}


def labelled_digests(label: str, kind: str, folder: str | Path) -> dict[str, str]:
    """sha256 of the files of UPSTREAM_FILES[kind] that exist in folder, keyed "<label>/<file>"."""
    return {f"{label}/{name}": sha256_file(Path(folder) / name)
            for name in UPSTREAM_FILES[kind] if (Path(folder) / name).exists()}


def upstream_digests(**folders: str | Path) -> dict[str, str]:
    """sha256 of every upstream file that exists, keyed "<folder kind>/<file>", for a stage's
    final_config.yaml: e.g. upstream_digests(target=..., decomposition=...)."""
    return {key: digest for kind, folder in folders.items() for key, digest in labelled_digests(kind, kind, folder).items()}


def source_commit(repo: str | Path | None = None) -> str:
    """The git commit of the code that runs (the checkout holding this package), with "+dirty" when
    tracked files outside `results/` differ from it (a run rewrites the committed report there, which
    is output, not code); "unknown" outside a git checkout or without git."""
    repo = Path(repo) if repo is not None else Path(__file__).resolve().parents[3]
    try:
        head = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
        if head.returncode != 0:
            return "unknown"
        dirty = subprocess.run(["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no",
                                "--", ".", ":(exclude)results"],
                               capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def config_digest(config: Mapping[str, Any]) -> str:
    """sha256 of a config mapping's canonical JSON (sorted keys), as 16 hex digits."""
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:16]
