"""The `decompose` stage: target + token shard -> decomposition artifacts under out_dir.

With `variant` (a `vpd.sweeps.VariantJob` name) it trains that extra decomposition of the
sweeps instead of the main one, with the same checkpoints, provenance and outputs.

Writes components.safetensors, ci_fn.safetensors, decomposition.json, final_config.yaml,
metrics.jsonl, fig_losses.{png,pdf}, fig_l0.{png,pdf}; checkpoints in out_dir/checkpoints/
(a rerun resumes from the newest valid one).
"""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd
import torch

from vpd.config import ProjectConfig
from vpd.data.tokens import TokenShard
from vpd.decomp.api import decompose
from vpd.decomp.variants import variant_decompose_config
from vpd.plots import save_figure
from vpd.plots.decomp import plot_l0, plot_losses
from vpd.sweeps import find_variant
from vpd.target.model import TargetLM
from vpd.utils.distributed import init_distributed
from vpd.utils.errors import InputError
from vpd.utils.io import sha256_file, write_yaml
from vpd.decomp.memory import estimate_decomposition_bytes
from vpd.utils.memory import check_memory
from vpd.utils.runtime import configure_threads, resolve_precision, reuse_freed_memory, seed_everything


log = logging.getLogger("vpd")


def run_decompose(cfg: ProjectConfig, target_dir: Path, tokens_dir: Path, out_dir: Path,
                  variant: str | None = None) -> None:

    job = find_variant(cfg, variant) if variant is not None else None
    if job is not None and job.seed is not None:
        cfg = cfg.model_copy(update={"seed": job.seed})  # a seed variant: the main decomposition at another seed
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    dist = init_distributed(cfg.decompose.world_size, "decompose.world_size")
    configure_threads(cfg.threads)
    reuse_freed_memory()  # the per-step [B, T, ΣC] tensors reuse heap blocks instead of page-faulting
    seed_everything(cfg.seed)
    device = dist.device
    dtype = resolve_precision(cfg.precision, device)
    target = TargetLM.from_pretrained(target_dir, map_location=device, expect=cfg.target.model)
    if job is not None:
        cfg = cfg.model_copy(update={"decompose": variant_decompose_config(cfg, job, target)})
    dcfg = cfg.decompose
    seq_len = dcfg.seq_len or target.cfg.context
    if seq_len > target.cfg.context:
        raise InputError(f"decompose.seq_len {seq_len} exceeds the target's context {target.cfg.context}: lower it or set it to null")
    check_memory(estimate_decomposition_bytes(target.cfg, dcfg, device=device, dtype=dtype), device, what="decompose",
                 keys="decompose.batch_size, decompose.seq_len, the C values of decompose.matrices or the "
                      "decompose.ci_fn size (or raise decompose.world_size)")
    train_path, val_path = Path(tokens_dir) / "train.bin", Path(tokens_dir) / "val.bin"
    train, val = TokenShard(train_path, seq_len), TokenShard(val_path, seq_len)  # both must exist
    eval_batch = val.eval_windows(dcfg.eval_batch_size or dcfg.batch_size)[:, :seq_len]
    inputs = {"train_tokens_sha256": sha256_file(train_path), "val_tokens_sha256": sha256_file(val_path)}

    def batches(gen: torch.Generator) -> torch.Tensor:
        return train.sample_batch(dcfg.batch_size, gen)[:, :seq_len]  # [B, T]

    log.info("decomposing %s (%s) into %s, rank %d of %d", target_dir, dtype, out_dir, dist.rank, dist.world_size)
    dec = decompose(target, batches, dcfg, seed=cfg.seed, dtype=dtype, device=device,
                    out_dir=out_dir, eval_batch=eval_batch, dist=dist, inputs=inputs)
    if not dist.is_main:
        return  # rank 0 writes the outputs
    dec.save(out_dir)
    write_yaml(out_dir / "final_config.yaml", {**cfg.model_dump(mode="json"), "resolved_precision": str(dtype).replace("torch.", ""),
                                               "compiled_kernels": dcfg.compiles,
                                               "provenance": dec.provenance,
                                               **({"variant": job.as_dict()} if job is not None else {})})
    df = pd.DataFrame(dec.history if dec.history else [])
    metrics_path = out_dir / "metrics.jsonl"
    if metrics_path.exists():
        df = pd.read_json(metrics_path, lines=True)
    save_figure(plot_losses(df), out_dir / "fig_losses")
    save_figure(plot_l0(df), out_dir / "fig_l0")
