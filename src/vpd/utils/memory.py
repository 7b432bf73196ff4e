"""Per-process memory estimates of the two training stages, and the up-front refusal.

The estimates are analytic: parameter, gradient and AdamW-moment bytes are exact (modules built
on the meta device), activations are bytes saved for backward per local token times a peak
factor. Local tokens = (batch_size // world_size) * seq_len, so every number is per rank.

Saved-for-backward bytes per local token were counted (fp32, autograd saved-tensor hooks,
deduplicated by storage) at config/config.yaml's shapes, and split by tensor shape at a shape
with distinct odd widths:

- target training: n_layer * (36 d + 8 d_mlp) + 16 d  (measured 38.5 kB/token at config.yaml's
  target, formula 36.9 kB);
- decomposition, per token of the batch (the masked forward runs on the doubled batch):
  52 ΣC (seven fp32 [tokens, ΣC] tensors: CI pre-activation and both read-outs, the minimality
  power sums, the stochastic and adversarial masks; plus three [2 tokens, C] tensors per matrix
  inside the masked forward), 2 n_layer (52 d + 12 d_mlp) for the masked target trunk, 12 V for
  the target distribution and both halves' log-softmax, 4 Σd_in for the CI function's input,
  n_blocks (36 d_ci + 8 d_mlp_ci) for its blocks (measured 457.5 kB/token + 23 MiB fixed at
  config.yaml's decomposition, formula 455.7 kB). The estimate adds what is alive but not saved:
  the clean logits (4 V) and the captured matrix inputs (4 Σd_in).

The peak factors turn saved bytes into peak footprint (gradients of those activations in
backward, allocator slack). They were calibrated on CPU peak RSS (`/usr/bin/time -v`, torch
2.13, 1-2 threads, ~230 MiB of it the interpreter and torch) of a few steps at config.yaml's shapes:

- target, 32 x 128 tokens: 671 MiB fp32 / 657-752 MiB bf16; 64 x 128: 1124 MiB fp32 / 1005 MiB
  bf16, i.e. 2.45-2.85x the saved bytes -> TARGET_PEAK_FACTOR 3.0;
- decomposition, 8 x 128 tokens: 1363 MiB fp32 / 1229-1315 MiB bf16 after 3 steps (1.41 / 1.36 GB
  after 20 in benchmarks/RESULTS.md); 4 x 128: 841 MiB fp32, i.e. 2.15-2.3x -> DECOMP_PEAK_FACTOR 2.5.

The formulas count fp32 activations, so bf16 runs are over-estimated by up to ~25%. Writing a
checkpoint briefly needs ~20 bytes per trainable parameter (moment copies plus the serialised
file), less than a step's activations at every shipped config, so it is not a separate part.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch

from vpd.utils.errors import UserError

log = logging.getLogger("vpd")

SKIP_ENV = "VPD_SKIP_MEMORY_CHECK"
FP32 = 4
ADAMW_BYTES_PER_PARAM = 4 + 4 + 8  # parameter, gradient, two fp32 moments
TARGET_PEAK_FACTOR = 3.0
DECOMP_PEAK_FACTOR = 2.5
# Interpreter + torch + numpy/pandas/matplotlib before any model exists (327 MB measured).
CPU_RUNTIME_BYTES = 350 * 10**6
# SDPA's math kernel (the CI function on CPU in bf16) saves [H, T] attention rows per token.
MATH_ATTENTION_BYTES_PER_HEAD_POSITION = 20

MEMINFO = Path("/proc/meminfo")
CGROUP_ROOT = Path("/sys/fs/cgroup")
UNLIMITED = 1 << 60  # cgroup v1 reports "no limit" as a number near 2^63


class MemoryEstimateError(UserError, ValueError):
    """The estimated memory of a stage exceeds what is available; the message names the keys."""


@dataclass
class MemoryEstimate:
    """Bytes per process by named part; `total` is their sum."""

    parts: dict[str, int]
    note: str = ""
    total: int = field(init=False)

    def __post_init__(self) -> None:
        self.parts = {k: int(v) for k, v in self.parts.items()}
        self.total = sum(self.parts.values())

    def format(self) -> str:
        body = ", ".join(f"{k} {format_bytes(v)}" for k, v in self.parts.items())
        return f"{format_bytes(self.total)} per process ({body})" + (f" [{self.note}]" if self.note else "")


def format_bytes(n: float) -> str:
    if abs(n) >= 1e9:
        return f"{n / 1e9:.2f} GB"
    return f"{n / 1e6:.0f} MB" if abs(n) >= 1e7 else f"{n / 1e6:.1f} MB"


# ---------------------------------------------------------------- available memory
def available_memory_bytes(device: torch.device | str) -> int:
    """Free memory for this process: CUDA free bytes, or on CPU MemAvailable capped by the cgroup's headroom."""
    device = torch.device(device)
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    avail = _meminfo_available()
    cgroup = _cgroup_headroom(CGROUP_ROOT)
    return min(avail, cgroup) if cgroup is not None else avail


