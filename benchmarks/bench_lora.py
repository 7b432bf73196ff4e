"""Seconds per step of the edit stage's rank-1 LoRA training, with and without glibc keeping freed blocks.

The LoRA baseline (`vpd.analysis.lora.train_lora`) trains against full [B, T, V] logits: at the
default shape (batch 32 x 128 tokens, vocabulary 4,096) each logits-sized tensor is 64 MB, above
glibc's default mmap threshold, so without `vpd.utils.runtime.reuse_freed_memory` every step maps
and page-faults them afresh. This times `train_lora` at that shape on a randomly initialised target
of the default config (a step's cost does not depend on the weights' values or the tokens), each
setting in its own process, alternating settings over `--repeats` rounds:

    python benchmarks/bench_lora.py --repeats 3 --json benchmarks/results/lora_step.json

Run it on an idle machine (see bench_decomp.py): another busy process on the two cores
slows every step several times over.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
WINDOWS, SEQ, BATCH = 96, 128, 32  # the default edit config's lora_batch_size and sequence length
MATRIX = "h.2.mlp.down_proj"


def run_child(reuse: bool, steps: int, threads: int) -> float:
    """Seconds per LoRA step in this process (total of `steps` steps, first step excluded)."""
    import torch
    import yaml

    from vpd.analysis.lora import train_lora
    from vpd.config import TargetModelConfig
    from vpd.target.model import TargetLM
    from vpd.utils.runtime import reuse_freed_memory

    if reuse:
        reuse_freed_memory()
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model_cfg = yaml.safe_load((REPO / "config" / "config.yaml").read_text())["target"]["model"]
    target = TargetLM(TargetModelConfig(**model_cfg)).eval()
    g = torch.Generator().manual_seed(0)
    windows = torch.randint(0, model_cfg["vocab_size"], (WINDOWS, SEQ), generator=g)
    fire = torch.rand(WINDOWS, SEQ, generator=g) < 0.02

    def timed(n: int) -> float:
        t0 = time.perf_counter()
        train_lora(target, MATRIX, windows, fire, target_id=7, lam=10.0, steps=n, lr=0.01, batch_size=BATCH)
        return time.perf_counter() - t0

    # the difference of two calls removes the one-off cost (the base model's logits, the first step)
    return (timed(steps + 1) - timed(1)) / steps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=20, help="timed LoRA steps per process")
    ap.add_argument("--repeats", type=int, default=3, help="processes per setting, alternating")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", help="write the results here")
    ap.add_argument("--child", choices=["on", "off"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(run_child(args.child == "on", args.steps, args.threads)))
        return

    from bench_target import cpu_model
    from vpd.utils.provenance import source_commit

    runs: dict[str, list[float]] = {"on": [], "off": []}
    for _ in range(args.repeats):
        for setting in runs:
            out = subprocess.run([sys.executable, __file__, "--child", setting, "--steps", str(args.steps),
                                  "--threads", str(args.threads)], check=True, capture_output=True, text=True)
            runs[setting].append(round(json.loads(out.stdout.strip().splitlines()[-1]), 4))
            print(f"reuse_freed_memory {setting}: {runs[setting][-1]:.3f} s/step", flush=True)
    result = {
        "commit": source_commit(REPO),
        "cpu": cpu_model(),
        "shape": {"windows": WINDOWS, "batch": BATCH, "seq_len": SEQ, "matrix": MATRIX, "steps": args.steps,
                  "threads": args.threads},
        "s_per_step": {k: {"median": statistics.median(v), "runs": v} for k, v in runs.items()},
    }
    result["off_over_on"] = round(result["s_per_step"]["off"]["median"] / result["s_per_step"]["on"]["median"], 2)
    print(json.dumps(result, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
