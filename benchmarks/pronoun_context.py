"""Score the target stage's probes, diagnostic settings included, on trained targets or checkpoints.

The target stage writes `probes.csv` when it trains; a target trained by older code lacks the
diagnostic agreement settings (`vpd.target.probes.agreement_settings`: the 120 noun prompts after
a sentence, and "She/He <verb>" at a document start and after a sentence). This script runs
`vpd.target.probes.run_probes` on a finished target folder, or on every training checkpoint in a
folder (copies of `target/checkpoints/step-*`, which the stage prunes to the newest two), prints
the summary and records it, without touching the workflow's outputs.

    python benchmarks/pronoun_context.py --target results/default/target --tokens results/default/tokenizer \\
        --variant default_4000_fp32_avx2 [--checkpoints /tmp/ckpts]
Results accumulate in benchmarks/results/pronoun_context.json (one entry per variant; with
--checkpoints, one per checkpoint step under "steps").
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from vpd.stages.target import probe_tables
from vpd.target.model import TargetLM, load_target
from vpd.target.probes import summary_values
from vpd.target.train import checkpoint_weights
from vpd.utils import checkpoint as ckpt
from vpd.utils.provenance import source_commit

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "pronoun_context.json"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--target", required=True, help="a train_target folder")
    ap.add_argument("--tokens", required=True, help="the tokenizer stage's folder (tokenizer.json, val.bin, meta.json)")
    ap.add_argument("--variant", required=True, help="name of the entry in pronoun_context.json")
    ap.add_argument("--seed", type=int, default=0, help="the run's seed (samples the eye tokens' other uses)")
    ap.add_argument("--checkpoints", help="a folder of target checkpoints (step-*) to score as well, oldest first")
    args = ap.parse_args()
    target, tokens = Path(args.target), Path(args.tokens)
    model, _ = load_target(target)

    def score(m):
        """({"probe | quantity": value}, summary table) of every probe on model `m`."""
        summary, _ = probe_tables(m, tokens, args.seed)
        return {k: float(v) for k, v in summary_values(summary).items()}, summary

    probes, summary = score(model)
    entry = {"target": str(target), "probes": probes, "n": {k: int(v) for k, v in summary_values(summary, "n").items()},
             "measured": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "commit": source_commit(ROOT)}
    if args.checkpoints:
        entry["steps"] = {}
        for path in ckpt.list_checkpoints(args.checkpoints):
            tensors, meta_ = ckpt.load(path)
            snapshot = TargetLM(model.cfg)
            snapshot.load_state_dict(checkpoint_weights(tensors))
            entry["steps"][meta_["step"]] = score(snapshot.eval())[0]
            print(f"step {meta_['step']}: agreement {entry['steps'][meta_['step']]['pronoun agreement | accuracy']:.3f}")
    results = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    results[args.variant] = entry
    RESULTS.write_text(json.dumps(results, indent=1) + "\n")
    print(summary.to_markdown(index=False, floatfmt=".3g"))


if __name__ == "__main__":
    main()
