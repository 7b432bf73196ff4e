"""The target's training loop: AdamW, warm-up + cosine, validation curve, resumable checkpoints.

Step numbering: "step k" is the k-th optimiser update. The metrics record for step k holds that
update's learning rate, training loss and gradient norm; `val_ce` at step k (and the curve row)
is measured on the weights after k updates, so the curve starts at step 0 (initial weights).

Determinism: the weights, the optimiser moments, every RNG and the data generator are saved in
each checkpoint, and the validation windows are fixed, so a run resumed from a checkpoint ends
with bitwise the same weights, `curve.csv` and `metrics.jsonl` (timing fields aside) as one that
was never interrupted.

Multi-process (torchrun): the model is wrapped in DistributedDataParallel; every rank draws the
same global batch and trains on its own rows (so the data order does not depend on the world
size), DDP averages the gradients, the validation CE sums over every rank's share of the fixed
windows, and only rank 0 writes files and shows the progress bar.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn
from tqdm import tqdm

from vpd.config import TargetModelConfig, TargetTrainConfig
from vpd.data.tokens import TokenShard
from vpd.target.model import TargetLM
from vpd.utils import checkpoint as ckpt
from vpd.utils.errors import UserError
from vpd.utils.io import MetricsLog, sha256_file, write_text
from vpd.utils.provenance import differences
from vpd.utils.distributed import Dist
from vpd.utils.runtime import autocast, log, seed_everything

CURVE_COLUMNS = ("step", "tokens", "flops", "val_ce")
# Config keys that may change between a checkpoint and its resumption without changing results.
RESUME_FREE_KEYS = ("checkpoint_every", "checkpoint_keep")


class TrainingDivergedError(UserError, RuntimeError):
    """The loss, the gradient norm or the weights became NaN/inf."""


# ---------------------------------------------------------------- pieces, each testable alone
def lr_at(step: int, tcfg: TargetTrainConfig) -> float:
    """Learning rate of update `step` (0-based): linear warm-up, then cosine to lr * min_lr_frac."""
    if step < tcfg.warmup_steps:
        return tcfg.lr * (step + 1) / tcfg.warmup_steps
    progress = (step - tcfg.warmup_steps) / max(1, tcfg.steps - tcfg.warmup_steps)  # [0, 1)
    floor = tcfg.lr * tcfg.min_lr_frac
    return floor + (tcfg.lr - floor) * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def build_optimizer(model: nn.Module, tcfg: TargetTrainConfig) -> torch.optim.AdamW:
    """AdamW; weight decay on every matrix (the 24 block matrices and the tied embedding, as in
    GPT-2/nanoGPT), none on the RMSNorm gains, which set scales rather than store features."""
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    groups = [
        {"params": decay, "weight_decay": tcfg.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    # foreach: one multi-tensor kernel per op instead of a Python loop over ~30 parameters.
    return torch.optim.AdamW(groups, lr=tcfg.lr, betas=tuple(tcfg.betas), foreach=True)


def checkpoint_weights(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The model's state dict inside a training checkpoint's flat tensors (the `model.` entries)."""
    return {k.removeprefix("model."): v for k, v in tensors.items() if k.startswith("model.")}


def lm_loss(model: nn.Module, batch: torch.Tensor, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """Mean next-token cross-entropy (fp32) of windows batch [B, T+1]; matmuls in `dtype`."""
    batch = batch.to(device, non_blocking=True)
    x, y = batch[:, :-1], batch[:, 1:]  # [B, T] each
    with autocast(device, dtype):
        return model(x, targets=y)  # fused unembedding + CE, fp32


@torch.no_grad()
def evaluate(
    model: nn.Module,
    windows: torch.Tensor,
    batch_size: int,
    device: torch.device,
    dtype: torch.dtype,
    dist: Dist | None = None,
) -> float:
    """Mean CE over every predicted token of the fixed windows [N, T+1] (split over ranks)."""
    dist = dist or Dist()
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    mine = dist.shard(windows, even=False)
    for start in range(0, len(mine), batch_size):
        chunk = mine[start : start + batch_size]
        n = chunk.shape[0] * (chunk.shape[1] - 1)
        total += lm_loss(model, chunk, device, dtype).item() * n
        count += n
    model.train(was_training)
    total, count = dist.sum_(torch.tensor([total, float(count)], dtype=torch.float64, device=device)).tolist()
    return total / count


def format_curve(rows: list[dict]) -> str:
    """curve.csv text; floats as repr so a resumed run's file is byte-identical."""
    lines = [",".join(CURVE_COLUMNS)]
    lines += [",".join(repr(r[c]) if isinstance(r[c], float) else str(r[c]) for c in CURVE_COLUMNS) for r in rows]
    return "\n".join(lines) + "\n"


def is_eval_step(step: int, tcfg: TargetTrainConfig) -> bool:
    """The curve has a point at step 0, every `eval_every` steps, and at the final step."""
    return step % tcfg.eval_every == 0 or step == tcfg.steps


def curve_steps(tcfg: TargetTrainConfig) -> list[int]:
    return [s for s in range(tcfg.steps + 1) if is_eval_step(s, tcfg)]


# ---------------------------------------------------------------- distributed
def wrap_model(model: nn.Module, dist: Dist) -> nn.Module:
    """DistributedDataParallel around the model when there are several ranks (gradients are
    averaged during the backward); the model itself with one process."""
    if not dist.active:
        return model
    from torch.nn.parallel import DistributedDataParallel

    device_ids = [dist.device.index] if dist.device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=device_ids)


