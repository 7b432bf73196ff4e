"""Extra decomposition runs with one setting changed (the baselines' importance-coefficient sweep,
the feature-splitting C sweep), trained like the `decompose` stage and reused when unchanged.

Each run lives in its own directory holding the saved decomposition, its metrics.jsonl and
checkpoints, and `run_key.json`: the run's decomposition config, seed, precision and the sha256 of
the target weights and of the training tokens. A directory whose key matches is reused (loaded
when complete, resumed from its checkpoints when interrupted); any other content is removed first,
so a retrained target or a changed config never resumes a stale run.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

from vpd.data.tokens import TokenShard
from vpd.decomp import Decomposition, DecompositionConfig, decompose
from vpd.decomp.api import META_FILE
from vpd.utils.io import read_json, sha256_file, write_json
from vpd.utils.runtime import log

KEY_FILE = "run_key.json"


def variant_config(base: DecompositionConfig, **changes) -> DecompositionConfig:
    """`base` with top-level keys replaced; `importance_minimality=x` sets coeffs.importance_minimality.

    Unchanged keys keep their values; the result is validated like a config file's section.
    """
    data = base.to_dict()
    if "importance_minimality" in changes:
        data["coeffs"]["importance_minimality"] = float(changes.pop("importance_minimality"))
    unknown = set(changes) - set(data)
    if unknown:
        raise KeyError(f"unknown decompose keys {sorted(unknown)}")
    data.update({k: v for k, v in changes.items() if v is not None})
    return DecompositionConfig.from_dict(data)


def run_key(dcfg: DecompositionConfig, target_dir: Path, tokens_dir: Path, seed: int, dtype: torch.dtype) -> dict:
    return {
        "decompose": dcfg.to_dict(),
        "seed": int(seed),
        "dtype": str(dtype).removeprefix("torch."),
        "target_sha256": sha256_file(Path(target_dir) / "model.safetensors"),
        "train_sha256": sha256_file(Path(tokens_dir) / "train.bin"),
    }


def decompose_variant(
    target: torch.nn.Module,
    dcfg: DecompositionConfig,
    out_dir: Path,
    *,
    target_dir: Path,
    tokens_dir: Path,
    seed: int,
    dtype: torch.dtype,
    device: torch.device,
    progress: bool = True,
) -> Decomposition:
    """Train (or reuse, see the module docstring) one decomposition of `target` into `out_dir`."""
    out_dir = Path(out_dir)
    key = run_key(dcfg, target_dir, tokens_dir, seed, dtype)
    key_path = out_dir / KEY_FILE
    if out_dir.exists():
        if key_path.exists() and read_json(key_path) == key:
            if (out_dir / META_FILE).exists():
                log.info("reusing the finished decomposition in %s", out_dir)
                return Decomposition.load(out_dir, target, dtype=dtype, device=device)
        else:
            shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(key_path, key)

    seq_len = dcfg.seq_len or target.cfg.context
    train = TokenShard(Path(tokens_dir) / "train.bin", seq_len)
    eval_batch = TokenShard(Path(tokens_dir) / "val.bin", seq_len).eval_windows(dcfg.eval_batch_size or dcfg.batch_size)

    def batches(gen: torch.Generator) -> torch.Tensor:
        return train.sample_batch(dcfg.batch_size, gen)[:, :seq_len]  # [B, T]

    log.info("decomposing into %s (%d steps)", out_dir, dcfg.steps)
    dec = decompose(target, batches, dcfg, seed=seed, dtype=dtype, device=device, out_dir=out_dir,
                    eval_batch=eval_batch[:, :seq_len], progress=progress)
    dec.save(out_dir)
    return dec
