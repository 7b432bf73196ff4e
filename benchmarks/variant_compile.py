"""Does compiling the fused kernels pay for itself in each decomposition job of a config?

For the main decomposition and each VPD variant of the sweeps (`vpd.sweeps.variant_jobs`), a
fresh process builds the job's decomposition at its configured shapes (a randomly initialised
target of `target.model`, uniform random tokens: a step's cost does not depend on weights or
text) with fused kernels on, on an empty TORCHINDUCTOR_CACHE_DIR (as on a first run). It times
the first `quick_eval` and training step, which compile every graph a run uses, then `--rounds`
rounds of a block of eager steps and an eval, then a block of compiled steps and an eval
(`vpd.decomp.fused` is a process-wide switch, so both paths run in one process, alternating, and
drift on a shared machine hits both). A second process on the cache the first one left times the
first eval and step again (as when an earlier job of the run compiled the same shapes).

Per job: the saving per step (median over rounds of eager block minus compiled block), the
compile overhead (first eval + step minus the steady compiled eval + step), and the net seconds
compiling gains over the job's configured steps and evals: steps x saving + evals x eval saving
- overhead, on the cold and on the warm cache. Positive: compiling pays for that job here.

    python benchmarks/variant_compile.py                          # every job of config/config.yaml
    python benchmarks/variant_compile.py --jobs main,split_1x --json out.json

Run on an idle machine (see bench_decomp.py): another busy process on the same cores slows
every op several-fold.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MAIN = "main"


def job_decompose_config(cfg, name: str, target):
    """The decompose section the job `name` trains with ('main': the project's own)."""
    from vpd.decomp.variants import variant_decompose_config
    from vpd.sweeps import find_variant

    if name == MAIN:
        return cfg.decompose
    return variant_decompose_config(cfg, find_variant(cfg, name), target)


def run_child(config: Path, name: str, rounds: int, block: int, threads: int, warm_only: bool) -> dict:
    import torch

    from vpd.config import load_config
    from vpd.decomp import Decomposition, fused
    from vpd.decomp.trainer import Trainer
    from vpd.target.model import TargetLM
    from vpd.utils.runtime import resolve_precision, reuse_freed_memory

    reuse_freed_memory()  # as the decompose stage does
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    cfg = load_config(config)
    device = torch.device("cpu")
    dtype = resolve_precision(cfg.precision, device)
    target = TargetLM(cfg.target.model)
    dcfg = job_decompose_config(cfg, name, target).model_copy(update={"fused_kernels": True, "fused_kernels_min_steps": 0})
    seq_len = dcfg.seq_len or cfg.target.model.context
    dec = Decomposition(target, dcfg, seed=0, dtype=dtype, device=device)

    def batches(g):
        return torch.randint(0, cfg.target.model.vocab_size, (dcfg.batch_size, seq_len), generator=g)

    trainer = Trainer(dec, batches, seed=0, progress=False)  # turns fusion on (compiles at any length)
    step = 0

    def timed_step() -> float:
        nonlocal step
        batch = trainer._next_batch()
        t0 = time.perf_counter()
        trainer.train_step(step, batch)
        step += 1
        return time.perf_counter() - t0

    def timed_eval() -> float:
        t0 = time.perf_counter()
        trainer.evaluate(step)
        return time.perf_counter() - t0

    out = {"job": name, "precision": str(dtype).removeprefix("torch."), "configured_steps": dcfg.steps,
           "evals": dcfg.steps // dcfg.eval_every + 1, "batch": [dcfg.batch_size, seq_len],
           "C_total": sum(m.C for m in dec.comps.mats), "cpu_capability": torch.backends.cpu.get_cpu_capability()}
    try:
        with dec.comps.hooked():
            first = timed_eval() + timed_step()  # compiles every graph a run uses
            step_s = {True: [], False: []}
            eval_s = {True: [], False: []}
            for _ in range(1 if warm_only else rounds):  # eager and compiled blocks alternate, so drift hits both
                for on in (False, True):
                    fused.set_enabled(on)
                    step_s[on].append(statistics.median(timed_step() for _ in range(block)))
                    eval_s[on].append(timed_eval())
    finally:
        fused.set_enabled(False)
    steady = statistics.median(eval_s[True]) + statistics.median(step_s[True])
    return {**out, "first_eval_and_step_s": first, "compile_overhead_s": first - steady,
            "step_compiled_s": step_s[True], "step_eager_s": step_s[False],
            "eval_compiled_s": eval_s[True], "eval_eager_s": eval_s[False]}


def summarise(cold: dict, warm: dict) -> dict:
    """Saving per step: median over rounds of (eager block median - compiled block median)."""
    saving = statistics.median(e - c for e, c in zip(cold["step_eager_s"], cold["step_compiled_s"]))
    eval_saving = statistics.median(e - c for e, c in zip(cold["eval_eager_s"], cold["eval_compiled_s"]))
    gain = cold["configured_steps"] * saving + cold["evals"] * eval_saving
    return {"job": cold["job"], "configured_steps": cold["configured_steps"], "batch": cold["batch"],
            "C_total": cold["C_total"], "step_eager_s": statistics.median(cold["step_eager_s"]),
            "step_compiled_s": statistics.median(cold["step_compiled_s"]), "saving_per_step_s": saving,
            "eval_saving_s": eval_saving, "compile_overhead_cold_s": cold["compile_overhead_s"],
            "compile_overhead_warm_s": warm["compile_overhead_s"], "net_gain_cold_s": gain - cold["compile_overhead_s"],
            "net_gain_warm_s": gain - warm["compile_overhead_s"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", type=Path, default=Path(__file__).resolve().parents[1] / "config" / "config.yaml")
    ap.add_argument("--jobs", help="comma list of job names ('main' and variant names); default: all of the config")
    ap.add_argument("--rounds", type=int, default=3, help="alternating eager/compiled rounds in the cold-cache process")
    ap.add_argument("--block", type=int, default=4, help="training steps per block (their median is the block's time)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", type=Path, help="write every measurement and the summary here")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--warm-only", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(run_child(args.config, args.child, args.rounds, args.block, args.threads, args.warm_only)))
        return
    from vpd.config import load_config
    from vpd.sweeps import variant_jobs

    names = args.jobs.split(",") if args.jobs else [MAIN] + [j.name for j in variant_jobs(load_config(args.config))]
    runs, summary = [], []
    for name in names:
        with tempfile.TemporaryDirectory(prefix="inductor_cache_") as cache:
            pair = {}
            # compiled on an empty cache (first run); again on the cache that left (an earlier job compiled these shapes)
            for key in ("cold", "warm"):
                cmd = [sys.executable, __file__, "--config", str(args.config), "--rounds", str(args.rounds),
                       "--block", str(args.block), "--threads", str(args.threads), "--child", name]
                env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": cache}
                res = subprocess.run(cmd + (["--warm-only"] if key == "warm" else []), check=True, capture_output=True,
                                     text=True, env=env).stdout
                pair[key] = {**json.loads(res.strip().splitlines()[-1]), "cache": key}
                runs.append(pair[key])
        row = summarise(pair["cold"], pair["warm"])
        summary.append(row)
        print(f"{name}: {row['configured_steps']} steps, step {row['step_eager_s']:.3f} s eager / "
              f"{row['step_compiled_s']:.3f} s compiled (saving {row['saving_per_step_s']:+.3f} s), compile overhead "
              f"{row['compile_overhead_cold_s']:.0f} s cold / {row['compile_overhead_warm_s']:.0f} s warm, net gain "
              f"{row['net_gain_cold_s']:+.0f} s cold / {row['net_gain_warm_s']:+.0f} s warm", flush=True)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"config": str(args.config), "runs": runs, "summary": summary}, indent=1))


if __name__ == "__main__":
    main()
