"""Does averaging a target's last training checkpoints buy probe competence or validation CE?

Weight averaging over the end of training (a uniform mean of the last k checkpoints, as in LAWA)
costs no extra steps. This script averages the last k of a folder of target checkpoints
(`target/checkpoints/step-*`, kept with `target.train.checkpoint_keep: 0`) for each k asked for,
and scores every average with the target stage's probes (`vpd.stages.target.probe_tables`) and
its validation CE: on the target curve's fixed held-out windows (the same windows as
`curve.csv`'s last point, so k = 1 reproduces it) and on more held-out windows for a less noisy
estimate.

    python benchmarks/checkpoint_average.py --target results/default/target \\
        --tokens results/default/tokenizer --checkpoints results/default/target/checkpoints \\
        --variant default_4000_fp32_avx2 --last 1,2,4,6,8

Results accumulate in benchmarks/results/checkpoint_average.json (one entry per variant, one row
per k).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import yaml

from vpd.data.tokens import TokenShard
from vpd.stages.target import probe_tables
from vpd.target.model import TargetLM, load_target
from vpd.target.probes import summary_values
from vpd.target.train import checkpoint_weights, evaluate
from vpd.utils import checkpoint as ckpt
from vpd.utils.provenance import source_commit

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "checkpoint_average.json"
SHOWN = {
    "pronoun agreement | accuracy": "agreement",
    "pronoun agreement: possessive | accuracy": "possessive",
    "pronoun agreement (diagnostic), noun, after a sentence: possessive | accuracy": "nouns after a sentence",
    "'The princess lost' | P(her)": "P(her | princess lost)",
    "'The princess lost' | P(his)": "P(his | princess lost)",
    "emoticon mouth after eye (held-out) | P(any mouth)": "P(mouth | eye)",
}


def average_weights(states: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Element-wise mean (fp32) of state dicts with the same keys and shapes."""
    return {name: torch.stack([s[name].float() for s in states]).mean(0) for name in states[0]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--target", required=True, help="the train_target folder the checkpoints belong to")
    ap.add_argument("--tokens", required=True, help="the tokenizer stage's folder (tokenizer.json, val.bin, meta.json)")
    ap.add_argument("--checkpoints", required=True, help="a folder of the target's checkpoints (step-*)")
    ap.add_argument("--variant", required=True, help="name of the entry in checkpoint_average.json")
    ap.add_argument("--last", default="1,2,4,6,8", help="comma-separated numbers k of newest checkpoints to average")
    ap.add_argument("--seed", type=int, default=0, help="the run's seed (samples the eye tokens' other uses)")
    ap.add_argument("--more-windows", type=int, default=512, help="held-out windows of the second validation CE")
    args = ap.parse_args()
    target, tokens = Path(args.target), Path(args.tokens)
    model, _ = load_target(target)
    curve_sequences = yaml.safe_load((target / "final_config.yaml").read_text())["target"]["train"]["eval_sequences"]
    paths = ckpt.list_checkpoints(args.checkpoints)
    ks = sorted({int(k) for k in args.last.split(",")})
    if not paths or ks[0] < 1 or ks[-1] > len(paths):
        raise SystemExit(f"{args.checkpoints}: {len(paths)} checkpoints; --last asks for {ks}")
    loaded = [ckpt.load(p) for p in paths[-ks[-1]:]]
    steps = [meta["step"] for _, meta in loaded]
    states = [checkpoint_weights(tensors) for tensors, _ in loaded]
    val = TokenShard(tokens / "val.bin", model.cfg.context)
    curve_windows = val.eval_windows(curve_sequences)
    more_windows = val.eval_windows(args.more_windows)
    cpu = torch.device("cpu")

    rows = []
    for k in ks:
        averaged = TargetLM(model.cfg)
        averaged.load_state_dict(average_weights(states[-k:]))
        averaged.eval()
        summary, _ = probe_tables(averaged, tokens, args.seed)
        probes = {k: float(v) for k, v in summary_values(summary).items()}
        row = {"k": k, "first_step": steps[-k], "last_step": steps[-1],
               "val_ce_curve_windows": evaluate(averaged, curve_windows, 32, cpu, torch.float32),
               "val_ce_more_windows": evaluate(averaged, more_windows, 32, cpu, torch.float32), "probes": probes}
        rows.append(row)
        print(f"last {k} (steps {row['first_step']}-{row['last_step']}): val CE {row['val_ce_curve_windows']:.4f} "
              f"({len(curve_windows)} windows), {row['val_ce_more_windows']:.4f} ({len(more_windows)}); "
              + ", ".join(f"{name} {probes[key]:.4g}" for key, name in SHOWN.items()), flush=True)
    results = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    results[args.variant] = {"target": str(target), "checkpoints": str(args.checkpoints), "rows": rows,
                             "n_windows": {"curve": len(curve_windows), "more": len(more_windows)},
                             "measured": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "commit": source_commit(ROOT)}
    RESULTS.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
