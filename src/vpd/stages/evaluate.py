"""The `evaluate` stage: a decomposition scored on the target's own held-out windows.

Reads   <target>/{model.safetensors, config.json, curve.csv}, <tokens>/val.bin, <decomposition>/
Writes  <out>/{mask_strategies.csv, pgd_steps.csv, compute_recovered.csv, l0_by_layer.csv,
        l0_by_matrix.csv, firing_counts.csv, vpd_losses.csv, generations.{csv,md},
        paper_vs_ours.md, final_config.yaml,
        fig_compute_recovered.{png,pdf}, fig_pgd.{png,pdf}, fig_l0_by_layer.{png,pdf}}

The eval windows are `TokenShard(val.bin, context).eval_windows(n)` with n the target's
`eval_sequences` unless `evaluate.eval_sequences` says otherwise: the windows of the target's
`curve.csv`, so "compute recovered" compares like with like. Every file is written atomically.
"""

from __future__ import annotations

import time
from pathlib import Path


from vpd.config import ProjectConfig
from vpd.data.tokenizer import load_tokenizer
from vpd.data.tokens import eval_windows
from vpd.decomp import Decomposition
from vpd.evaluate.compute_recovered import compute_recovered_table
from vpd.evaluate.generations import generations_markdown, generations_table, showcase_models
from vpd.evaluate.loss_tables import loss_table
from vpd.evaluate.mask_strategies import evaluate_masks, evaluate_pgd, standard_strategies, summarise_pgd
from vpd.evaluate.paper import paper_vs_ours
from vpd.plots import save_figure
from vpd.plots.evaluate import plot_compute_recovered, plot_l0_by_layer, plot_pgd
from vpd.target.model import load_target
from vpd.utils.io import MetricsLog, write_csv, write_text, write_yaml
from vpd.utils.provenance import upstream_digests
from vpd.utils.runtime import default_device, log, resolve_precision, start_stage


OUTPUT_TABLES = (
    "mask_strategies.csv", "pgd_steps.csv", "compute_recovered.csv", "l0_by_layer.csv", "l0_by_matrix.csv",
    "firing_counts.csv", "vpd_losses.csv", "generations.csv",
)
FIGURES = ("fig_compute_recovered", "fig_pgd", "fig_l0_by_layer")


def run_evaluate(cfg: ProjectConfig, target_dir: Path, tokens_dir: Path, decomposition_dir: Path, out_dir: Path) -> None:
    out_dir = start_stage(cfg.seed, out_dir)
    device = default_device()
    dtype = resolve_precision(cfg.precision, device)
    ecfg = cfg.evaluate
    t0 = time.perf_counter()

    target, curve = load_target(target_dir, device, expect=cfg.target.model)
    dec = Decomposition.load(decomposition_dir, target, dtype=dtype, device=device)
    windows = eval_windows(cfg, tokens_dir, target.cfg.context)  # [N, T + 1]
    if ecfg.eval_sequences not in (None, cfg.target.train.eval_sequences):
        log.warning("evaluate.eval_sequences (%d) differs from target.train.eval_sequences (%d): compute recovered "
                    "compares CEs measured on different windows", ecfg.eval_sequences, cfg.target.train.eval_sequences)
    log.info("evaluating %s on %d held-out windows of %d tokens (%s)", decomposition_dir, len(windows),
             windows.shape[1] - 1, dtype)

    # CE / KL per mask strategy, and the CI statistics of the same tokens.
    strategies = standard_strategies(ecfg.thresholds)
    table, acc = evaluate_masks(dec, target, windows, strategies, batch_size=ecfg.batch_size, seed=cfg.seed,
                                thresholds=ecfg.thresholds, dtype=dtype)
    ce = dict(zip(table["strategy"], table["ce"]))
    log.info("target CE %.4f (curve's last point %.4f); unmasked %.4f, zero %.4f",
             ce["target"], float(curve["val_ce"].iloc[-1]), ce["unmasked"], ce["zero"])

    # Pretraining compute recovered per strategy, on the target's own curve.
    recovered = compute_recovered_table(curve, {name: ce[name] for name in strategies})

    # PGD attack with sources shared across each batch, next to zero ablation.
    per_batch = evaluate_pgd(dec, target, windows, batch_size=ecfg.pgd_batch_size or ecfg.batch_size,
                             n_batches=ecfg.pgd_batches, steps=ecfg.pgd_steps, step_size=ecfg.pgd_step_size,
                             seed=cfg.seed, dtype=dtype)
    zero_kl = float(table.loc[table["strategy"] == "zero", "kl"].iloc[0])
    pgd = summarise_pgd(per_batch, zero_ablation_kl=zero_kl)

    matrix_table = acc.matrix_table(ecfg.alive_eps)
    layer_table = acc.layer_table(ecfg.alive_eps)
    firing = acc.firing_table(ecfg.rare_fire_tokens, ecfg.alive_eps)
    losses = loss_table(MetricsLog(decomposition_dir / "metrics.jsonl").read(), ecfg.train_loss_window, table, pgd)

    tok = load_tokenizer(tokens_dir / "tokenizer.json")
    models = showcase_models(dec, target, strategies, pgd_steps=min(ecfg.pgd_steps), pgd_step_size=ecfg.pgd_step_size,
                             seed=cfg.seed, dtype=dtype)
    generations = generations_table(models, ecfg.generation_prompts, lambda s: tok.encode(s).ids, tok.decode,
                                    n_new=ecfg.generation_tokens, context=target.cfg.context)

    write_csv(out_dir / "mask_strategies.csv", table)
    write_csv(out_dir / "pgd_steps.csv", pgd)
    write_csv(out_dir / "compute_recovered.csv", recovered)
    write_csv(out_dir / "l0_by_layer.csv", layer_table)
    write_csv(out_dir / "l0_by_matrix.csv", matrix_table)
    write_csv(out_dir / "firing_counts.csv", firing)
    write_csv(out_dir / "vpd_losses.csv", losses)
    write_csv(out_dir / "generations.csv", generations)
    write_text(out_dir / "generations.md", generations_markdown(generations))
    header = (
        f"# Evaluation: paper vs this run ({cfg.name})\n\n"
        f"{len(windows)} held-out windows x {windows.shape[1] - 1} tokens; L0 and alive at CI > "
        f"{min(ecfg.thresholds):g}, alive = mean CI > {ecfg.alive_eps:g}. The paper's target is a 67M-parameter "
        f"LM; absolute numbers are not expected to match at this scale.\n\n"
    )
    write_text(out_dir / "paper_vs_ours.md",
               header + paper_vs_ours(table, recovered, pgd, layer_table, threshold=min(ecfg.thresholds)))
    save_figure(plot_compute_recovered(curve, recovered), out_dir / "fig_compute_recovered")
    save_figure(plot_pgd(pgd), out_dir / "fig_pgd")
    save_figure(plot_l0_by_layer(layer_table), out_dir / "fig_l0_by_layer")
    write_yaml(out_dir / "final_config.yaml", {
        **cfg.model_dump(mode="json"),
        "resolved_precision": str(dtype).removeprefix("torch."),
        "eval_windows": int(len(windows)),
        "inputs": upstream_digests(target=target_dir, tokens=tokens_dir, decomposition=decomposition_dir),
        "eval_tokens": int(table["n_tokens"].iloc[0]),
        "seconds": round(time.perf_counter() - t0, 1),
    })
    log.info("evaluation done in %.0f s, outputs in %s", time.perf_counter() - t0, out_dir)