def _meminfo_available() -> int:
    try:
        for line in MEMINFO.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024  # kB
    except (OSError, ValueError, IndexError):
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def _read_int(path: Path) -> Optional[int]:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return None if text == "max" or not text.lstrip("-").isdigit() else int(text)


def _stat_value(path: Path, key: str) -> int:
    try:
        for line in path.read_text().splitlines():
            name, _, value = line.partition(" ")
            if name == key:
                return int(value)
    except (OSError, ValueError):
        pass
    return 0


def _cgroup_headroom(root: Path) -> Optional[int]:
    """limit - (usage - inactive page cache) of the cgroup (v2, else v1); None without a limit."""
    for limit_file, usage_file, stat_file, cache_key in (
        (root / "memory.max", root / "memory.current", root / "memory.stat", "inactive_file"),
        (root / "memory" / "memory.limit_in_bytes", root / "memory" / "memory.usage_in_bytes",
         root / "memory" / "memory.stat", "total_inactive_file"),
    ):
        limit = _read_int(limit_file)
        if limit is None or limit >= UNLIMITED:
            continue
        usage = _read_int(usage_file) or 0
        working_set = max(0, usage - _stat_value(stat_file, cache_key))  # reclaimable cache is not "used"
        return max(0, limit - working_set)
    return None


