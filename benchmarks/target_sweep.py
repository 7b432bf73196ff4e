"""The target-competence sweep: which data, tokenizer and training length give a target that does
the paper's probe tasks (`vpd.target.probes`), and what each costs in minutes here.

Each variant is the default config with dotted-key overrides, run through the real stages
(`python -m vpd corpus | tokenizer | train_target`) in a scratch folder; corpus and tokenizer
outputs are shared between variants whose sections agree. The result per variant: the probe
summary (target/probes.csv), the final validation CE and the wall minutes of each stage.

    python benchmarks/target_sweep.py --variant new_data_v4096 --set tokenizer.vocab_size=4096 \\
        --set target.model.vocab_size=4096                   # one variant
    python benchmarks/target_sweep.py --variant v --from-run results/default   # a workflow run's target
    python benchmarks/target_sweep.py --summary               # print the table of all recorded variants

Results accumulate in benchmarks/results/target_sweep.json (one entry per variant name).
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import yaml

from vpd.target.probes import summary_values
from vpd.utils.provenance import source_commit

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "target_sweep.json"


def parse_value(text: str):
    return yaml.safe_load(text)


def apply_overrides(config: dict, overrides: list[str]) -> dict:
    """`a.b.c=value` (YAML value); `corpus.sources.<name>.enabled=false` addresses a source by name."""
    out = copy.deepcopy(config)
    for item in overrides:
        key, _, value = item.partition("=")
        parts = key.split(".")
        node = out
        for i, part in enumerate(parts[:-1]):
            if isinstance(node, list):
                node = next(s for s in node if s.get("name") == part)
            else:
                node = node[part]
        node[parts[-1]] = parse_value(value)
    return out


def section_hash(*sections) -> str:
    return hashlib.sha256(json.dumps(sections, sort_keys=True).encode()).hexdigest()[:12]


def run_stage(args: list[str], log_path: Path) -> float:
    """Run `python -m vpd <args>`; return wall minutes. A failure shows the end of its log."""
    t0 = time.perf_counter()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    with open(log_path, "w") as log:
        proc = subprocess.run([sys.executable, "-m", "vpd", *args], stdout=log, stderr=subprocess.STDOUT, env=env)
    if proc.returncode != 0:
        sys.exit(f"{' '.join(args[:1])} failed; see {log_path}:\n" + "".join(log_path.read_text().splitlines(True)[-20:]))
    return (time.perf_counter() - t0) / 60


def run_variant(name: str, overrides: list[str], base: Path, scratch: Path) -> dict:
    config = apply_overrides(yaml.safe_load(base.read_text()), overrides)
    scratch.mkdir(parents=True, exist_ok=True)
    cfg_path = scratch / f"{name}.yaml"
    cfg_path.write_text(yaml.safe_dump(config, sort_keys=False))
    corpus = scratch / f"corpus-{section_hash(config['corpus'], config['seed'])}"
    tokens = scratch / f"tokens-{section_hash(config['corpus'], config['seed'], config['tokenizer'])}"
    target = scratch / f"target-{name}"
    minutes = {}
    if not (corpus / "stats.json").exists():
        minutes["corpus"] = run_stage(["corpus", "--config", str(cfg_path), "--out", str(corpus)], scratch / f"{name}.corpus.log")
    if not (tokens / "meta.json").exists():
        minutes["tokenizer"] = run_stage(["tokenizer", "--config", str(cfg_path), "--corpus", str(corpus), "--out", str(tokens)],
                                         scratch / f"{name}.tokenizer.log")
    minutes["train_target"] = run_stage(["train_target", "--config", str(cfg_path), "--tokens", str(tokens), "--out", str(target)],
                                        scratch / f"{name}.target.log")
    return record(overrides, config["target"]["train"]["steps"], tokens, target, minutes)


def record_workflow_run(run_dir: Path, overrides: list[str]) -> dict:
    """The same record for a target trained by the workflow's `train_target` rule in `run_dir`
    (results/<name>), its minutes from the rule's benchmark file."""
    bench = pd.read_csv(run_dir / "benchmarks" / "train_target.tsv", sep="\t")
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    return record(overrides + [f"(workflow run {run_dir})"], config["target"]["train"]["steps"], run_dir / "tokenizer",
                  run_dir / "target", {"train_target": float(bench["s"].iloc[-1]) / 60})


def record(overrides: list[str], steps: int, tokens: Path, target: Path, minutes: dict) -> dict:
    probes = pd.read_csv(target / "probes.csv")
    curve = pd.read_csv(target / "curve.csv")
    meta = json.loads((tokens / "meta.json").read_text())
    return {
        "overrides": overrides,
        "train_tokens": meta["n_tokens"]["train"],
        "steps": steps,
        "val_ce": float(curve["val_ce"].iloc[-1]),
        "val_ce_drop_last_10pct": float(curve["val_ce"].iloc[-len(curve) // 10 - 1] - curve["val_ce"].iloc[-1]),
        "minutes": minutes,
        "probes": {k: float(v) for k, v in summary_values(probes).items()},
        "held_out_faces": int(probes.loc[probes.probe.str.startswith("emoticon"), "n"].iloc[0]),
        "measured": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "commit": source_commit(ROOT),
    }


def summary(results: dict) -> pd.DataFrame:
    keys = {
        "agreement acc": "pronoun agreement | accuracy",
        "P(correct)": "pronoun agreement | mean P(correct)",
        "P(her|princess)": "'The princess lost' | P(her)",
        "P(his|princess)": "'The princess lost' | P(his)",
        "P(his|prince)": "'The prince lost' | P(his)",
        "P(mouth|eye)": "emoticon mouth after eye (held-out) | P(any mouth)",
        "P(mouth|other)": "eye token in other uses (held-out) | P(any mouth)",
    }
    rows = []
    for name, r in results.items():
        row = {"variant": name, "steps": r["steps"], "train tokens": r["train_tokens"], "val CE": r["val_ce"],
               "target min": r["minutes"].get("train_target"), "held-out faces": r.get("held_out_faces")}
        row.update({k: r["probes"].get(v) for k, v in keys.items()})
        rows.append(row)
    return pd.DataFrame(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variant", help="name of the variant to run")
    ap.add_argument("--set", action="append", default=[], help="dotted-key override, e.g. target.train.steps=5000")
    ap.add_argument("--base", default=str(ROOT / "config" / "config.yaml"))
    ap.add_argument("--scratch", default=str(ROOT / "results" / "target_sweep"))
    ap.add_argument("--summary", action="store_true")
    ap.add_argument("--from-run", help="record the target of a workflow run folder (results/<name>) as the variant")
    args = ap.parse_args()
    if args.variant:
        entry = (record_workflow_run(Path(args.from_run), args.set) if args.from_run
                 else run_variant(args.variant, args.set, Path(args.base), Path(args.scratch)))
        results = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}  # read late: runs may overlap
        results[args.variant] = entry
        RESULTS.write_text(json.dumps(results, indent=1) + "\n")
    results = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    print(summary(results).to_markdown(index=False, floatfmt=".3g"))


if __name__ == "__main__":
    main()