# ---------------------------------------------------------------- the loop
@dataclass
class TrainResult:
    model: TargetLM
    curve: list[dict] = field(default_factory=list)
    finished: bool = True


def _resume_signature(mcfg: TargetModelConfig, tcfg: TargetTrainConfig, seed: int, precision: str,
                      shards: dict[str, Path]) -> dict:
    """Everything a checkpoint's state depends on: the config, seed, precision and the token shards' sha256."""
    train = tcfg.model_dump(mode="json")
    for key in RESUME_FREE_KEYS:
        train.pop(key)
    return {"model": mcfg.model_dump(mode="json"), "train": train, "seed": seed, "precision": precision,
            "inputs": {f"{name}_sha256": sha256_file(path) for name, path in shards.items()}}


def train_target(
    mcfg: TargetModelConfig,
    tcfg: TargetTrainConfig,
    train_bin: Path,
    val_bin: Path,
    out_dir: Path,
    *,
    seed: int,
    device: torch.device,
    dtype: torch.dtype,
    stop_after: int | None = None,
    dist: Dist | None = None,
) -> TrainResult:
    """Train (or resume) the target; writes checkpoints/, metrics.jsonl and curve.csv in out_dir.

    `stop_after` ends the loop after that many updates without finishing, exactly as if the
    process had been killed there (used by the resume tests).
    """
    out_dir = Path(out_dir)
    ckpt_dir = out_dir / "checkpoints"
    dist = dist or Dist()
    if dist.world_size != tcfg.world_size:
        raise ValueError(f"target.train.world_size is {tcfg.world_size} but training runs in {dist.world_size} process(es)")
    metrics = MetricsLog(out_dir / "metrics.jsonl") if dist.is_main else None
    curve_path = out_dir / "curve.csv"
    signature = _resume_signature(mcfg, tcfg, seed, str(dtype).removeprefix("torch."),
                                  {"train_tokens": Path(train_bin), "val_tokens": Path(val_bin)})

    seed_everything(seed)
    model = TargetLM(mcfg).to(device)
    opt = build_optimizer(model, tcfg)
    ddp_model = wrap_model(model, dist)
    train_shard = TokenShard(train_bin, mcfg.context)
    val_windows = TokenShard(val_bin, mcfg.context).eval_windows(tcfg.eval_sequences)  # [N, T+1]
    data_gen = torch.Generator().manual_seed(seed)  # the training data order
    tokens_per_step = tcfg.batch_size * mcfg.context
    flops_per_token = model.flops_per_token(mcfg.context)

    # ------------------------------------------------------------ resume
    step, curve = 0, []
    state = ckpt.load_latest(ckpt_dir)
    if state is not None and state[1].get("signature") != signature:
        stale = differences(state[1].get("signature"), signature)
        ckpt.set_aside_on_all_ranks(ckpt_dir, "written with another config, seed, precision or token shards ("
                                    + "; ".join(stale[:4]) + ")", dist)
        state = None
    if state is not None:
        tensors, meta = state
        model.load_state_dict(checkpoint_weights(tensors))
        ckpt.optimizer_state_from_flat(opt, tensors, meta["optimizer"], "opt")
        ckpt.set_rng_state(tensors, meta["rng"])
        data_gen.set_state(tensors["rng.data"])
        step, curve = meta["step"], meta["curve"]
        if dist.is_main:
            metrics.truncate_after(step)
            write_text(curve_path, format_curve(curve))
        log.info("resumed target training from %s at step %d", ckpt_dir, step)
    elif dist.is_main and metrics.path.exists():
        metrics.path.unlink()  # a fresh run (or one that died before its first checkpoint) starts the log over

    def save_checkpoint() -> None:
        if not all(torch.isfinite(p).all() for p in model.parameters()):
            raise TrainingDivergedError(f"weights became non-finite by step {step}; no checkpoint written")
        if not dist.is_main:
            dist.barrier()
            return
        opt_tensors, opt_meta = ckpt.optimizer_state_to_flat(opt, "opt")
        rng_tensors, rng_meta = ckpt.rng_state()
        tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
        tensors.update(opt_tensors)
        tensors.update(rng_tensors)
        tensors["rng.data"] = data_gen.get_state()
        meta = {"signature": signature, "optimizer": opt_meta, "rng": rng_meta, "curve": curve}
        ckpt.save(ckpt_dir, step, tensors, meta, keep=tcfg.checkpoint_keep)
        dist.barrier()  # the other ranks wait until the checkpoint is complete

    def eval_point() -> float:
        val_ce = evaluate(model, val_windows, tcfg.batch_size, device, dtype, dist)
        tokens = step * tokens_per_step
        curve.append({"step": step, "tokens": tokens, "flops": tokens * flops_per_token, "val_ce": val_ce})
        if dist.is_main:
            write_text(curve_path, format_curve(curve))
        return val_ce

    def log_record(record: dict) -> None:
        if dist.is_main:
            metrics.log(record)

    if step == 0:
        log_record({"step": 0, "tokens": 0, "val_ce": eval_point()})

    # ------------------------------------------------------------ train
    params = [p for p in model.parameters() if p.requires_grad]
    model.train()
    bar = tqdm(total=tcfg.steps, initial=step, desc="target", unit="step", dynamic_ncols=True, disable=not dist.is_main)
    try:
        while step < tcfg.steps:
            if stop_after is not None and step >= stop_after:
                return TrainResult(model, curve, finished=False)
            t0 = time.perf_counter()
            lr = lr_at(step, tcfg)
            for group in opt.param_groups:
                group["lr"] = lr
            batch = dist.shard(train_shard.sample_batch(tcfg.batch_size, data_gen))  # this rank's rows [B/N, T+1]
            loss = lm_loss(ddp_model, batch, device, dtype)
            (mean_loss,) = dist.mean_values([loss.item()])  # every rank sees the same value, so all stop together
            if not math.isfinite(mean_loss):
                raise TrainingDivergedError(
                    f"training loss is {mean_loss} at step {step + 1}; last good checkpoint: "
                    f"{_latest_name(ckpt_dir)}. Lower target.train.lr or raise warmup_steps, then rerun"
                )
            opt.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(params, tcfg.grad_clip)
            if not torch.isfinite(grad_norm):
                raise TrainingDivergedError(
                    f"gradient norm is {grad_norm.item()} at step {step + 1}; last good checkpoint: "
                    f"{_latest_name(ckpt_dir)}"
                )
            opt.step()
            step += 1
            elapsed = time.perf_counter() - t0
            record = {
                "step": step,
                "tokens": step * tokens_per_step,
                "lr": lr,
                "loss": mean_loss,
                "grad_norm": grad_norm.item(),
                "tokens_per_s": tokens_per_step / elapsed,
            }
            if is_eval_step(step, tcfg):
                record["val_ce"] = eval_point()
                bar.set_postfix(loss=f"{record['loss']:.3f}", val=f"{record['val_ce']:.3f}", refresh=False)
            elif step % 10 == 0:
                bar.set_postfix(loss=f"{record['loss']:.3f}", refresh=False)
            log_record(record)
            if step % tcfg.checkpoint_every == 0 or step == tcfg.steps:
                save_checkpoint()
            bar.update(1)
    finally:
        bar.close()
    return TrainResult(model, curve, finished=True)


def _latest_name(ckpt_dir: Path) -> str:
    found = ckpt.list_checkpoints(ckpt_dir)
    return str(found[-1]) if found else "none (the run restarts from step 0)"
