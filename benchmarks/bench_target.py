"""Target training throughput against this machine's matmul peak.

1. Matmul peak, fp32 and bf16: square-ish matmuls at the training step's shapes (B*T = 4096 rows
   against 128/512/vocab columns) and one large 2048^3 matmul, median over repeats; the peak of a
   precision is its fastest shape.
2. Training throughput at the default target size (4 layers, d_model 128, 4 heads, MLP 512,
   context 128, vocab 4096, batch 32): one full optimiser step (forward, fused unembedding +
   CE, backward, grad clipping, AdamW) on uniform random tokens, median step time after warm-up,
   reported as tokens/s, achieved FLOP/s (tokens/s x TargetLM.flops_per_token) and the fraction
   of the same precision's matmul peak. Like the stage, it first tunes glibc malloc to reuse
   freed memory (`vpd.utils.runtime.reuse_freed_memory`).

The load average is recorded before and after: on a shared machine the numbers are only as good
as the machine was idle.

    python benchmarks/bench_target.py                  # full run, writes benchmarks/results/bench_target.json
    python benchmarks/bench_target.py --quick          # a smoke run (few repeats)
    python benchmarks/bench_target.py --profile bf16   # top ops of a training step
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from pathlib import Path

import torch

from vpd.config import TargetModelConfig, TargetTrainConfig
from vpd.target.model import TargetLM
from vpd.target.train import build_optimizer, lm_loss
from vpd.utils.io import write_json
from vpd.utils.runtime import reuse_freed_memory

BENCH_MODEL = dict(n_layer=4, d_model=128, n_head=4, d_mlp=512, context=128, vocab_size=4096)
BATCH = 32
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def median_seconds(fn, repeats: int, inner: int = 1) -> float:
    fn()  # warm-up: allocator, oneDNN primitive cache
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(inner):
            fn()
        times.append((time.perf_counter() - t0) / inner)
    return statistics.median(times)


def matmul_peak(dtype: torch.dtype, repeats: int) -> dict:
    rows = BATCH * BENCH_MODEL["context"]
    d, m, v = BENCH_MODEL["d_model"], BENCH_MODEL["d_mlp"], BENCH_MODEL["vocab_size"]
    shapes = [(rows, d, d), (rows, d, m), (rows, m, d), (rows, d, v), (2048, 2048, 2048)]  # (M, K, N)
    results = {}
    g = torch.Generator().manual_seed(0)
    for M, K, N in shapes:
        a = torch.randn(M, K, generator=g).to(dtype)
        b = torch.randn(K, N, generator=g).to(dtype)
        inner = max(1, int(2e9 // (2 * M * K * N)))  # ~2 GFLOP per timing
        sec = median_seconds(lambda: a @ b, repeats, inner)
        results[f"{M}x{K}x{N}"] = 2 * M * K * N / sec
    return {"gflops_by_shape": {k: round(v / 1e9, 1) for k, v in results.items()}, "peak_gflops": round(max(results.values()) / 1e9, 1)}


def make_step(dtype: torch.dtype):
    cfg = TargetModelConfig(**BENCH_MODEL)
    torch.manual_seed(0)
    model = TargetLM(cfg)
    opt = build_optimizer(model, TargetTrainConfig(steps=1000, batch_size=BATCH))
    params = list(model.parameters())
    gen = torch.Generator().manual_seed(0)
    cpu = torch.device("cpu")

    def step() -> None:
        batch = torch.randint(0, cfg.vocab_size, (BATCH, cfg.context + 1), generator=gen)  # [B, T+1]
        loss = lm_loss(model, batch, cpu, dtype)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()

    return model, step


def train_throughput(dtype: torch.dtype, steps: int, warmup: int) -> dict:
    model, step = make_step(dtype)
    for _ in range(warmup):
        step()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    sec = statistics.median(times)
    tokens = BATCH * BENCH_MODEL["context"]
    return {
        "step_ms": round(sec * 1e3, 1),
        "step_ms_min": round(min(times) * 1e3, 1),
        "tokens_per_s": round(tokens / sec),
        "flops_per_token": model.flops_per_token(),
        "achieved_gflops": round(tokens / sec * model.flops_per_token() / 1e9, 1),
    }


def profile(dtype: torch.dtype, rows: int = 20) -> None:
    from torch.profiler import ProfilerActivity, profile as torch_profile

    _, step = make_step(dtype)
    for _ in range(3):
        step()
    with torch_profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        for _ in range(3):
            step()
    print(prof.key_averages(group_by_input_shape=True).table(sort_by="self_cpu_time_total", row_limit=rows))


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=20, help="timed training steps per precision")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=7, help="timings per matmul shape")
    parser.add_argument("--quick", action="store_true", help="smoke run: 3 steps, 3 repeats")
    parser.add_argument("--profile", choices=list(DTYPES), help="print the top ops of a step and exit")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "bench_target.json"))
    args = parser.parse_args()
    if args.quick:
        args.steps, args.warmup, args.repeats = 3, 2, 3
    torch.set_num_threads(args.threads)
    malloc_tuned = reuse_freed_memory()  # as the train_target stage does
    if args.profile:
        profile(DTYPES[args.profile])
        return

    result = {
        "benchmark": "target training throughput",
        "model": BENCH_MODEL,
        "batch": BATCH,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "cpu": cpu_model(),
        "load_avg_before": os.getloadavg()[0],
        "quick": args.quick,
        "malloc_tuned": malloc_tuned,
        "precisions": {},
    }
    for name, dtype in DTYPES.items():
        peak = matmul_peak(dtype, args.repeats)
        train = train_throughput(dtype, args.steps, args.warmup)
        train["fraction_of_peak"] = round(train["achieved_gflops"] / peak["peak_gflops"], 3)
        result["precisions"][name] = {"matmul": peak, "train": train}
    result["load_avg_after"] = os.getloadavg()[0]
    write_json(args.out, result)

    print(f"\nTarget training, {result['cpu']}, {result['threads']} threads, torch {result['torch']}, "
          f"load avg {result['load_avg_before']:.2f} -> {result['load_avg_after']:.2f}\n")
    print("| precision | matmul peak GFLOP/s (shape) | step ms | tokens/s | achieved GFLOP/s | of peak |")
    print("|---|---|---|---|---|---|")
    for name, r in result["precisions"].items():
        m, t = r["matmul"], r["train"]
        best = max(m["gflops_by_shape"], key=m["gflops_by_shape"].get)
        print(f"| {name} | {m['peak_gflops']} ({best}) | {t['step_ms']} | {t['tokens_per_s']:,} | "
              f"{t['achieved_gflops']} | {t['fraction_of_peak']:.0%} |")
    print("\nmatmul GFLOP/s by shape (M x K x N):")
    for name, r in result["precisions"].items():
        print(f"  {name}: " + ", ".join(f"{k} {v}" for k, v in r["matmul"]["gflops_by_shape"].items()))
    print(f"\nwritten {args.out}")


if __name__ == "__main__":
    main()
