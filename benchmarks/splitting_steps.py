"""Do longer feature-splitting decompositions let subcomponents die?

The feature-splitting sweep decomposes the target's MLP matrices at several multiples of C for
`feature_splitting.steps` steps (600 in the default config), and almost every subcomponent stays
alive, so VPD's alive(4x C) / alive(1x C) tracks C instead of the number of features. This
script scores splitting runs trained for more steps: the workflow's own `decompose_variant` jobs,
run with `feature_splitting.steps` overridden by a config file merged over the default, e.g.

    bash scripts/run.sh --configfile benchmarks/splitting_1800_steps.yaml -- \\
        results/default/variants/split_1x/metrics.jsonl results/default/variants/split_4x/metrics.jsonl
    python benchmarks/splitting_steps.py --run results/default --variants split_1x,split_4x \\
        --label steps_1800

Each run is scored as the feature_splitting stage scores it: alive means mean CI over the shared
held-out windows above `evaluate.alive_eps`. The script also counts the subcomponents that never
fire (CI > 0 on no held-out token) or fire rarely (on at most `evaluate.rare_fire_tokens`), L0
per token, and reads the run's in-training alive count on its eval batch from metrics.jsonl
(`eval/alive_total`), which shows when dying starts. Results accumulate in
benchmarks/results/splitting_steps.json, one entry per label.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from vpd.config import load_config
from vpd.data.tokens import eval_windows
from vpd.decomp import Decomposition
from vpd.evaluate.mask_strategies import iter_batches
from vpd.evaluate.metrics import CIAccumulator
from vpd.target.model import load_target
from vpd.utils.io import MetricsLog, read_json, read_yaml, write_json
from vpd.utils.provenance import source_commit
from vpd.utils.runtime import resolve_precision

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "splitting_steps.json"
ALIVE_KEY = "eval/alive_total"


def firing_summary(acc: CIAccumulator, rare_tokens: int, alive_eps: float) -> dict:
    """Totals over every matrix of an accumulator filled at threshold 0: C, alive, dead, never_fire,
    rare, L0 per token and the number of tokens seen."""
    table = acc.firing_table(rare_tokens, alive_eps)
    total = table[(table["matrix"] == "all") & (table["threshold"] == 0.0)].iloc[0]
    return {
        "C": int(total["C"]), "alive": int(total["C"] - total["dead"]), "dead": int(total["dead"]),
        "never_fire": int(total["never_fire"]), "rare": int(total["rare"]), "rare_tokens": rare_tokens,
        "l0": round(sum(acc.l0_per_matrix(0.0).values()), 3), "n_tokens": acc.n_tokens,
    }


def alive_trajectory(records: list[dict]) -> list[tuple[int, int]]:
    """(step, in-training alive count on the eval batch) for every metrics.jsonl record that has one."""
    return [(int(r["step"]), int(r[ALIVE_KEY])) for r in records if ALIVE_KEY in r]


def alive_ratio(rows: list[dict], high: str, low: str) -> float | None:
    """alive(high) / alive(low) over the scored runs named `high` and `low`, if both were scored."""
    by_name = {r["variant"]: r for r in rows}
    if high in by_name and low in by_name and by_name[low]["alive"]:
        return by_name[high]["alive"] / by_name[low]["alive"]
    return None


@torch.no_grad()
def score_run(folder: Path, target, windows: torch.Tensor, cfg, dtype, device) -> dict:
    dec = Decomposition.load(folder, target, dtype=dtype, device=device)
    acc = CIAccumulator((0.0,))
    for x, _ in iter_batches(windows, cfg.evaluate.batch_size, device):
        acc.update(dec.ci(x))
    final = read_yaml(folder / "final_config.yaml")
    return {
        **firing_summary(acc, cfg.evaluate.rare_fire_tokens, cfg.evaluate.alive_eps),
        "steps": final["decompose"]["steps"], "batch": [final["decompose"]["batch_size"], final["decompose"]["seq_len"]],
        "precision": final.get("resolved_precision"), "compiled_kernels": final.get("compiled_kernels"),
        "alive_in_training": alive_trajectory(MetricsLog(folder / "metrics.jsonl").read()),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", required=True, help="a workflow results folder (config.yaml, target/, tokenizer/, variants/)")
    ap.add_argument("--variants", default="split_1x,split_4x", help="comma-separated variant folders under <run>/variants/")
    ap.add_argument("--label", required=True, help="name of the entry in splitting_steps.json")
    ap.add_argument("--json", type=Path, default=RESULTS)
    args = ap.parse_args()

    run = Path(args.run)
    names = args.variants.split(",")
    missing = [str(run / "variants" / n) for n in names if not (run / "variants" / n / "decomposition.json").exists()]
    if missing:
        ap.error(f"no decomposition in {', '.join(missing)}: run their decompose_variant jobs first (see above)")
    cfg = load_config(run / "config.yaml")
    device = torch.device("cpu")
    dtype = resolve_precision(cfg.precision, device)
    target, _ = load_target(run / "target", device, expect=cfg.target.model)
    windows = eval_windows(cfg, run / "tokenizer", target.cfg.context)
    rows = []
    for name in names:
        t0 = time.perf_counter()
        row = {"variant": name, **score_run(run / "variants" / name, target, windows, cfg, dtype, device)}
        rows.append(row)
        print(f"{name}: {row['alive']} of {row['C']} alive, {row['never_fire']} never fire, {row['rare']} fire on "
              f"<= {row['rare_tokens']} of {row['n_tokens']} tokens, L0 {row['l0']} ({time.perf_counter() - t0:.0f} s)")
    from bench_target import cpu_model  # a sibling script: on the path when this one is run

    ratio = alive_ratio(rows, "split_4x", "split_1x")
    if ratio is not None:
        print(f"alive(4x) / alive(1x) = {ratio:.3f}")
    entries = read_json(args.json) if args.json.exists() else {}
    entries[args.label] = {
        "commit": source_commit(), "date": time.strftime("%Y-%m-%d"), "cpu": cpu_model(),
        "alive_4x_over_1x": ratio, "runs": rows,
    }
    write_json(args.json, entries)


if __name__ == "__main__":
    main()
