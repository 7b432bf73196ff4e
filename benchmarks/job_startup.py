"""What every workflow job pays before its first step: a fresh Python that imports its stage module.

Each measurement is a new process, `python -c "import vpd.stages.<stage>"` (torch and the package
included), timed from start to exit; `python -c pass` is the interpreter's own floor. The median
over `--repeats` runs is reported per module. Run on an idle machine:

    python benchmarks/job_startup.py --repeats 7 --json benchmarks/results/job_startup.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from vpd.utils.provenance import source_commit

STAGES = ("transcoder", "decompose", "evaluate")


def time_process(code: str) -> float:
    """Seconds from start to exit of one `python -c code`."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True, env=env)
    return time.perf_counter() - t0


def summary(seconds: list[float]) -> dict:
    return {"median": round(statistics.median(seconds), 3), "min": round(min(seconds), 3),
            "max": round(max(seconds), 3), "runs": [round(s, 3) for s in seconds]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--json", type=Path, help="write the results here")
    args = ap.parse_args()
    codes = {"python -c pass": "pass", **{f"import vpd.stages.{s}": f"import vpd.stages.{s}" for s in STAGES}}
    time_process("import vpd.stages.decompose")  # page the files in once, so the first timed run is not a cold read
    results = {}
    for label, code in codes.items():
        results[label] = summary([time_process(code) for _ in range(args.repeats)])
        print(f"{label:32s} median {results[label]['median']:.2f} s "
              f"({results[label]['min']:.2f}-{results[label]['max']:.2f})", flush=True)
    if args.json:
        args.json.write_text(json.dumps({"commit": source_commit(Path(__file__).resolve().parents[1]), "python": sys.version.split()[0], "results": results},
                                        indent=1) + "\n")


if __name__ == "__main__":
    main()
