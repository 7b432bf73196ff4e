"""The `baselines` stage: PLT/CLT transcoder sweep, splicing, and the Pareto comparison with VPD.

Reads   <target>/, <tokens>/{train.bin, val.bin}, <decomposition>/ (the main VPD run)
Writes  <out>/{plt_*/,clt_*/}{transcoder.safetensors, cfg.json}  one per (kind, dictionary size, k)
        <out>/vpd_coeff_<x>/  extra VPD runs along baselines.vpd_importance_coeffs
        <out>/{transcoders.csv, pareto.csv, summary.json, metrics.jsonl, final_config.yaml,
        fig_pareto.{png,pdf}}

Every transcoder is trained on activations streamed from the target over the training tokens and
scored on the evaluation's held-out windows (`vpd.evaluate.stage.eval_windows`): local FVU, L0
and dead fraction per layer (transcoders.csv), and the CE increase with all MLPs replaced at once
(pareto.csv, one row per (method, setting)). Transcoders whose saved `run_key` matches the current
target, tokens and settings are loaded instead of retrained.
"""

from __future__ import annotations

import time
from pathlib import Path

import pandas as pd
import torch

from vpd.baselines.splice import TranscoderReplacement, ZeroReplacement, evaluate_splice
from vpd.baselines.transcoders import (
    CONFIG_FILE, WEIGHTS_FILE, Transcoder, build_sweep, evaluate_transcoder_local, train_transcoders,
)
from vpd.config import ProjectConfig
from vpd.data.tokens import TokenShard
from vpd.evaluate.pareto import pareto_table, transcoder_point, vpd_pareto_points
from vpd.evaluate.stage import eval_windows, load_target
from vpd.utils.io import write_csv
from vpd.evaluate.variants import decompose_variant, variant_config
from vpd.utils.io import MetricsLog, read_json, sha256_file, write_json, write_yaml
from vpd.utils.provenance import upstream_digests
from vpd.utils.runtime import default_device, log, resolve_precision, start_stage


def coeff_run_name(coeff: float) -> str:
    """Directory / Pareto run name of an extra VPD run, e.g. `vpd_coeff_0.001`."""
    return f"vpd_coeff_{coeff:g}"


def transcoder_run_key(cfg: ProjectConfig, target_dir: Path, tokens_dir: Path, dtype: torch.dtype) -> dict:
    """What a trained transcoder depends on besides its own (kind, size, k)."""
    return {
        "train": cfg.baselines.train.model_dump(mode="json"),
        "seed": cfg.seed,
        "dtype": str(dtype).removeprefix("torch."),
        "sweep": {"kinds": cfg.baselines.kinds, "n_latents": cfg.baselines.n_latents, "k": cfg.baselines.k},
        "target_sha256": sha256_file(Path(target_dir) / "model.safetensors"),
        "train_sha256": sha256_file(Path(tokens_dir) / "train.bin"),
    }


def _saved_transcoders(out_dir: Path, names: list[str], key: dict, device: torch.device) -> dict[str, Transcoder] | None:
    """All transcoders of the sweep loaded from out_dir if every one was trained with `key`, else None."""
    loaded = {}
    for name in names:
        d = out_dir / name
        if not (d / CONFIG_FILE).exists() or not (d / WEIGHTS_FILE).exists() or read_json(d / CONFIG_FILE).get("run_key") != key:
            return None
        loaded[name] = Transcoder.load(d, map_location=device)
    return loaded


def train_sweep(cfg: ProjectConfig, target, target_dir: Path, tokens_dir: Path, out_dir: Path,
                dtype: torch.dtype, device: torch.device) -> dict[str, Transcoder]:
    """Every transcoder of the configured sweep, trained together on one activation stream and saved."""
    bcfg = cfg.baselines
    sweep = build_sweep(bcfg.kinds, bcfg.n_latents, bcfg.k, target.cfg.n_layer, target.cfg.d_model, cfg.seed)
    key = transcoder_run_key(cfg, target_dir, tokens_dir, dtype)
    saved = _saved_transcoders(out_dir, list(sweep), key, device)
    if saved is not None:
        log.info("reusing %d trained transcoders in %s", len(saved), out_dir)
        return saved
    sweep = {name: tc.to(device) for name, tc in sweep.items()}
    seq_len = bcfg.train.seq_len or target.cfg.context
    shard = TokenShard(Path(tokens_dir) / "train.bin", seq_len)
    gen = torch.Generator().manual_seed(cfg.seed + 7919)  # the transcoders' own data order

    def sample_batch() -> torch.Tensor:
        return shard.sample_batch(bcfg.train.batch_size, gen)[:, :-1]  # [B, T]

    metrics = MetricsLog(out_dir / "metrics.jsonl")
    if metrics.path.exists():
        metrics.path.unlink()  # training restarts from scratch, so does its log
    log.info("training %d transcoders for %d steps of %d x %d tokens", len(sweep), bcfg.train.steps,
             bcfg.train.batch_size, seq_len)
    train_transcoders(target, sample_batch, sweep, bcfg.train, dtype=dtype, metrics=metrics)
    for name, tc in sweep.items():
        tc.save(out_dir / name, extra={"name": name, "inference": bcfg.inference, "run_key": key})
    return sweep


