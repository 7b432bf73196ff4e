"""Decomposition throughput benchmark at the fixed shape of the VPD engine issue.

Shape (fixed so results compare over time and against other implementations): target 4 layers,
d_model 128, 4 heads, MLP 512, vocab 2048, context 128; C per matrix q 64, k 64, v 128, o 128,
c_fc 512, down_proj 512 (5,632 in all); global CI transformer d_model 128, 2 blocks, 4 heads,
MLP 512; batch 8 x 128 tokens; persistent adversary with 2 warm-up ascents; 2 threads.

The target is randomly initialised (TargetLM of the benchmark shape) and batches are uniform
random tokens: the cost of a step does not depend on the weights' values or the text. For each
precision (fp32, bf16 autocast) it reports, in a fresh subprocess so peak RSS is per precision:
seconds per decomposition step (median after warm-up), tokens/s, peak RSS, the step time as a
multiple of one target training step (forward + backward + AdamW, same batch, same process),
and achieved FLOP/s against the matmul peak measured in the same process.

    python benchmarks/bench_decomp.py                      # both precisions, 20 timed steps
    python benchmarks/bench_decomp.py --steps 5 --warmup 2 # quick look
    python benchmarks/bench_decomp.py --profile            # where the seconds of a step go
    python benchmarks/bench_decomp.py --nproc 1,2          # scaling over torchrun processes

--nproc: the same global batch split over N torchrun (gloo) processes with threads/N torch
threads each; reports seconds per step and peak RSS per rank.

Run it on an idle machine: with 2 threads and another busy process on the same cores, OpenMP
spin-waiting slows every op by 10-50x (measured here: a 60 ms target step took 0.5-4 s).
OMP_WAIT_POLICY=PASSIVE or --threads 1 avoids that, but the numbers are then not comparable.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

import torch

BENCH_TARGET = dict(n_layer=4, d_model=128, n_head=4, d_mlp=512, context=128, vocab_size=2048)
BENCH_C = {"q_proj": 64, "k_proj": 64, "v_proj": 128, "o_proj": 128, "c_fc": 512, "down_proj": 512}
BATCH, SEQ = 8, 128

# The `decompose:` block of the benchmark (the reference's settings at this shape).
BENCH_CONFIG = {
    "matrices": [{"pattern": f"h.*.*.{m}", "C": c} for m, c in BENCH_C.items()],
    "ci_fn": {"kind": "global_transformer", "d_model": 128, "n_blocks": 2, "n_heads": 4, "d_mlp": 512},
    "coeffs": {"faithfulness": 1.0e7, "stochastic_recon": 0.5, "adversarial_recon": 0.5, "importance_minimality": 2.0e-4},
    "pgd": {"lr": 0.01, "betas": [0.5, 0.99], "warmup_frac": 0.025, "n_warmup_ascents": 2, "eval_steps": 20},
    "steps": 1500,
    "batch_size": BATCH,
    "seq_len": SEQ,
    "lr": 3.0e-3,
    "lr_min_frac": 0.1,
    "grad_clip_components": 0.01,
    "faithfulness_warmup_steps": 400,
    "faithfulness_warmup_lr": 1.0e-3,
    "p_start": 2.0,
    "p_end": 0.4,
    "frequency_beta": 0.5,
    "leaky_alpha": 0.01,
    "output_loss": "kl",
}


# ---------------------------------------------------------------- FLOP accounting
def step_flops(dec, target) -> dict[str, float]:
    """FLOPs of one decomposition step, pass by pass (a multiply-add = 2 FLOPs).

    Masked matrix per token: d_in·C + C·d_out + d_in·d_out MACs (the last is x W^T, i.e. the Δ
    path). Backward of a pass with parameter gradients = 2x its forward for trained matrices
    (input + weight grads), 1x for frozen ones (input grads only); warm-up ascents need input
    gradients only (1x). Attention QK^T and AV over the full T x T square.
    """
    cfg = target.cfg
    N = BATCH * SEQ
    attn = 2 * 2 * SEQ * cfg.d_model * cfg.n_layer  # FLOPs/token, forward
    unembed = 2 * cfg.vocab_size * cfg.d_model
    dense = sum(2 * d_out * d_in for d_out, d_in in dec.shapes.values())
    comp = sum(2 * (d_in * dec.C[n] + dec.C[n] * d_out) for n, (d_out, d_in) in dec.shapes.items())
    clean_fwd = N * (dense + unembed + attn)
    masked_fwd = N * (dense + comp + unembed + attn)
    masked_fwd_bwd_train = masked_fwd + N * (2 * comp + dense + unembed + 2 * attn)
    masked_fwd_bwd_ascent = 2 * masked_fwd
    ci_params = sum(m.weight.numel() for m in dec.ci_fn.modules() if isinstance(m, torch.nn.Linear))
    ci_cfg = dec.config.ci_fn
    ci_fwd = N * (2 * ci_params + 2 * 2 * SEQ * ci_cfg.d_model * ci_cfg.n_blocks)
    faith = sum(2 * d_in * dec.C[n] * d_out for n, (d_out, d_in) in dec.shapes.items())
    n_asc = dec.config.pgd.n_warmup_ascents
    parts = {
        "clean_forward": clean_fwd,
        "ci_fwd_bwd": 3 * ci_fwd,
        "adversary_ascents": n_asc * masked_fwd_bwd_ascent,
        "stochastic_fwd_bwd": masked_fwd_bwd_train,
        "adversarial_fwd_bwd": masked_fwd_bwd_train,
        "faithfulness_fwd_bwd": 3 * faith,
    }
    parts["total"] = sum(parts.values())
    return parts


def matmul_peak(dtype: torch.dtype, seconds: float = 1.5) -> float:
    """Best FLOP/s of plain matmuls at this workload's shapes (tokens x 128/512 x 128/512)."""
    best = 0.0
    for m, k, n in [(2048, 512, 512), (2048, 128, 512), (2048, 512, 128), (1024, 512, 512)]:
        a, b = torch.randn(m, k, dtype=dtype), torch.randn(k, n, dtype=dtype)
        for _ in range(3):
            a @ b
        reps, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds / 4:
            a @ b
            reps += 1
        best = max(best, 2 * m * k * n * reps / (time.perf_counter() - t0))
    return best


