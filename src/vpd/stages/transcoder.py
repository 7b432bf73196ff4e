"""The `transcoder` stage: one BatchTopK transcoder of the baselines sweep, trained and scored.

Reads   <target>/, <tokens>/{train.bin, val.bin}
Writes  <out>/{transcoder.safetensors, cfg.json, metrics.jsonl, local.csv, pareto_point.json,
        final_config.yaml}

The transcoder (`vpd.sweeps.TranscoderJob`, named e.g. `plt_L512_k8`) starts from its own seeded
initialisation and trains on activations streamed from the frozen target over the training
tokens, in the data order every transcoder of the sweep shares (seed + 7919; a seeds-comparison
job uses its own seed for both). It is then scored
on the evaluation's held-out windows (`vpd.data.tokens.eval_windows`): local FVU, L0, alive and
dead fraction per layer (local.csv), and the CE increase with every MLP replaced at once
(pareto_point.json, one point of the Pareto comparison).
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import torch

from vpd.baselines.splice import TranscoderReplacement, evaluate_splice
from vpd.baselines.transcoders import Transcoder, evaluate_transcoder_local, train_transcoders
from vpd.config import ProjectConfig
from vpd.data.tokens import TokenShard, eval_windows
from vpd.sweeps import find_transcoder
from vpd.target.model import load_target
from vpd.utils.io import MetricsLog, write_csv, write_json, write_yaml
from vpd.utils.provenance import upstream_digests
from vpd.utils.runtime import default_device, log, resolve_precision, start_stage


DATA_ORDER_OFFSET = 7919  # the transcoders' batch order: seed + this, the same for every job of the sweep


def run_transcoder(cfg: ProjectConfig, target_dir: Path, tokens_dir: Path, name: str, out_dir: Path,
                   *, progress: bool = True) -> None:
    job = find_transcoder(cfg, name)
    out_dir = start_stage(cfg.seed, out_dir)
    device = default_device()
    dtype = resolve_precision(cfg.precision, device)
    bcfg = cfg.baselines
    t0 = time.perf_counter()
    target, _ = load_target(target_dir, device, expect=cfg.target.model)
    windows = eval_windows(cfg, tokens_dir, target.cfg.context)  # [N, T + 1], checked before training
    seq_len = bcfg.train.seq_len or target.cfg.context
    shard = TokenShard(Path(tokens_dir) / "train.bin", seq_len)

    init = torch.Generator().manual_seed(job.init_seed(cfg.seed))
    tc = Transcoder(job.kind, target.cfg.n_layer, target.cfg.d_model, target.cfg.d_model, job.n_latents, job.k,
                    generator=init).to(device)
    order = torch.Generator().manual_seed(job.run_seed(cfg.seed) + DATA_ORDER_OFFSET)

    def sample_batch() -> torch.Tensor:
        return shard.sample_batch(bcfg.train.batch_size, order)[:, :-1]  # [B, T]

    metrics = MetricsLog(out_dir / "metrics.jsonl")
    if metrics.path.exists():
        metrics.path.unlink()  # training restarts from scratch, so does its log
    log.info("training %s for %d steps of %d x %d tokens", name, bcfg.train.steps, bcfg.train.batch_size, seq_len)
    train_transcoders(target, sample_batch, {name: tc}, bcfg.train, dtype=dtype, metrics=metrics, progress=progress)
    train_seconds = time.perf_counter() - t0

    tc.eval()
    local = evaluate_transcoder_local(target, tc, windows, batch_size=cfg.evaluate.batch_size, mode=bcfg.inference,
                                      dead_tokens=bcfg.train.dead_tokens, dtype=dtype)
    for col, value in (("k", tc.k), ("n_latents", tc.n_latents), ("kind", tc.kind), ("name", name)):
        local.insert(0, col, value)
    splice = evaluate_splice(target, TranscoderReplacement(tc, bcfg.inference), windows,
                             batch_size=cfg.evaluate.batch_size, dtype=dtype)
    log.info("%s: mean FVU %.3f, L0 %.1f per layer, CE increase %.4f", name, local["fvu"].mean(), local["l0"].mean(),
             splice.ce_increase)

    tc.save(out_dir, extra={"name": name, "inference": bcfg.inference})
    write_csv(out_dir / "local.csv", local)
    write_json(out_dir / "pareto_point.json", {"kind": tc.kind, "n_latents": tc.n_latents, "k": tc.k,
                                               **dataclasses.asdict(splice)})
    write_yaml(out_dir / "final_config.yaml", {
        **cfg.model_dump(mode="json"), "resolved_precision": str(dtype).removeprefix("torch."),
        "transcoder": dataclasses.asdict(job), "init_seed": job.init_seed(cfg.seed),
        "seconds": {"train": round(train_seconds, 1), "total": round(time.perf_counter() - t0, 1)},
        "inputs": upstream_digests(target=target_dir, tokens=tokens_dir),
    })
    log.info("transcoder %s done in %.0f s, outputs in %s", name, time.perf_counter() - t0, out_dir)
