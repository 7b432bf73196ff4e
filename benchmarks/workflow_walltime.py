"""Whole-workflow wall time of several checkouts on one config, run alternately on this machine.

Each checkout is a git working tree with its own venv (`bash scripts/setup.sh` inside it). For
each repeat and each checkout in turn, the results folder of the config and `.snakemake/` are
removed, `snakemake --configfile <config> [extra configs] --cores <cores>` runs from scratch and
its wall time is taken; the jobs' own times come from the run's Snakemake benchmark files
(`stage_times.py`). Runs alternate so that slow phases of a shared machine hit every checkout.
The summary gives, per checkout, the median, min and max of the wall time, of the sum of job wall
times and of the sum of job CPU times, and the number of jobs.

    git worktree add /tmp/wt_old 6d0e0ac && (cd /tmp/wt_old && bash scripts/setup.sh)
    git worktree add /tmp/wt_new HEAD && (cd /tmp/wt_new && bash scripts/setup.sh)
    python benchmarks/workflow_walltime.py --run old /tmp/wt_old --run new /tmp/wt_new \
        benchmarks/ci_same_work_as_6d0e0ac.yaml --repeats 3 --json benchmarks/results/walltime.json

A `--run` names a label, a checkout and optional extra config files merged over `--config` (here:
switching off what the newer checkout adds, so both do the same work).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import statistics
import subprocess
import time
from pathlib import Path

import yaml

from vpd.utils.provenance import source_commit

_spec = importlib.util.spec_from_file_location("stage_times", Path(__file__).with_name("stage_times.py"))
stage_times = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(stage_times)


def results_name(configs: list[Path]) -> str:
    """The run's `name` (its folder under results/): the last config file that sets it."""
    name = None
    for path in configs:
        name = (yaml.safe_load(path.read_text()) or {}).get("name", name)
    if name is None:
        raise SystemExit(f"no `name` in {[str(p) for p in configs]}")
    return name


def run_once(checkout: Path, configs: list[Path], cores: int, log: Path) -> dict:
    """One run from scratch: wall seconds, return code, job count, job wall and CPU sums, per rule."""
    results = checkout / "results" / results_name(configs)
    for stale in (results, checkout / ".snakemake"):
        shutil.rmtree(stale, ignore_errors=True)
    cmd = [str(checkout / ".venv" / "bin" / "snakemake"), "--configfile", *map(str, configs), "--cores", str(cores)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    t0 = time.perf_counter()
    with log.open("w") as out:
        rc = subprocess.run(cmd, cwd=checkout, stdout=out, stderr=subprocess.STDOUT, env=env).returncode
    wall = time.perf_counter() - t0
    if rc != 0:
        raise SystemExit(f"{checkout}: snakemake exited {rc}, see {log}")
    jobs = stage_times.read_benchmarks(results / "benchmarks")
    rules = stage_times.per_rule(jobs)
    return {"wall_seconds": round(wall, 1), "jobs": len(jobs), "job_seconds": round(float(jobs["seconds"].sum()), 1),
            "job_cpu_seconds": round(float(jobs["cpu_seconds"].sum()), 1),
            "rules": {r.rule: {"jobs": int(r.jobs), "seconds": float(r.seconds), "cpu_seconds": float(r.cpu_seconds)}
                      for r in rules.itertuples()}}


def summarise(runs: list[dict]) -> dict:
    """Median, min and max over the repeats of one checkout, per measured total."""
    out = {"repeats": len(runs), "jobs": runs[0]["jobs"]}
    for key in ("wall_seconds", "job_seconds", "job_cpu_seconds"):
        values = [r[key] for r in runs]
        out[key] = {"median": statistics.median(values), "min": min(values), "max": max(values)}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", nargs="+", action="append", required=True, metavar=("LABEL CHECKOUT", "EXTRA"),
                        help="a label, a checkout, and extra config files merged over --config")
    parser.add_argument("--config", default="config/ci.yaml", help="config file, relative to each checkout")
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path, help="write every run and the summary here")
    args = parser.parse_args()
    setups = []
    for entry in args.run:
        if len(entry) < 2:
            raise SystemExit(f"--run needs a label and a checkout, got {entry}")
        label, checkout, extra = entry[0], Path(entry[1]).resolve(), [Path(p).resolve() for p in entry[2:]]
        configs = [checkout / args.config, *extra]
        for path in [checkout / ".venv" / "bin" / "snakemake", *configs]:
            if not path.exists():
                raise SystemExit(f"{label}: {path} does not exist (set the checkout up with scripts/setup.sh)")
        setups.append((label, checkout, configs))
    runs: dict[str, list[dict]] = {label: [] for label, _, _ in setups}
    for repeat in range(args.repeats):
        for label, checkout, configs in setups:
            record = run_once(checkout, configs, args.cores, Path(f"/tmp/walltime_{label}_{repeat}.log"))
            runs[label].append(record)
            print(f"{label} run {repeat + 1}: wall {record['wall_seconds']:.0f} s, {record['jobs']} jobs, "
                  f"job wall sum {record['job_seconds']:.0f} s, job CPU sum {record['job_cpu_seconds']:.0f} s", flush=True)
    summary = {label: summarise(r) for label, r in runs.items()}
    print(json.dumps(summary, indent=1))
    if args.json:
        commits = {label: source_commit(checkout) for label, checkout, _ in setups}
        args.json.write_text(json.dumps({"config": args.config, "cores": args.cores, "commits": commits,
                                         "extra_configs": {label: [p.name for p in cfgs[1:]] for label, _, cfgs in setups},
                                         "summary": summary, "runs": runs}, indent=1) + "\n")


if __name__ == "__main__":
    main()