# ---------------------------------------------------------------- one precision, in-process
def run_one(precision: str, steps: int, warmup: int, threads: int, profile: bool, fused: bool = True) -> dict:
    from vpd.config import TargetModelConfig
    from vpd.decomp import Decomposition, DecompositionConfig
    from vpd.decomp.trainer import Trainer
    from vpd.target.model import TargetLM
    from vpd.utils.runtime import autocast, reuse_freed_memory

    reuse_freed_memory()  # as the decompose stage does
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    device = torch.device("cpu")
    target = TargetLM(TargetModelConfig(**BENCH_TARGET))
    cfg = DecompositionConfig.from_dict({**BENCH_CONFIG, "steps": 1500, "fused_kernels": fused})
    dec = Decomposition(target, cfg, seed=0, dtype=dtype, device=device)

    def batches(g):
        return torch.randint(0, BENCH_TARGET["vocab_size"], (BATCH, SEQ), generator=g)

    trainer = Trainer(dec, batches, seed=0, progress=False)
    times = []  # the first (warm-up) steps include compiling the fused kernels
    for i in range(warmup + steps):
        b = trainer._next_batch()
        t0 = time.perf_counter()
        trainer.train_step(i, b)
        times.append(time.perf_counter() - t0)
    step_s = statistics.median(times[warmup:])

    prof_table = None
    if profile:
        from torch.profiler import ProfilerActivity, profile as tprofile

        with tprofile(activities=[ProfilerActivity.CPU]) as prof:
            for i in range(3):
                trainer.train_step(warmup + steps + i, trainer._next_batch())
        ev = [e for e in prof.key_averages() if e.key.startswith("vpd.")]
        prof_table = {e.key: e.cpu_time_total / 1e6 / 3 for e in ev}
        prof_table["top_ops"] = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=18)

    # One target training step (forward + backward + AdamW) at the same batch and precision.
    tgt = TargetLM(TargetModelConfig(**BENCH_TARGET))
    opt = torch.optim.AdamW(tgt.parameters(), lr=1e-3)
    ttimes = []
    for i in range(warmup + steps):
        ids = torch.randint(0, 2048, (BATCH, SEQ + 1))
        t0 = time.perf_counter()
        with autocast(device, dtype):
            logits = tgt(ids[:, :-1])
        loss = torch.nn.functional.cross_entropy(logits.float().reshape(-1, 2048), ids[:, 1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        ttimes.append(time.perf_counter() - t0)
    target_s = statistics.median(ttimes[warmup:])

    flops = step_flops(dec, target)
    peak = matmul_peak(dtype)
    return {
        "precision": precision,
        "fused_kernels": fused,
        "threads": threads,
        "sec_per_step": step_s,
        "tokens_per_s": BATCH * SEQ / step_s,
        "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6,
        "target_step_s": target_s,
        "x_target_step": step_s / target_s,
        "gflop_per_step": flops["total"] / 1e9,
        "achieved_gflops": flops["total"] / step_s / 1e9,
        "matmul_peak_gflops": peak / 1e9,
        "fraction_of_peak": flops["total"] / step_s / peak,
        "flops_by_pass_gflop": {k: v / 1e9 for k, v in flops.items()},
        "profile_s": prof_table,
    }


# ---------------------------------------------------------------- process scaling (torchrun child)
def run_ranks(precision: str, steps: int, warmup: int, threads: int) -> dict | None:
    """Decomposition steps on this rank's share of the global batch; rank 0 returns the summary."""
    from vpd.config import TargetModelConfig
    from vpd.decomp import Decomposition, DecompositionConfig
    from vpd.decomp.trainer import Trainer
    from vpd.target.model import TargetLM
    from vpd.utils.distributed import init_distributed, launched_world_size

    world = launched_world_size()
    dist = init_distributed(world, "--nproc")
    torch.set_num_threads(max(1, threads // world))
    torch.manual_seed(0)
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    target = TargetLM(TargetModelConfig(**BENCH_TARGET))
    cfg = DecompositionConfig.from_dict({**BENCH_CONFIG, "steps": 1500, "world_size": world})
    dec = Decomposition(target, cfg, seed=0, dtype=dtype, device=dist.device)

    def batches(g):
        return torch.randint(0, BENCH_TARGET["vocab_size"], (BATCH, SEQ), generator=g)

    trainer = Trainer(dec, batches, seed=0, progress=False, dist=dist)
    times = []
    for i in range(warmup + steps):
        b = trainer._next_batch()
        dist.barrier()
        t0 = time.perf_counter()
        trainer.train_step(i, b)
        dist.barrier()
        times.append(time.perf_counter() - t0)
    rss = torch.tensor([resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6], dtype=torch.float64)
    rss_max = float(dist.max_(rss.clone()))
    if not dist.is_main:
        return None
    step_s = statistics.median(times[warmup:])
    return {"precision": precision, "processes": world, "threads_per_process": torch.get_num_threads(),
            "sec_per_step": step_s, "tokens_per_s": BATCH * SEQ / step_s, "peak_rss_gb_per_rank": rss_max}


def scaling(precisions: list[str], nprocs: list[int], steps: int, warmup: int, threads: int) -> list[dict]:
    rows = []
    for p in precisions:
        for n in nprocs:
            cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={n}", __file__,
                   "--child-ranks", "--precision", p, "--steps", str(steps), "--warmup", str(warmup),
                   "--threads", str(threads)]
            out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
            rows.append(json.loads([ln for ln in out.splitlines() if ln.startswith("{")][-1]))
            r = rows[-1]
            print(f"{p} x{n} processes ({r['threads_per_process']} threads each): {r['sec_per_step']:.3f} s/step, "
                  f"{r['tokens_per_s']:.0f} tok/s, peak RSS {r['peak_rss_gb_per_rank']:.2f} GB per rank", flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--precision", default="fp32,bf16", help="comma list of fp32, bf16")
    ap.add_argument("--fused", default="on", help="comma list of on, off: decompose.fused_kernels")
    ap.add_argument("--steps", type=int, default=20, help="timed steps")
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--profile", action="store_true", help="also profile 3 steps by phase and op")
    ap.add_argument("--nproc", help="comma list of process counts: run the torchrun scaling benchmark instead")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--child-ranks", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--out", help="write the results as JSON here")
    args = ap.parse_args()
    precisions = args.precision.split(",")
    if args.child_ranks:
        res = run_ranks(precisions[0], args.steps, args.warmup, args.threads)
        if res is not None:
            print(json.dumps(res), flush=True)
        return
    if args.nproc:
        rows = scaling(precisions, [int(n) for n in args.nproc.split(",")], args.steps, args.warmup, args.threads)
        if args.out:
            from vpd.utils.io import write_json

            write_json(args.out, rows)
        return
    if args.child:
        print(json.dumps(run_one(precisions[0], args.steps, args.warmup, args.threads, args.profile,
                                 fused=args.fused.split(",")[0] == "on")))
        return
    results = []
    for p, f in [(p, f) for p in precisions for f in args.fused.split(",")]:
        cmd = [sys.executable, __file__, "--child", "--precision", p, "--fused", f, "--steps", str(args.steps),
               "--warmup", str(args.warmup), "--threads", str(args.threads)] + (["--profile"] if args.profile else [])
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        res = json.loads(out.strip().splitlines()[-1])
        results.append(res)
        top = res["profile_s"].pop("top_ops") if res.get("profile_s") else None
        print(f"\n== {p}, fused kernels {f}: {res['sec_per_step']:.3f} s/step, {res['tokens_per_s']:.0f} tok/s, "
              f"peak RSS {res['peak_rss_gb']:.2f} GB, {res['x_target_step']:.1f}x target step "
              f"({res['target_step_s'] * 1e3:.1f} ms), {res['achieved_gflops']:.0f} GFLOP/s of "
              f"{res['matmul_peak_gflops']:.0f} peak ({100 * res['fraction_of_peak']:.0f}%), "
              f"{res['gflop_per_step']:.1f} GFLOP/step")
        if res.get("profile_s"):
            for k, v in sorted(res["profile_s"].items(), key=lambda kv: -kv[1]):
                print(f"   {k:28s} {v:.3f} s")
        if top:
            print(top)
    print("\n| precision | fused | s/step | tokens/s | peak RSS GB | x target step | GFLOP/step | GFLOP/s | matmul peak | % peak |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['precision']} | {'on' if r['fused_kernels'] else 'off'} | {r['sec_per_step']:.3f} | {r['tokens_per_s']:.0f} | {r['peak_rss_gb']:.2f} | "
              f"{r['x_target_step']:.1f} | {r['gflop_per_step']:.1f} | {r['achieved_gflops']:.0f} | "
              f"{r['matmul_peak_gflops']:.0f} | {100 * r['fraction_of_peak']:.0f}% |")
    if args.out:
        from vpd.utils.io import write_json

        write_json(args.out, results)


if __name__ == "__main__":
    main()