def run_baselines(cfg: ProjectConfig, target_dir: Path, tokens_dir: Path, decomposition_dir: Path, out_dir: Path) -> None:
    from vpd.decomp import Decomposition
    from vpd.plots import save_figure
    from vpd.plots.baselines import plot_pareto

    out_dir = start_stage(cfg.seed, out_dir)
    device = default_device()
    dtype = resolve_precision(cfg.precision, device)
    bcfg, batch_size = cfg.baselines, cfg.evaluate.batch_size
    seconds: dict[str, float] = {}
    t0 = time.perf_counter()

    target, _ = load_target(target_dir, device, expect=cfg.target.model)
    windows = eval_windows(cfg, tokens_dir, target.cfg.context)  # [N, T + 1]

    # Transcoders: train (or reuse), then score locally and spliced.
    sweep = train_sweep(cfg, target, target_dir, tokens_dir, out_dir, dtype, device)
    seconds["transcoders_train"] = time.perf_counter() - t0
    t1 = time.perf_counter()
    local, points = [], []
    for name, tc in sweep.items():
        tc.eval()
        per_layer = evaluate_transcoder_local(target, tc, windows, batch_size=batch_size, mode=bcfg.inference,
                                              dead_tokens=bcfg.train.dead_tokens, dtype=dtype)
        per_layer.insert(0, "k", tc.k)
        per_layer.insert(0, "n_latents", tc.n_latents)
        per_layer.insert(0, "kind", tc.kind)
        per_layer.insert(0, "name", name)
        local.append(per_layer)
        res = evaluate_splice(target, TranscoderReplacement(tc, bcfg.inference), windows, batch_size=batch_size, dtype=dtype)
        points.append(transcoder_point(tc.kind, tc.n_latents, tc.k, res))
        log.info("%s: mean FVU %.3f, L0 %.1f per layer, CE increase %.4f", name, per_layer["fvu"].mean(),
                 per_layer["l0"].mean(), res.ce_increase)
    zero = evaluate_splice(target, ZeroReplacement(target.cfg.n_layer), windows, batch_size=batch_size, dtype=dtype)
    seconds["transcoders_eval"] = time.perf_counter() - t1

    # VPD: the main decomposition plus the importance-minimality sweep.
    t1 = time.perf_counter()
    main = Decomposition.load(decomposition_dir, target, dtype=dtype, device=device)
    points += vpd_pareto_points(main, target, windows, bcfg.vpd_thresholds, batch_size=batch_size, run="main", dtype=dtype)
    for coeff in bcfg.vpd_importance_coeffs:
        name = coeff_run_name(coeff)
        dcfg = variant_config(cfg.decompose, importance_minimality=coeff, steps=bcfg.vpd_steps)
        dec = decompose_variant(target, dcfg, out_dir / name, target_dir=Path(target_dir), tokens_dir=Path(tokens_dir),
                                seed=cfg.seed, dtype=dtype, device=device)
        points += vpd_pareto_points(dec, target, windows, bcfg.vpd_thresholds, batch_size=batch_size,
                                    run=f"coeff={coeff:g}", dtype=dtype)
    seconds["vpd"] = time.perf_counter() - t1

    table = pareto_table(points)
    write_csv(out_dir / "transcoders.csv", pd.concat(local, ignore_index=True))
    write_csv(out_dir / "pareto.csv", table)
    save_figure(plot_pareto(table, zero_ablation_ce_increase=zero.ce_increase), out_dir / "fig_pareto")
    seconds["total"] = time.perf_counter() - t0
    write_json(out_dir / "summary.json", {
        "target_ce": zero.target_ce,
        "zero_ablation": {"ce": zero.ce, "ce_increase": zero.ce_increase, "kl": zero.kl},
        "eval_windows": int(len(windows)),
        "eval_tokens": zero.n_tokens,
        "main_importance_minimality": cfg.decompose.coeffs.importance_minimality,
        "seconds": {k: round(v, 1) for k, v in seconds.items()},
    })
    write_yaml(out_dir / "final_config.yaml", {
        **cfg.model_dump(mode="json"), "resolved_precision": str(dtype).removeprefix("torch."),
        "inputs": upstream_digests(target=target_dir, tokens=tokens_dir, decomposition=decomposition_dir),
    })
    log.info("baselines done in %.0f s, outputs in %s", seconds["total"], out_dir)
