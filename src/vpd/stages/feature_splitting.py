"""The feature_splitting stage: alive units against capacity for VPD and transcoders, with figures."""

import time
from pathlib import Path

import pandas as pd

from vpd.baselines.transcoders import Transcoder
from vpd.config import ProjectConfig
from vpd.data.tokens import eval_windows
from vpd.decomp import Decomposition
from vpd.decomp.variants import splitting_matrices
from vpd.evaluate.splitting import (
    SPLIT_COLUMNS,
    TRANSCODER_UNIT,
    VPD_UNIT,
    cosine_matrix,
    pair_table,
    total_alive,
    transcoder_alive,
    transcoder_units,
    vpd_alive,
    vpd_cosines,
    vpd_units,
)
from vpd.plots import save_figure
from vpd.plots.splitting import plot_alive_vs_capacity, plot_splitting_heatmap
from vpd.sweeps import splitting_transcoders, variant_jobs
from vpd.target.model import load_target
from vpd.utils.io import write_csv, write_yaml
from vpd.utils.provenance import labelled_digests, upstream_digests
from vpd.utils.runtime import default_device, log, resolve_precision, start_stage


def run_feature_splitting(
    cfg: ProjectConfig, target_dir: Path, tokens_dir: Path, transcoders_dir: Path, variants_dir: Path, out_dir: Path,
) -> None:
    """Reads the splitting variants <variants>/split_<m>x/ and the transcoders <transcoders>/<name>/;
    writes <out>/{splitting.csv, splitting_matches.csv, final_config.yaml,
    fig_feature_splitting.{png,pdf}, fig_splitting_heatmap.{png,pdf}}."""
    out_dir, transcoders_dir, variants_dir = start_stage(cfg.seed, out_dir), Path(transcoders_dir), Path(variants_dir)
    device = default_device()
    dtype = resolve_precision(cfg.precision, device)
    fs, ecfg = cfg.feature_splitting, cfg.evaluate
    t0 = time.perf_counter()
    target, _ = load_target(target_dir, device, expect=cfg.target.model)
    windows = eval_windows(cfg, tokens_dir, target.cfg.context)
    base = splitting_matrices(cfg, target)

    split_rows, match_tables = [], []
    vpd_runs, vpd_caps = {}, {}
    inputs = upstream_digests(target=target_dir, tokens=tokens_dir)
    for job in (j for j in variant_jobs(cfg) if j.purpose == "splitting"):
        m, run = job.C_multiplier, f"{job.C_multiplier:g}x"
        dec = Decomposition.load(variants_dir / job.name, target, dtype=dtype, device=device)
        inputs.update(labelled_digests(f"variants/{job.name}", "decomposition", variants_dir / job.name))
        alive = vpd_alive(dec, windows, ecfg.batch_size, ecfg.alive_eps)
        cap, n_alive = dec.total_C, total_alive(alive)
        split_rows.append({"method": "VPD", "run": run, "scale": m, "capacity": cap, "alive": n_alive})
        vpd_runs[run], vpd_caps[run] = vpd_units(dec, alive), cap
        log.info("VPD %s: %d of %d MLP subcomponents alive", run, n_alive, cap)
    match_tables.append(pair_table("VPD", VPD_UNIT, vpd_runs, vpd_caps, vpd_cosines, fs.cosine_threshold))

    for kind in fs.kinds:
        runs, caps = {}, {}
        for job in (j for j in splitting_transcoders(cfg) if j.kind == kind):
            n = job.n_latents
            tc = Transcoder.load(transcoders_dir / job.name, map_location=device).eval()
            inputs.update(labelled_digests(f"transcoders/{job.name}", "transcoder", transcoders_dir / job.name))
            fired = transcoder_alive(target, tc, windows, ecfg.batch_size, cfg.baselines.inference, dtype)
            run = f"L={n}"
            cap, n_alive = n * tc.n_layer, int(fired.sum())
            split_rows.append({"method": kind.upper(), "run": run, "scale": n, "capacity": cap, "alive": n_alive})
            runs[run], caps[run] = transcoder_units(tc, fired), cap
            log.info("%s %s: %d of %d latents alive", kind.upper(), run, n_alive, cap)
        match_tables.append(pair_table(kind.upper(), TRANSCODER_UNIT, runs, caps, cosine_matrix, fs.cosine_threshold))

    split = pd.DataFrame(split_rows)
    split["alive_fraction"] = split["alive"] / split["capacity"]
    split = split[SPLIT_COLUMNS]
    matches = pd.concat(match_tables, ignore_index=True)
    write_csv(out_dir / "splitting.csv", split)
    write_csv(out_dir / "splitting_matches.csv", matches)
    save_figure(plot_alive_vs_capacity(split), out_dir / "fig_feature_splitting")
    save_figure(plot_splitting_heatmap(matches, fs.cosine_threshold), out_dir / "fig_splitting_heatmap")
    write_yaml(out_dir / "final_config.yaml", {
        **cfg.model_dump(mode="json"), "resolved_precision": str(dtype).removeprefix("torch."),
        "base_C": base, "seconds": round(time.perf_counter() - t0, 1),
        "inputs": inputs,
    })
    log.info("feature splitting done in %.0f s, outputs in %s", time.perf_counter() - t0, out_dir)
