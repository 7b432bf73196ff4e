"""Wall time and peak memory per workflow job and per rule, from a run's Snakemake benchmark files.

Every rule writes `results/<name>/benchmarks/<job>.tsv` (Snakemake's `benchmark:` directive: wall
seconds, max RSS in MB, CPU seconds). This prints them as a markdown table, one row per job, then
one row per rule with the sum of its jobs, and the total; `--json` also writes them to a file.

    python benchmarks/stage_times.py results/default
    python benchmarks/stage_times.py results/default --json benchmarks/results/stage_times_default.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd

# Job file stem -> rule: a sweep job's stem is its rule plus the job's name.
SWEEP_RULES = ("decompose_variant", "transcoder", "evaluate_seed", "notebook")


def rule_of(stem: str) -> str:
    for rule in SWEEP_RULES:
        if stem == rule or stem.startswith(rule + "_"):
            return rule
    return stem


def read_benchmarks(folder: Path) -> pd.DataFrame:
    """One row per benchmark file of `folder`: job, rule, seconds, max_rss_mb, cpu_seconds."""
    rows = []
    for path in sorted(Path(folder).glob("*.tsv")):
        df = pd.read_csv(path, sep="\t")
        if df.empty:
            continue
        last = df.iloc[-1]  # a job benchmarked several times (repeat) keeps its last run
        rows.append({"job": path.stem, "rule": rule_of(path.stem), "seconds": float(last["s"]),
                     "max_rss_mb": float(last["max_rss"]), "cpu_seconds": float(last["cpu_time"])})
    if not rows:
        raise SystemExit(f"no benchmark files (*.tsv) in {folder}")
    return pd.DataFrame(rows)


def per_rule(jobs: pd.DataFrame) -> pd.DataFrame:
    """Sum of wall and CPU seconds per rule, the largest RSS of its jobs, and the job count."""
    grouped = jobs.groupby("rule", sort=False)
    return pd.DataFrame({"jobs": grouped.size(), "seconds": grouped["seconds"].sum(),
                         "max_rss_mb": grouped["max_rss_mb"].max(),
                         "cpu_seconds": grouped["cpu_seconds"].sum()}).reset_index()


def minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f}"


def markdown(jobs: pd.DataFrame, rules: pd.DataFrame) -> str:
    lines = ["| job | rule | minutes | max RSS (MB) |", "|---|---|---|---|"]
    lines += [f"| {r.job} | {r.rule} | {minutes(r.seconds)} | {r.max_rss_mb:,.0f} |" for r in jobs.itertuples()]
    lines += ["", "| rule | jobs | minutes | max RSS (MB) |", "|---|---|---|---|"]
    lines += [f"| {r.rule} | {r.jobs} | {minutes(r.seconds)} | {r.max_rss_mb:,.0f} |" for r in rules.itertuples()]
    lines += ["", f"Sum of the jobs' wall times: {minutes(jobs['seconds'].sum())} minutes "
                  f"(jobs ran one at a time when each took every core)."]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="a run folder, e.g. results/default")
    parser.add_argument("--json", type=Path, help="also write the per-job and per-rule tables here")
    args = parser.parse_args()
    jobs = read_benchmarks(args.run / "benchmarks")
    rules = per_rule(jobs)
    print(markdown(jobs, rules))
    if args.json:
        args.json.write_text(json.dumps({"run": str(args.run), "jobs": jobs.to_dict("records"),
                                         "rules": rules.to_dict("records")}, indent=1) + "\n")


if __name__ == "__main__":
    main()
