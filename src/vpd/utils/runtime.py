"""Process-wide runtime settings: logging, seeding, CPU threads, device and numeric precision."""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import random
from pathlib import Path

import numpy as np
import torch

log = logging.getLogger("vpd")


def setup_logging(level: int = logging.INFO) -> None:
    """Log to stderr; under torchrun only rank 0 logs below WARNING."""
    if int(os.environ.get("RANK", "0")) > 0:
        level = max(level, logging.WARNING)
    if not log.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
        log.addHandler(handler)
    log.setLevel(level)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def start_stage(seed: int, out_dir) -> Path:
    """Create a stage's output directory and seed every RNG; returns the directory as a Path."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    reuse_freed_memory()
    seed_everything(seed)
    return out_dir


def configure_threads(threads: int | None) -> int:
    """Set torch's intra-op threads. None: the cores this process may use, shared evenly by the
    processes torchrun started on this machine (LOCAL_WORLD_SIZE), so ranks do not oversubscribe."""
    if threads is None:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        threads = cores // int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    torch.set_num_threads(max(1, int(threads)))
    return torch.get_num_threads()


def reuse_freed_memory() -> bool:
    """Let glibc keep freed large blocks for reuse instead of unmapping them (Linux only).

    By default glibc returns big freed blocks to the OS, so a training loop that allocates the
    same multi-MB activations every step page-faults (and zero-fills) them again each time: about
    10% of a CPU target step and 15% of a decomposition step. Raising the mmap and trim thresholds
    keeps them in the heap; the cost is that the process's memory stays at its peak. Returns False
    where it does not apply.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3  # from <malloc.h>
    return bool(libc.mallopt(m_mmap_threshold, 1 << 30)) and bool(libc.mallopt(m_trim_threshold, 1 << 30))


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def bf16_supported(device: torch.device) -> bool:
    """True where bf16 matmuls are fast: CUDA with bf16, or a CPU with AMX/AVX512-BF16 via oneDNN."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        try:
            return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported()) and _cpu_has_native_bf16()
        except (AttributeError, RuntimeError):
            return False
    return False


def _cpu_has_native_bf16() -> bool:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            flags = fh.read()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def resolve_precision(precision: str, device: torch.device) -> torch.dtype:
    """Map the config's `precision` (auto|fp32|bf16) to the autocast dtype (fp32 = no autocast)."""
    if precision == "fp32":
        return torch.float32
    if precision == "bf16":
        return torch.bfloat16
    if precision == "auto":
        return torch.bfloat16 if bf16_supported(device) else torch.float32
    raise ValueError(f"precision must be auto, fp32 or bf16, got {precision!r}")


def autocast(device: torch.device, dtype: torch.dtype):
    """Autocast context for matmuls in `dtype`; a no-op for fp32. Master weights stay fp32."""
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)
