"""Resumable checkpoints as safetensors + JSON, never pickle.

A checkpoint is a directory `<root>/step-<N>/` holding `tensors.safetensors` (model weights,
optimiser moments, RNG byte states, anything tensor-valued) and `meta.json` (step, optimiser
hyperparameters, numpy/python RNG states, and the sha256 of the tensor file). The directory is
written under a temp name and renamed, so a checkpoint either exists completely or not at all;
the sha256 additionally catches files corrupted or truncated afterwards. `load_latest` walks back
from the newest checkpoint to the newest *valid* one and reports every one it had to skip.
Checkpoints written under a different config are never resumed; `set_aside` moves them out of the
way (kept, not deleted) so that a changed config starts over.
"""

from __future__ import annotations

import logging
import random
import re
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from vpd.utils.errors import UserError
from vpd.utils.io import read_json, sha256_file, write_json

log = logging.getLogger("vpd")

TENSOR_FILE = "tensors.safetensors"
STEP_DIR = re.compile(r"step-\d{8}")
META_FILE = "meta.json"


class CheckpointError(UserError, RuntimeError):
    """A checkpoint is missing, truncated, corrupted or does not match what loads it."""


# ---------------------------------------------------------------- optimiser state <-> flat dict
def optimizer_state_to_flat(opt: torch.optim.Optimizer, prefix: str) -> tuple[dict[str, torch.Tensor], dict]:
    """Split an optimiser state_dict into tensors (for safetensors) and a JSON-able remainder."""
    sd = opt.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    state_meta: dict[str, dict[str, Any]] = {}
    for idx, st in sd["state"].items():
        state_meta[str(idx)] = {}
        for key, val in st.items():
            if isinstance(val, torch.Tensor):
                tensors[f"{prefix}.{idx}.{key}"] = val.detach().clone().contiguous()
                state_meta[str(idx)][key] = "__tensor__"
            else:
                state_meta[str(idx)][key] = val
    return tensors, {"state": state_meta, "param_groups": sd["param_groups"]}


def optimizer_state_from_flat(
    opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict, prefix: str
) -> None:
    state: dict[int, dict[str, Any]] = {}
    for idx, st in meta["state"].items():
        state[int(idx)] = {
            key: tensors[f"{prefix}.{idx}.{key}"] if val == "__tensor__" else val for key, val in st.items()
        }
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