# ---------------------------------------------------------------- estimates
def _local_batch(batch_size: int, world_size: int) -> int:
    return max(1, batch_size // max(1, world_size))


def _n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _meta_target(model_cfg):
    from vpd.target.model import TargetLM

    with torch.device("meta"):
        return TargetLM(model_cfg)


def _runtime_part(device: torch.device | str) -> dict[str, int]:
    return {"runtime": CPU_RUNTIME_BYTES} if torch.device(device).type == "cpu" else {}


def estimate_target_training_bytes(
    model_cfg, train_cfg, world_size: Optional[int] = None, *, device: torch.device | str = "cpu"
) -> MemoryEstimate:
    """Peak bytes per rank of target training (`target.model`, `target.train`)."""
    from vpd.target.loss import CHUNK_BYTES

    world_size = world_size or train_cfg.world_size
    n_params = _n_params(_meta_target(model_cfg))
    d, d_mlp = model_cfg.d_model, model_cfg.d_mlp
    tokens = _local_batch(train_cfg.batch_size, world_size) * model_cfg.context
    saved_per_token = model_cfg.n_layer * (36 * d + 8 * d_mlp) + 16 * d
    parts = {
        **_runtime_part(device),
        "parameters": FP32 * n_params,
        "gradients": FP32 * n_params,
        "adamw_moments": 2 * FP32 * n_params,
        "activations": int(TARGET_PEAK_FACTOR * saved_per_token * tokens),
        # fused unembedding + CE: fp32 grad of the tied embedding twice, a few logit chunks
        "unembedding_workspace": 2 * FP32 * model_cfg.vocab_size * d + 4 * CHUNK_BYTES,
    }
    return MemoryEstimate(parts, f"{tokens} tokens per rank, world_size {world_size}")


def estimate_decomposition_bytes(
    model_cfg,
    decomp_cfg,
    world_size: Optional[int] = None,
    *,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> MemoryEstimate:
    """Peak bytes per rank of a decomposition of the target `model_cfg` with `decompose:` config `decomp_cfg`."""
    from vpd.decomp.ci_functions import build_ci_function
    from vpd.decomp.components import match_matrices

    world_size = world_size or decomp_cfg.world_size
    target = _meta_target(model_cfg)
    modules = dict(target.named_modules())
    C = match_matrices(target, decomp_cfg.matrices)
    d_in = {n: modules[n].in_features for n in C}
    d_out = {n: modules[n].out_features for n in C}
    with torch.device("meta"):
        ci_fn = build_ci_function(d_in, C, decomp_cfg.ci_fn)
    n_trained = sum(c * (d_in[n] + d_out[n]) for n, c in C.items()) + _n_params(ci_fn)  # V, U and the CI function
    total_c, n_mats = sum(C.values()), len(C)

    seq_len = decomp_cfg.seq_len or model_cfg.context
    tokens = _local_batch(decomp_cfg.batch_size, world_size) * seq_len
    d, d_mlp = model_cfg.d_model, model_cfg.d_mlp
    other_per_token = (
        2 * model_cfg.n_layer * (52 * d + 12 * d_mlp)  # masked target trunk over the doubled batch
        + 16 * model_cfg.vocab_size  # clean logits, target probabilities, two log-softmaxes
        + 8 * sum(d_in.values())  # captured matrix inputs and the CI function's concatenated input
    )
    ci = decomp_cfg.ci_fn
    if ci.kind == "global_transformer":
        other_per_token += ci.n_blocks * (36 * ci.d_model + 8 * ci.d_mlp)
        if torch.device(device).type == "cpu" and dtype == torch.bfloat16:  # the CI function uses SDPA's math kernel
            other_per_token += ci.n_blocks * MATH_ATTENTION_BYTES_PER_HEAD_POSITION * ci.n_heads * seq_len
    else:
        other_per_token += 12 * n_mats * sum(ci.hidden)
    parts = {
        **_runtime_part(device),
        "target_weights": FP32 * _n_params(target),
        "parameters": FP32 * n_trained,
        "gradients": FP32 * n_trained,
        "adamw_moments": 2 * FP32 * n_trained,
    }
    if decomp_cfg.coeffs.adversarial_recon > 0:
        parts["adversary_sources"] = 3 * FP32 * tokens * (total_c + n_mats)  # sources + 2 Adam moments
    parts["flat_ci_masks"] = int(DECOMP_PEAK_FACTOR * 52 * total_c * tokens)
    parts["activations"] = int(DECOMP_PEAK_FACTOR * other_per_token * tokens)
    return MemoryEstimate(
        parts, f"{tokens} tokens per rank, ΣC {total_c} over {n_mats} matrices, world_size {world_size}"
    )


# ---------------------------------------------------------------- the check
def check_memory(
    estimate: MemoryEstimate,
    device: torch.device | str,
    *,
    what: str,
    keys: str,
    limit_fraction: float = 0.9,
) -> int:
    """Log the estimate; raise MemoryEstimateError if it exceeds limit_fraction of the available memory.

    On CPU the processes of one host share its memory, so the estimate counts LOCAL_WORLD_SIZE
    (set by torchrun) times. Returns the available bytes. VPD_SKIP_MEMORY_CHECK=1 turns the
    refusal into a warning.
    """
    device = torch.device(device)
    available = available_memory_bytes(device)
    processes = int(os.environ.get("LOCAL_WORLD_SIZE", "1")) if device.type == "cpu" else 1
    needed = estimate.total * processes
    per_host = f" x {processes} processes on this host" if processes > 1 else ""
    log.info("%s memory estimate: %s%s; available on %s: %s",
             what, estimate.format(), per_host, device, format_bytes(available))
    if needed <= limit_fraction * available:
        return available
    message = (
        f"{what} is estimated to need {format_bytes(needed)}{per_host and ' in all'}, more than "
        f"{limit_fraction:.0%} of the {format_bytes(available)} available on {device}: {estimate.format()}{per_host}. "
        f"Lower {keys}, or set {SKIP_ENV}=1 to run anyway."
    )
    if os.environ.get(SKIP_ENV) == "1":
        log.warning("%s (%s=1: continuing)", message, SKIP_ENV)
        return available
    raise MemoryEstimateError(message)
