"""Per-process memory estimates and the up-front refusal shared by the training stages.

An estimate (`MemoryEstimate`) is bytes by named part, built by `vpd.target.memory` and
`vpd.decomp.memory`; `check_memory` compares its total with what the device (or the cgroup) has
left and refuses before any compute. On CPU an estimate includes the interpreter, torch and the
libraries loaded before any model exists (`runtime_part`). Writing a checkpoint briefly needs ~20 bytes per trainable parameter
(moment copies plus the serialised file), less than a step's activations at every shipped config,
so it is not a separate part.
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
# Interpreter + torch + numpy/pandas/matplotlib before any model exists (327 MB measured).
CPU_RUNTIME_BYTES = 350 * 10**6

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
def local_batch(batch_size: int, world_size: int) -> int:
    return max(1, batch_size // max(1, world_size))


def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def runtime_part(device: torch.device | str) -> dict[str, int]:
    return {"runtime": CPU_RUNTIME_BYTES} if torch.device(device).type == "cpu" else {}


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