# ---------------------------------------------------------------- RNG state
def rng_state() -> tuple[dict[str, torch.Tensor], dict]:
    tensors = {"rng.torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, st in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = st
    np_state = np.random.get_state()
    meta = {
        "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]],
        "python": [random.getstate()[0], list(random.getstate()[1]), random.getstate()[2]],
    }
    return tensors, meta


def set_rng_state(tensors: dict[str, torch.Tensor], meta: dict) -> None:
    torch.set_rng_state(tensors["rng.torch"])
    if torch.cuda.is_available():
        cuda = [tensors[k] for k in sorted(k for k in tensors if k.startswith("rng.cuda."))]
        if cuda:
            torch.cuda.set_rng_state_all(cuda)
    n = meta["numpy"]
    np.random.set_state((n[0], np.asarray(n[1], dtype=np.uint32), *n[2:]))
    p = meta["python"]
    random.setstate((p[0], tuple(p[1]), p[2]))


# ---------------------------------------------------------------- save / load
def save(root: str | Path, step: int, tensors: dict[str, torch.Tensor], meta: dict, keep: int = 2) -> Path:
    """Write checkpoint `step` atomically under `root`, keeping the newest `keep` checkpoints."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step:08d}"
    tmp = root / f".tmp-step-{step:08d}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    flat = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    save_file(flat, str(tmp / TENSOR_FILE))
    write_json(tmp / META_FILE, {**meta, "step": step, "sha256": sha256_file(tmp / TENSOR_FILE)})
    if final.exists():
        shutil.rmtree(final)
    tmp.rename(final)
    if keep > 0:
        # only checkpoints that verify count towards `keep` and are pruned; any other directory is
        # left alone for inspection
        for old in [p for p in list_checkpoints(root) if verifies(p)][:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    return final


def list_checkpoints(root: str | Path) -> list[Path]:
    """The `step-<8 digits>` directories under `root`, oldest first (valid or not)."""
    root = Path(root)
    if not root.exists():
        return []
    return sorted(p for p in root.glob("step-*") if p.is_dir() and STEP_DIR.fullmatch(p.name))


def verifies(path: str | Path) -> bool:
    """Whether `path` is a complete checkpoint: meta.json readable, its step matching the directory
    name, and the tensor file's sha256 the recorded one."""
    path = Path(path)
    try:
        meta = read_json(path / META_FILE)
        return _names_its_step(path, meta) and meta.get("sha256") == sha256_file(path / TENSOR_FILE)
    except (OSError, ValueError):
        return False


def _names_its_step(path: Path, meta) -> bool:
    try:
        return path.name == f"step-{int(meta['step']):08d}"
    except (KeyError, TypeError, ValueError):
        return False


def load(path: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    """Load one checkpoint directory, verifying its checksum; raise CheckpointError if invalid."""
    path = Path(path)
    tensor_file, meta_file = path / TENSOR_FILE, path / META_FILE
    if not tensor_file.exists() or not meta_file.exists():
        raise CheckpointError(f"checkpoint {path} is incomplete (missing {TENSOR_FILE} or {META_FILE})")
    try:
        meta = read_json(meta_file)
    except ValueError as exc:
        raise CheckpointError(f"checkpoint {meta_file} is not valid JSON: {exc}") from exc
    if not _names_its_step(path, meta):
        raise CheckpointError(f"checkpoint {meta_file} does not record the step its directory is named for")
    actual = sha256_file(tensor_file)
    if meta.get("sha256") != actual:
        raise CheckpointError(f"checkpoint {tensor_file} is corrupted: sha256 {actual} != recorded {meta.get('sha256')}")
    try:
        tensors = load_file(str(tensor_file))
    except Exception as exc:  # safetensors raises several error types for bad headers
        raise CheckpointError(f"checkpoint {tensor_file} cannot be read: {exc}") from exc
    return tensors, meta


def load_latest(root: str | Path) -> tuple[dict[str, torch.Tensor], dict] | None:
    """Newest valid checkpoint under `root`, or None if there is none at all.

    Invalid checkpoints are reported and skipped (never deleted, so they can be inspected). If
    checkpoints exist but none is valid, raise rather than silently starting over.
    """
    candidates = list_checkpoints(root)
    errors = []
    for path in reversed(candidates):
        try:
            return load(path)
        except CheckpointError as exc:
            log.warning("skipping invalid checkpoint: %s", exc)
            errors.append(str(exc))
    if candidates:
        raise CheckpointError(
            "no valid checkpoint under " + str(root) + "; delete the directory to start over:\n  " + "\n  ".join(errors)
        )
    return None


def set_aside(root: str | Path, why: str) -> Path:
    """Rename the checkpoint directory `root` to `<root>.stale-<UTC time>` and return the new path.

    Used when `root` holds checkpoints a run must not resume (e.g. written under another config):
    the run starts over, and the old checkpoints stay on disk for inspection or manual resume.
    """
    root = Path(root)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    dest = root.with_name(f"{root.name}.stale-{stamp}")
    n = 1
    while dest.exists():  # two set-asides within one second
        dest = root.with_name(f"{root.name}.stale-{stamp}-{n}")
        n += 1
    root.rename(dest)
    log.warning("checkpoints under %s were %s: moved to %s and starting over (delete it when no longer needed)",
                root, why, dest)
    return dest


def set_aside_on_all_ranks(root: str | Path, why: str, dist) -> None:
    """`set_aside` called by every rank of `dist` (a `vpd.utils.distributed` context) after each has
    read the checkpoints: rank 0 moves them, and no rank returns before the move is done."""
    dist.barrier()
    if dist.is_main:
        set_aside(root, why)
    dist.barrier()
