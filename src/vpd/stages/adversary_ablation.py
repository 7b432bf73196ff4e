"""The `adversary_ablation` stage: what the adversary buys, as CE at fixed source values.

Reads   <target>/, <tokens>/val.bin, <variants>/adversary_on/ and <variants>/adversary_off/ (the
        main config at `adversary_ablation.steps`, with and without the adversary)
Writes  <out>/{ce_vs_source.csv, final_config.yaml, fig_adv-vs-no-adv.{png,pdf}}

For each run and each r of `adversary_ablation.source_values`, every subcomponent is masked at
CI + (1 - CI) r and Δ at r, on the evaluation's held-out windows. A decomposition whose CI
function marks too few subcomponents as needed degrades as r falls; the adversary's training
signal is exactly the worst such r per subcomponent, so without it the low-r CE is expected to be
worse (the paper: "much worse at small r").
"""

from __future__ import annotations

import time
from pathlib import Path

import pandas as pd

from vpd.config import ProjectConfig
from vpd.data.tokens import eval_windows
from vpd.decomp import Decomposition
from vpd.evaluate.mask_strategies import evaluate_masks, fixed_source, source_name
from vpd.plots import save_figure
from vpd.plots.adversary import plot_adv_vs_no_adv
from vpd.sweeps import adversary_variant_name
from vpd.target.model import load_target
from vpd.utils.errors import InputError
from vpd.utils.io import write_csv, write_yaml
from vpd.utils.provenance import labelled_digests, upstream_digests
from vpd.utils.runtime import default_device, log, resolve_precision, start_stage

COLUMNS = ["run", "adversary", "r", "ce", "kl", "ce_increase", "n_tokens"]


def run_adversary_ablation(cfg: ProjectConfig, target_dir: Path, tokens_dir: Path, variants_dir: Path,
                           out_dir: Path) -> None:
    acfg = cfg.adversary_ablation
    if not acfg.enabled:
        raise InputError("adversary_ablation.enabled is false: there are no runs to compare")
    runs = {adversary_variant_name(a): a for a in (True, False)}
    for name in runs:
        if not (Path(variants_dir) / name / "decomposition.json").exists():
            raise InputError(f"{Path(variants_dir) / name} holds no decomposition (run its decompose_variant job first)")
    out_dir = start_stage(cfg.seed, out_dir)
    device = default_device()
    dtype = resolve_precision(cfg.precision, device)
    t0 = time.perf_counter()
    target, _ = load_target(target_dir, device, expect=cfg.target.model)
    windows = eval_windows(cfg, tokens_dir, target.cfg.context)
    strategies = {source_name(r): fixed_source(r) for r in acfg.source_values}
    rows, target_ce = [], None
    for name, adversary in runs.items():
        dec = Decomposition.load(Path(variants_dir) / name, target, dtype=dtype, device=device)
        table, _ = evaluate_masks(dec, target, windows, strategies, batch_size=cfg.evaluate.batch_size,
                                  seed=cfg.seed, dtype=dtype)
        target_ce = float(table.loc[table["strategy"] == "target", "ce"].iloc[0])
        for r in acfg.source_values:
            row = table[table["strategy"] == source_name(r)].iloc[0]
            rows.append({"run": name, "adversary": adversary, "r": r, "ce": row["ce"], "kl": row["kl"],
                         "ce_increase": row["ce"] - target_ce, "n_tokens": int(row["n_tokens"])})
        log.info("%s: CE at r=%g %.3f, at r=%g %.3f (target %.3f)", name, acfg.source_values[0], rows[-len(strategies)]["ce"],
                 acfg.source_values[-1], rows[-1]["ce"], target_ce)
    table = pd.DataFrame(rows, columns=COLUMNS)
    write_csv(out_dir / "ce_vs_source.csv", table)
    save_figure(plot_adv_vs_no_adv(table, target_ce), out_dir / "fig_adv-vs-no-adv")
    inputs = upstream_digests(target=target_dir, tokens=tokens_dir)
    for name in runs:
        inputs.update(labelled_digests(f"variants/{name}", "decomposition", Path(variants_dir) / name))
    write_yaml(out_dir / "final_config.yaml", {
        **cfg.model_dump(mode="json"), "resolved_precision": str(dtype).removeprefix("torch."), "inputs": inputs,
        "seconds": round(time.perf_counter() - t0, 1),
    })
