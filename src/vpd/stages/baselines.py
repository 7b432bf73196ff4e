"""The `baselines` stage: the sparsity-vs-CE comparison of VPD against the trained transcoders.

Reads   <target>/, <tokens>/val.bin, <decomposition>/ (the main VPD run),
        <transcoders>/<name>/{cfg.json, local.csv, pareto_point.json} for every transcoder job,
        <variants>/coeff_<x>/ (the importance-minimality sweep)
Writes  <out>/{transcoders.csv, pareto.csv, summary.json, final_config.yaml, fig_pareto.{png,pdf}}

The transcoder jobs score themselves (`vpd.stages.transcoder`); this stage adds the VPD points of
the main run and of each coefficient run on the same held-out windows (`vpd.evaluate.pareto`)
and the zero-ablation reference, and draws the figure.
"""

from __future__ import annotations

import time
from pathlib import Path

import pandas as pd

from vpd.baselines.splice import ZeroReplacement, evaluate_splice
from vpd.config import ProjectConfig
from vpd.data.tokens import eval_windows
from vpd.decomp import Decomposition
from vpd.evaluate.pareto import pareto_table, read_transcoder_point, vpd_pareto_points, with_frontier_columns
from vpd.plots import save_figure
from vpd.plots.baselines import plot_pareto
from vpd.sweeps import transcoder_jobs, variant_jobs
from vpd.target.model import load_target
from vpd.utils.io import write_csv, write_json, write_yaml
from vpd.utils.provenance import labelled_digests, upstream_digests
from vpd.utils.runtime import default_device, log, resolve_precision, start_stage


def run_baselines(cfg: ProjectConfig, target_dir: Path, tokens_dir: Path, decomposition_dir: Path,
                  transcoders_dir: Path, variants_dir: Path, out_dir: Path) -> None:
    out_dir = start_stage(cfg.seed, out_dir)
    device = default_device()
    dtype = resolve_precision(cfg.precision, device)
    bcfg, batch_size = cfg.baselines, cfg.evaluate.batch_size
    t0 = time.perf_counter()
    target, _ = load_target(target_dir, device, expect=cfg.target.model)
    windows = eval_windows(cfg, tokens_dir, target.cfg.context)  # [N, T + 1]

    jobs = transcoder_jobs(cfg)
    local = pd.concat([pd.read_csv(Path(transcoders_dir) / j.name / "local.csv") for j in jobs], ignore_index=True)
    points = [read_transcoder_point(Path(transcoders_dir) / j.name) for j in jobs]
    zero = evaluate_splice(target, ZeroReplacement(target.cfg.n_layer), windows, batch_size=batch_size, dtype=dtype)

    main = Decomposition.load(decomposition_dir, target, dtype=dtype, device=device)
    points += vpd_pareto_points(main, target, windows, bcfg.vpd_thresholds, batch_size=batch_size, run="main", dtype=dtype)
    coeff_runs = [j for j in variant_jobs(cfg) if j.purpose == "pareto"]
    for job in coeff_runs:
        dec = Decomposition.load(Path(variants_dir) / job.name, target, dtype=dtype, device=device)
        points += vpd_pareto_points(dec, target, windows, bcfg.vpd_thresholds, batch_size=batch_size,
                                    run=f"coeff={job.importance_minimality:g}", dtype=dtype)

    table = with_frontier_columns(pareto_table(points))
    write_csv(out_dir / "transcoders.csv", local)
    write_csv(out_dir / "pareto.csv", table)
    save_figure(plot_pareto(table, zero_ablation_ce_increase=zero.ce_increase), out_dir / "fig_pareto")
    seconds = round(time.perf_counter() - t0, 1)
    write_json(out_dir / "summary.json", {
        "target_ce": zero.target_ce,
        "zero_ablation": {"ce": zero.ce, "ce_increase": zero.ce_increase, "kl": zero.kl},
        "eval_windows": int(len(windows)),
        "eval_tokens": zero.n_tokens,
        "main_importance_minimality": cfg.decompose.coeffs.importance_minimality,
        "seconds": {"total": seconds},
    })
    inputs = upstream_digests(target=target_dir, tokens=tokens_dir, decomposition=decomposition_dir)
    for j in jobs:
        inputs.update(labelled_digests(f"transcoders/{j.name}", "transcoder", Path(transcoders_dir) / j.name))
    for j in coeff_runs:
        inputs.update(labelled_digests(f"variants/{j.name}", "decomposition", Path(variants_dir) / j.name))
    write_yaml(out_dir / "final_config.yaml", {
        **cfg.model_dump(mode="json"), "resolved_precision": str(dtype).removeprefix("torch."), "inputs": inputs,
    })
    log.info("baselines comparison done in %.0f s, outputs in %s", seconds, out_dir)
